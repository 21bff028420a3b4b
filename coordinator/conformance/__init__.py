"""Conformance check: does a live agent, in any language, follow docs/PROTOCOL.md?

``run_conformance(settings, name, options)`` exercises the agent over the wire (registration,
heartbeats, requests by name and by role, error replies, dead letters, broadcasts, and with
process control a kill and restart, then a clean stop) and returns a ``Report``: one verdict
per check. ``agentbus conformance NAME`` is the command-line face of it.
"""

from coordinator.conformance.lifecycle import shell_action, spawn_action
from coordinator.conformance.options import DEFAULT_PAYLOAD, DEFAULT_TYPE, ConformanceOptions
from coordinator.conformance.report import CheckResult, Report, Verdict
from coordinator.conformance.runner import CHECKS, run_conformance

__all__ = [
    "CHECKS",
    "DEFAULT_PAYLOAD",
    "DEFAULT_TYPE",
    "CheckResult",
    "ConformanceOptions",
    "Report",
    "Verdict",
    "run_conformance",
    "shell_action",
    "spawn_action",
]
