"""``Membership``'s hot-path builders give exactly what the validated models give."""

from __future__ import annotations

from typing import Any

from agent_sdk.fence import Fence
from agent_sdk.membership import Membership
from agent_sdk.settings import Settings
from schemas.agent import AgentCard, AgentStatus, Announce


class _Router:
    key = "agentbus:replies:h:1"


def _membership(card: AgentCard) -> Membership:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", heartbeat_interval=0.5, ttl=2.0)
    router: Any = _Router()
    return Membership(None, settings, card, "inst-1", router, fence=Fence(2.0))  # type: ignore[arg-type]


def test_the_announce_payload_is_the_models_dump() -> None:
    card = AgentCard(
        name="a-1", role="r", capabilities=("x", "y"), tags=("t",), version="1.2.3",
        metadata={"handles": "a,b"}, pid=7, host="h",
    )  # fmt: skip
    m = _membership(card)
    m.status, m.load = AgentStatus.BUSY, 3
    expected = Announce(
        card=card, instance_id="inst-1", status=AgentStatus.BUSY, load=3, heartbeat_ms=500,
        ttl_ms=2000,
    ).model_dump(mode="json", exclude_none=True)  # fmt: skip
    assert m.announce_payload() == expected
    m.card = card.model_copy(update={"role": "s"})  # a new card: dumped again
    assert m.announce_payload()["card"]["role"] == "s"
