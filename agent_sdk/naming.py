"""What an agent does when its name is held by another live instance: ``on_conflict``.

* ``"refuse"`` (the default): the announcement is refused with ``NameTaken`` naming the holder
  (instance id, host, pid), after waiting up to ``name_wait`` for a dead holder to expire.
* ``"suffix"``: for fleets that stamp out instances of one name. The agent takes the first free
  name of ``name``, ``name-2``, ``name-3``, ... and ``agent.name`` is the name it got. A name is
  free when the registry does not hold it and the agent's host does not carry it; held names
  are skipped at once (no ``name_wait``: a dead holder's name is left to expire).

Why numbers rather than random suffixes: the names stay short and readable (``worker-3`` in
``agentbus agents``), and a restarted instance usually gets its old name back. The registry is
read first (``EXISTS`` on the candidates' records, pipelined), then the coordinator decides: two
instances that picked the same free name race, one is refused ``name_taken`` and tries again
from the next name. After each lost race it picks at random among the next few free names (as
many as the races it lost), so instances started at the same moment spread out instead of
colliding on every name; names may then have gaps. After ``MAX_RACES`` lost races it gives up
with ``NameTaken``.

A re-announcement (after the registry expired the instance) keeps the name the agent got: if
another instance took it meanwhile the name is lost (``NameLost``), as with ``refuse``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from agent_sdk.connection import redis_errors
from schemas.errors import InvalidInput, NameTaken
from schemas.names import MAX_NAME_LENGTH

if TYPE_CHECKING:
    from agent_sdk.membership import Membership
    from schemas.agent import AgentRecord

__all__ = ["MAX_RACES", "OnConflict", "announce_free_name", "check_on_conflict", "suffixed"]

log = logging.getLogger("agentbus.naming")

OnConflict = Literal["refuse", "suffix"]

#: Lost races (another instance announced the same free name first) before giving up.
MAX_RACES = 32
#: Characters a base name leaves for its suffix (``-`` and up to 7 digits).
_SUFFIX_ROOM = 8
_MAX_NUMBER = 10 ** (_SUFFIX_ROOM - 1) - 1
#: Candidates checked in the first registry read; each further read doubles, up to the cap.
_FIRST_BATCH, _MAX_BATCH = 4, 256


def check_on_conflict(value: str, name: str) -> OnConflict:
    """``value`` if it is a valid ``on_conflict`` for an agent named ``name``, else
    ``InvalidInput`` saying why."""
    if value == "refuse":
        return "refuse"
    if value == "suffix":
        if len(name) > MAX_NAME_LENGTH - _SUFFIX_ROOM:
            raise InvalidInput(
                f"the name {name!r} is too long for on_conflict='suffix': at most "
                f"{MAX_NAME_LENGTH - _SUFFIX_ROOM} characters leave room for a suffix"
            )
        return "suffix"
    raise InvalidInput(f"on_conflict must be 'refuse' or 'suffix', got {value!r}")


def suffixed(base: str, number: int) -> str:
    """The ``number``-th candidate name: ``base`` itself for 1, else ``base-<number>``."""
    if number > _MAX_NUMBER:
        raise NameTaken(f"no free name left after {base!r} (tried up to {base}-{_MAX_NUMBER})")
    return base if number == 1 else f"{base}-{number}"


async def announce_free_name(
    membership: Membership, base: str, claim: Callable[[str], bool]
) -> AgentRecord:
    """Announce under the first free name of ``base``, ``base-2``, ... (module docstring).

    ``claim(name)`` makes ``name`` the agent's (renaming it on its host and in
    ``membership.card``) or returns False if the host carries another agent of that name.
    """
    start, races = 1, 0
    while True:
        number = await _pick(membership, base, start, races + 1, claim)
        try:
            return await membership.announce(wait=False)
        except NameTaken as e:
            races += 1
            if races >= MAX_RACES:
                raise NameTaken(
                    f"no free name after {base!r}: lost {races} races to other instances "
                    f"announcing the same names (the last: {e.description})",
                    details=dict(e.details),
                ) from e
            log.info("%s: taken meanwhile (%s); trying the next free name", membership.card.name, e)
            start = number + 1


async def _pick(
    membership: Membership, base: str, start: int, spread: int, claim: Callable[[str], bool]
) -> int:
    """Claim a candidate from ``start`` on that the registry does not hold: the first one, or
    one at random among the first ``spread`` (after lost races). Its number."""
    keys, size = membership.settings.keys, _FIRST_BATCH
    while True:
        suffixed(base, start)  # raises NameTaken when no number is left
        numbers = range(start, min(start + size, _MAX_NUMBER + 1))
        names = [suffixed(base, n) for n in numbers]
        with redis_errors(membership.settings, f"looking for a free name after {base!r}"):
            async with membership.client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(keys.record(name))
                held = await pipe.execute()
        free = [n for n, h in zip(numbers, held, strict=True) if not h]
        # no await from here to the claim: the host's names cannot change in between
        if spread > 1 and free:
            first = random.choice(free[:spread])
            free.remove(first)
            free.insert(0, first)
        for number in free:
            if claim(suffixed(base, number)):
                return number
        start += size
        size = min(size * 2, _MAX_BATCH)
