"""The host of the host fault scenarios (scenario 12), run as the product runs it::

    agentbus run tests.faults.host_target:make_host

``make_host`` builds one ``Host`` from the environment (the bus from the ``AGENTBUS_*`` variables):

=====================  =====================================================================
``HOSTED_NAME``        the host's name; its agents are ``<name>-0`` .. ``<name>-<n-1>``
``HOSTED_AGENTS``      how many agents it carries
``HOSTED_WORKERS``     how many of them (the first ones) have the role ``worker``; the others
                       have the role ``hosted``
``HOSTED_CONCURRENCY`` ``max_concurrency`` of every agent
``HOSTED_HOLD``        seconds a ``job``/``ask`` holds unless its payload says otherwise
``HOSTED_LOG``         the ledger file
=====================  =====================================================================

Every agent has the capability ``hostcap`` and the tag ``<host name>`` (so a test can check that
no index keeps a dead host's agents). The ledger has the format of ``tests.faults.fleet`` (one
``O_APPEND`` write per line, so it survives a SIGKILL of the host)::

    agent <agent> <instance>   created (written while the host is built, before it starts)
    start <agent> <msg id> <entry id> <delivery count> <type> <instance>
    done  <agent> <msg id> <entry id> <delivery count> <type> <instance>

``job`` and ``ask`` hold ``payload["hold"]`` seconds: a number, or a mapping from an agent name
or a host name to seconds (``{"ha": 30}``: only host ``ha`` is slow); they answer the agent's name.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agent_sdk import Agent, Host
from agent_sdk.messaging import Message
from tests.faults.fleet import Ledger


def _seconds(payload: Any, agent: str, host: str, default: float) -> float:
    hold: Any = payload.get("hold", default) if isinstance(payload, dict) else default
    if isinstance(hold, dict):
        hold = hold.get(agent, hold.get(host, default))
    return float(hold)


def _serve(agent: Agent, host: str, ledger: Ledger, default_hold: float) -> None:
    name, me = agent.name, agent.instance_id

    async def work(payload: Any, msg: Message) -> str:
        ledger.write("start", name, msg.id, msg.entry_id, msg.delivery_count, msg.type, me)
        seconds = _seconds(payload, name, host, default_hold)
        if seconds:
            await asyncio.sleep(seconds)  # the work itself
        ledger.write("done", name, msg.id, msg.entry_id, msg.delivery_count, msg.type, me)
        return name

    agent.on("job")(work)
    agent.on("ask")(work)


def make_host() -> Host:
    name = os.environ.get("HOSTED_NAME", "h")
    count = int(os.environ.get("HOSTED_AGENTS", "10"))
    workers = int(os.environ.get("HOSTED_WORKERS", "0"))
    concurrency = int(os.environ.get("HOSTED_CONCURRENCY", "2"))
    hold = float(os.environ.get("HOSTED_HOLD", "0"))
    ledger = Ledger(os.environ["HOSTED_LOG"])
    host = Host(name=name, max_agents=count)
    for i in range(count):
        agent = host.agent(
            f"{name}-{i}",
            "worker" if i < workers else "hosted",
            capabilities=["hostcap"],
            tags=[name],
            max_concurrency=concurrency,
        )
        _serve(agent, name, ledger, hold)
        ledger.write("agent", agent.name, agent.instance_id)
    return host
