"""How a conformance run is configured: the request to send, the waits, the process controls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.agent import AgentRecord

__all__ = ["DEFAULT_PAYLOAD", "DEFAULT_TYPE", "Action", "ConformanceOptions"]

#: The message type the request checks send by default (an echo handler answers it).
DEFAULT_TYPE = "ping"
#: The default payload: text beyond ASCII, a float, a null and a boolean, to catch lossy JSON.
DEFAULT_PAYLOAD: dict[str, Any] = {"text": "héllo, wörld ✓", "n": 1, "items": [1, 2.5, None, True]}

#: Something done to the agent's process (stop, kill, start), given its current record.
Action = Callable[[AgentRecord], Awaitable[None]]


def _default_payload() -> Any:
    return dict(DEFAULT_PAYLOAD)


@dataclass(frozen=True, slots=True)
class ConformanceOptions:
    """Options of ``run_conformance``. Without ``stop``, ``kill`` and ``start`` only the checks
    that need no process control run (the agent stays up).

    * ``type``/``payload``: the request the agent's handler answers; with ``echo`` the reply's
      payload must equal the request's.
    * ``timeout``: seconds to wait for each reply; ``wait``: for the agent to be registered.
    * ``stop``: makes the agent shut down (SIGTERM, say): then it must send a ``draining``
      heartbeat and leave (``stop_timeout`` bounds the wait).
    * ``kill`` and ``start``: kill the agent without warning, then start it again: messages sent
      while it was down, and the one its killed instance held, must be answered after the restart.
    """

    type: str = DEFAULT_TYPE
    payload: Any = field(default_factory=_default_payload)
    echo: bool = True
    timeout: float = 5.0
    wait: float = 5.0
    stop: Action | None = None
    stop_timeout: float = 30.0
    kill: Action | None = None
    start: Action | None = None
    start_timeout: float = 30.0
