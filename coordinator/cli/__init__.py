"""The ``agentbus`` command line (click + rich). ``main`` is the console-script entry point."""

from coordinator.cli.main import cli, main

__all__ = ["cli", "main"]
