"""Fault, load and bad-input scenarios (issue 5): real redis-server and agent processes."""
