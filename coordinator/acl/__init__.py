"""acl mode: the policy file, its Redis ACL rules, and applying them (``agentbus acl``)."""
