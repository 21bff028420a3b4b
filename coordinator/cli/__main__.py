"""``python -m coordinator.cli`` is ``agentbus``."""

from coordinator.cli.main import main

main()
