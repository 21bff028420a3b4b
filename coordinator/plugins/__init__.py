"""Hosting plugins: ``agentbus run --plugins`` (docs/PLUGINS.md).

``PluginSupervisor`` runs each plugin in a worker process of its own (``worker``), follows the
plugin directories (``watcher``), reloads a changed plugin beside the running one with rollback,
and keeps the catalogue in Redis (``catalogue``). ``scaffold`` writes a new plugin
(``agentbus new``).
"""

from coordinator.plugins.supervisor import PluginSupervisor

__all__ = ["PluginSupervisor"]
