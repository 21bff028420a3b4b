"""What every ``agentbus`` command shares: global options, settings, async running, errors.

Every option is also an environment variable: the global ones are ``AGENTBUS_REDIS_URL`` and
``AGENTBUS_NAMESPACE`` (the same names the SDK reads), and click's ``auto_envvar_prefix`` gives
the others ``AGENTBUS_<COMMAND>_<OPTION>`` unless an option names its own (``--help`` shows it).

Errors end here: an ``AgentbusError`` (or a Redis/OS error that escaped the SDK) becomes one line
on stderr, ``agentbus: error [code]: description``, and exit status 1, or 2 when the input was at
fault (a bad option or ``AGENTBUS_*`` value, name or id: ``InvalidInput``), as for click's usage
errors; never a traceback. Before a command talks to Redis, one connection attempt without
retries (``coordinator.cli.reach``) turns "nothing listens there" into an error at once, with a
hint, instead of after the SDK's reconnect retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
import orjson
from pydantic import ValidationError
from redis.exceptions import RedisError
from rich.console import Console

from agent_sdk.settings import Settings
from coordinator.cli.reach import reach
from coordinator.settings import CoordinatorSettings
from schemas.errors import (
    AgentbusError,
    ConfigurationError,
    ErrorCode,
    InvalidInput,
    RemoteError,
    validation_summary,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "AgentbusGroup",
    "CliState",
    "console",
    "dumps",
    "fail",
    "json_payload",
    "pass_state",
    "run_async",
    "setup_logging",
    "stream_ids",
]

T = TypeVar("T")

#: Exit status of a command that failed with an agentbus error.
EXIT_ERROR = 1
#: Exit status when the input was at fault (click's own usage errors exit 2 too).
EXIT_USAGE = 2
#: Exit status after Ctrl-C in a command that does not handle it itself (128 + SIGINT).
EXIT_INTERRUPTED = 130


@dataclass
class CliState:
    """The global options, resolved lazily into ``Settings`` (so ``--help`` never fails)."""

    redis_url: str | None = None
    namespace: str | None = None

    def settings(self, **overrides: Any) -> Settings:
        """Client settings, once something answers at their URL (fails fast, with a hint)."""
        try:
            settings = Settings.load(
                redis_url=self.redis_url, namespace=self.namespace, **overrides
            )
        except ConfigurationError as e:  # a bad option or variable: the user's input
            raise InvalidInput(e.description, code=e.code) from e
        reach(settings, given=self.redis_url is not None)
        return settings

    def coordinator_settings(self, **overrides: Any) -> CoordinatorSettings:
        """Coordinator settings (global options, then ``AGENTBUS_*``, then defaults)."""
        values = {"redis_url": self.redis_url, "namespace": self.namespace, **overrides}
        try:
            return CoordinatorSettings(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:  # a bad option or variable: the user's input
            summary = validation_summary(e)
            raise InvalidInput(
                f"invalid coordinator settings: {summary}", code=ErrorCode.CONFIGURATION
            ) from e
        except ValueError as e:
            raise InvalidInput(
                f"invalid coordinator settings: {e}", code=ErrorCode.CONFIGURATION
            ) from e


pass_state = click.make_pass_decorator(CliState, ensure=True)


def fail(error: AgentbusError) -> NoReturn:
    """Print ``error`` as one line; exit with ``EXIT_USAGE`` when the input was at fault, else
    ``EXIT_ERROR``."""
    line = f"agentbus: error [{error.code}]: {error.description}"
    if isinstance(error, RemoteError) and error.details:
        line += f" (details: {dumps(error.details)})"
    click.echo(" ".join(line.splitlines()), err=True)
    sys.exit(EXIT_USAGE if isinstance(error, InvalidInput) else EXIT_ERROR)


_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


def stream_ids(ctx: click.Context, param: click.Parameter, value: T) -> T:
    """Click callback: each value is a stream entry id (``1700000000000-0``, or just its
    milliseconds), else a usage error before anything is sent to Redis."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is not None and not _STREAM_ID.match(str(v)):
            raise click.BadParameter(
                f"{v!r} is not a stream entry id (like 1700000000000-0: milliseconds-sequence, "
                "as `agentbus deadletter list` and `agentbus watch` print them)",
                ctx=ctx,
                param=param,
            )
    return value


class AgentbusGroup(click.Group):
    """A group that turns agentbus, Redis and OS errors into one line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentbusError as e:
            fail(e)
        except RedisError as e:
            fail(AgentbusError(f"Redis error: {e}", code=ErrorCode.CONNECTION))
        except OSError as e:
            # One line for the user; where it came from with --log-level debug.
            logging.getLogger("agentbus.cli").debug("%s failed", ctx.info_name, exc_info=True)
            fail(AgentbusError(str(e), code=ErrorCode.INTERNAL))
        except KeyboardInterrupt:
            click.echo("agentbus: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def setup_logging(level: str) -> None:
    """Log to stderr as ``time level logger: message`` (the CLI is the executable edge)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def console() -> Console:
    """A rich console for stdout: the terminal's width (or ``COLUMNS``), else wide when piped
    (no wrapped tables)."""
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 200
    return Console(highlight=False, width=wide)


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh event loop (uvloop when installed: ``agentbus[fast]``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_fn())
    result: T = uvloop.run(coro_fn())  # typed with uvloop installed, Any without it
    return result


def json_payload(value: str | None, what: str = "PAYLOAD") -> Any:
    """Parse a JSON argument (``None`` stays ``None``), or a usage error saying why."""
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise click.BadParameter(
            f'{what} must be JSON, e.g. \'{{"text": "hi"}}\' or \'"hi"\': {e}'
        ) from e


def dumps(value: Any, *, pretty: bool = False) -> str:
    """JSON text for output (datetimes as ISO-8601, keys in order)."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS).decode()
