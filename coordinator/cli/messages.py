"""``agentbus send | request | broadcast | publish | subscribe``: the data plane from a shell.

The CLI talks as a client (``Bus``), not as a registered agent: ``sender`` is ``client-<id>``
and replies come back on the client's own reply list. Payloads are JSON arguments.
"""

from __future__ import annotations

import contextlib
from typing import Any

import click

from agent_sdk.bus import Bus
from agent_sdk.messaging import Message
from coordinator.cli.base import CliState, dumps, json_payload, pass_state, run_async
from schemas.envelope import encode_json
from schemas.errors import AgentNotFound

__all__ = ["broadcast", "publish", "request", "send", "subscribe"]

_role_option = click.option("--role", help="Send to one live member of this role instead.")
_version_option = click.option(
    "--version", "version", metavar="RANGE",
    help="With --role: a member whose version is in this SemVer range (e.g. '^2').",
)  # fmt: skip


def _check_version(role: str | None, version: str | None) -> None:
    if version is not None and not role:
        raise click.UsageError("--version needs --role")


def _target(role: str | None, args: tuple[str, ...]) -> tuple[str | None, str, str | None]:
    """``NAME TYPE [PAYLOAD]`` or, with ``--role``, ``TYPE [PAYLOAD]``."""
    need = 1 if role else 2
    if not need <= len(args) <= need + 1:
        usage = "TYPE [PAYLOAD]" if role else "NAME TYPE [PAYLOAD]  (or --role ROLE TYPE [PAYLOAD])"
        raise click.UsageError(f"expected {usage}, got {len(args)} argument(s)")
    name = None if role else args[0]
    rest = args[need - 1 :]
    return name, rest[0], rest[1] if len(rest) > 1 else None


@click.command(short_help="Send a one-way message; print its id.")
@_role_option
@_version_option
@click.option(
    "--queue-if-absent", is_flag=True, help="Queue for an agent that is not alive (bounded)."
)
@click.argument("args", nargs=-1, required=True, metavar="NAME|--role ROLE TYPE [PAYLOAD]")
@pass_state
def send(
    state: CliState, role: str | None, version: str | None, queue_if_absent: bool,
    args: tuple[str, ...],
) -> None:  # fmt: skip
    """Send a one-way message (durable, at-least-once); print its id."""
    _check_version(role, version)
    name, type_, raw = _target(role, args)
    payload = json_payload(raw)
    settings = state.settings()

    async def go() -> str:
        async with Bus(settings) as bus:
            try:
                return await bus.send(
                    name, type_, payload, role=role, version=version,
                    queue_if_absent=queue_if_absent,
                )  # fmt: skip
            except AgentNotFound as e:  # the SDK's hint names its keyword, not our flag
                raise AgentNotFound(
                    f"agent {name!r} is not registered (not alive) in namespace "
                    f"{settings.namespace!r}; pass --queue-if-absent to queue anyway",
                    details=e.details,
                ) from None

    click.echo(run_async(go))


@click.command(short_help="Send a request; print the reply as JSON.")
@_role_option
@_version_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for the reply (default: AGENTBUS_REQUEST_TIMEOUT, else 5).",
)
@click.option(
    "--all",
    "gather",
    is_flag=True,
    help='With --role: ask every live member (scatter-gather); print {"replies": {name: '
    'reply}, "errors": {name: error}, "missing": [names that did not answer]}.',
)
@click.argument("args", nargs=-1, required=True, metavar="NAME|--role ROLE TYPE [PAYLOAD]")
@pass_state
def request(
    state: CliState, role: str | None, version: str | None, timeout: float | None, gather: bool,
    args: tuple[str, ...],
) -> None:  # fmt: skip
    """Send a request and print the reply as JSON.

    A failed request (an error reply, a timeout, nobody to answer) prints its error code and
    exits 1; with --all the errors are part of the output.
    """
    _check_version(role, version)
    name, type_, raw = _target(role, args)
    payload = json_payload(raw)
    if gather and not role:
        raise click.UsageError("--all needs --role")
    settings = state.settings()

    async def go() -> Any:
        async with Bus(settings) as bus:
            if gather:
                result = await bus.request_many(
                    role, type_, payload, version=version, timeout=timeout
                )
                return {
                    "replies": result.replies,
                    "errors": {n: e.info.model_dump() for n, e in result.errors.items()},
                    "missing": result.missing,
                }
            return await bus.request(
                name, type_, payload, role=role, version=version, timeout=timeout
            )

    click.echo(dumps(run_async(go), pretty=True))


@click.command(short_help="Broadcast to every live agent (or a role).")
@click.option("--role", help="Only the members of this role.")
@click.option("--durable", is_flag=True, help="A copy into each live member's inbox instead.")
@click.argument("type_", metavar="TYPE")
@click.argument("payload", required=False)
@pass_state
def broadcast(
    state: CliState, role: str | None, durable: bool, type_: str, payload: str | None
) -> None:
    """Broadcast to every live agent (or role); print how many received it."""
    value = json_payload(payload)
    settings = state.settings()

    async def go() -> int:
        async with Bus(settings) as bus:
            return await bus.broadcast(type_, value, role=role, durable=durable)

    click.echo(run_async(go))


@click.command(short_help="Publish to a topic (at-most-once).")
@click.argument("topic")
@click.argument("payload", required=False)
@pass_state
def publish(state: CliState, topic: str, payload: str | None) -> None:
    """Publish to a topic (at-most-once); print how many subscribers received it."""
    value = json_payload(payload)
    settings = state.settings()

    async def go() -> int:
        async with Bus(settings) as bus:
            return await bus.publish(topic, value)

    click.echo(run_async(go))


@click.command(short_help="Print what is published to matching topics.")
@click.argument("pattern")
@click.option("--count", "-n", type=click.IntRange(min=1), help="Exit after N messages.")
@click.option("--json", "as_json", is_flag=True, help="One JSON envelope per line.")
@pass_state
def subscribe(state: CliState, pattern: str, count: int | None, as_json: bool) -> None:
    """Print messages published to topics matching PATTERN (e.g. 'news.*') until Ctrl-C."""
    settings = state.settings()
    prefix = settings.keys.topic_channel_prefix

    def show(msg: Message) -> None:
        if as_json:
            click.echo(encode_json(msg.envelope).decode())
            return
        topic = (msg.source or "").removeprefix(prefix) or msg.target or "?"
        click.echo(f"{topic}  {msg.sender}  {dumps(msg.payload)}")

    async def go() -> None:
        async with Bus(settings) as bus, bus.subscribe(pattern) as sub:
            click.echo(
                f"subscribed to {pattern!r} on {settings.display_url} "
                f"(namespace {settings.namespace}); Ctrl-C to stop",
                err=True,
            )
            seen = 0
            async for msg in sub:
                show(msg)
                seen += 1
                if count is not None and seen >= count:
                    return

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a subscription ends
        run_async(go)
