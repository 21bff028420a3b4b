"""Message handlers: ``@agent.on("type")``, the ``Message`` a handler sees, and invocation.

A handler is ``async def handler(payload, msg)`` (``msg`` optional). When the first parameter is
annotated with a pydantic model, the payload is validated into it (failure: error ``bad_request``
with the validation errors in ``details``); any other annotation (``dict``, ``Any``, none) gets
the decoded JSON as is. The return value is the reply to a request (pydantic models serialised).
"""

from __future__ import annotations

import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import FunctionType
from typing import Any

from pydantic import BaseModel, ValidationError

from agent_sdk.messaging.codec import to_jsonable
from schemas.envelope import Envelope, Kind
from schemas.errors import AgentbusError, ErrorCode, ErrorInfo, validation_summary

__all__ = ["Handler", "HandlerRegistry", "Message", "Observer", "Outcome", "TaskObserver"]

log = logging.getLogger("agentbus.messaging")

Handler = Callable[..., Awaitable[Any]]
#: Called after each handled message: (type, seconds, failed). E.g. ``UsageRecorder.record``.
Observer = Callable[[str, float, bool], None]
#: Called after each handled message with the message, when its handler started
#: (``time.time()``), how long it ran (seconds) and its error (``None``: ok). E.g. the task
#: history (``agent_sdk.task_history``).
TaskObserver = Callable[["Message", float, float, ErrorInfo | None], None]


class Message:
    """One received message: the envelope plus how it was delivered."""

    __slots__ = ("delivery_count", "entry_id", "envelope", "source")

    def __init__(
        self,
        envelope: Envelope,
        *,
        delivery_count: int = 1,
        source: str | None = None,
        entry_id: str | None = None,
    ) -> None:
        self.envelope = envelope
        #: 1 on the first delivery; grows each time the entry is claimed after a failure.
        self.delivery_count = delivery_count
        #: The stream (or channel) it came from, and its stream entry id (None for pub/sub).
        self.source = source
        self.entry_id = entry_id

    @property
    def id(self) -> str:
        """The message id: the idempotency key (the same across redeliveries)."""
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def kind(self) -> Kind:
        return self.envelope.kind

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def target(self) -> str | None:
        return self.envelope.target

    @property
    def correlation_id(self) -> str | None:
        return self.envelope.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.envelope.reply_to

    @property
    def headers(self) -> dict[str, str]:
        return self.envelope.headers

    @property
    def sent_at(self) -> datetime:
        return self.envelope.sent_at

    @property
    def deadline(self) -> datetime | None:
        return self.envelope.deadline

    @property
    def payload(self) -> Any:
        return self.envelope.payload

    @property
    def error(self) -> ErrorInfo | None:
        return self.envelope.error

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 1

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, type={self.type!r}, kind={self.kind.value!r}, "
            f"sender={self.sender!r}, delivery_count={self.delivery_count})"
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of handling one message: a result to reply with, or an error."""

    result: Any = None
    error: ErrorInfo | None = None
    #: True when retrying cannot help (unknown type, invalid payload): never redeliver.
    final: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None


#: The outcome of a handler that returned ``None`` (one shared instance: outcomes are frozen).
_DONE = Outcome()


@dataclass(frozen=True, slots=True)
class _Entry:
    func: Handler
    model: type[BaseModel] | None
    wants_msg: bool


#: What ``_inspect`` found per handler code: a host making an agent per request registers the
#: same handler functions (closures of one code object) thousands of times, and reading a
#: signature and its type hints costs tens of microseconds each time.
_SHAPES: dict[tuple[Any, ...], tuple[type[BaseModel] | None, bool]] = {}
_SHAPES_MAX = 1024


def _inspect(func: Handler) -> _Entry:
    key: tuple[Any, ...] | None = None
    if type(func) is FunctionType and (code := func.__code__).co_flags & inspect.CO_COROUTINE:
        # a plain ``async def`` (its code's flags say it: what ``iscoroutinefunction`` checks,
        # without its unwrapping): its shape may be known already
        annotations = func.__annotations__
        key = (code, id(func.__globals__), func.__defaults__, tuple(annotations.items()))
        try:
            shape = _SHAPES.get(key)
        except TypeError:  # an unhashable default or annotation: not cached
            key, shape = None, None
        if shape is not None:
            return _Entry(func, *shape)
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"handler {func!r} must be an async function")
    entry = _inspect_uncached(func)
    if key is not None:
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[key] = (entry.model, entry.wants_msg)
    return entry


def _inspect_uncached(func: Handler) -> _Entry:
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in params if p.default is p.empty]
    if not params or len(required) > 2:
        raise TypeError(f"handler {func.__name__} must take (payload) or (payload, msg)")
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: treat the payload as plain JSON
        hints = {}
    ann = hints.get(params[0].name)
    model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return _Entry(func, model, len(params) >= 2)


class HandlerRegistry:
    """Handlers by message type."""

    def __init__(
        self, observer: Observer | None = None, task_observer: TaskObserver | None = None
    ) -> None:
        self._handlers: dict[str, _Entry] = {}
        self.observer = observer
        self.task_observer = task_observer

    def on(self, type: str) -> Callable[[Handler], Handler]:
        """Decorator: register an async handler for messages of ``type``."""
        if not type or len(type) > 128:
            raise ValueError(f"message type must be 1-128 characters, got {type!r}")

        def register(func: Handler) -> Handler:
            self._handlers[type] = _inspect(func)
            return func

        return register

    def add(self, type: str, func: Handler) -> None:
        self.on(type)(func)

    def __contains__(self, type: object) -> bool:
        return type in self._handlers

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def items(self) -> list[tuple[str, Handler]]:
        """``(type, handler)`` pairs, in registration order (to copy them onto another agent)."""
        return [(type, entry.func) for type, entry in self._handlers.items()]

    async def handle(
        self, msg: Message, settle: Callable[[Outcome], Awaitable[None]] | None = None
    ) -> Outcome:
        """Run the handler for ``msg``; every failure becomes an ``Outcome`` with an error.
        ``settle`` (a direct request's answer, posted without waiting for Redis) is awaited
        with the outcome before the observers are told: their bookkeeping is not on the
        answer's path."""
        if self.observer is None and self.task_observer is None:
            outcome = await self._handle(msg)
            if settle is not None:
                await settle(outcome)
            return outcome
        started = time.time()
        t0 = time.perf_counter()
        outcome = await self._handle(msg)
        seconds = time.perf_counter() - t0
        try:
            if settle is not None:
                await settle(outcome)
        finally:
            self.observe(msg.type, seconds, failed=not outcome.ok)
            if self.task_observer is not None:
                try:
                    self.task_observer(msg, started, seconds, outcome.error)
                except Exception:
                    log.exception("task observer failed")
        return outcome

    def observe(self, type: str, seconds: float, *, failed: bool) -> None:
        """Tell the observer (if any) of a message: handled, or counted without a handler."""
        if self.observer is None:
            return
        try:
            self.observer(type, seconds, failed)
        except Exception:
            log.exception("handler observer failed")

    async def _handle(self, msg: Message) -> Outcome:
        entry = self._handlers.get(msg.type)
        if entry is None:
            return Outcome(
                error=ErrorInfo(
                    code=ErrorCode.UNKNOWN_TYPE,
                    description=f"no handler for message type {msg.type!r}",
                    details={"type": msg.type, "known": sorted(self._handlers)},
                )
            )
        payload = msg.payload
        if entry.model is not None:
            try:
                payload = entry.model.model_validate(payload)
            except ValidationError as e:
                return Outcome(
                    error=ErrorInfo(
                        code=ErrorCode.BAD_REQUEST,
                        description=f"invalid {msg.type!r} payload: "
                        + validation_summary(e, "payload"),
                        details={
                            "errors": e.errors(
                                include_url=False, include_context=False, include_input=False
                            )
                        },
                    )
                )
        try:
            if entry.wants_msg:
                result = await entry.func(payload, msg)
            else:
                result = await entry.func(payload)
        except AgentbusError as e:
            return Outcome(error=e.info, final=False)
        except Exception as e:
            log.exception(
                "handler for %r failed on message %s from %s", msg.type, msg.id, msg.sender
            )
            return Outcome(
                error=ErrorInfo(
                    code=ErrorCode.HANDLER_ERROR,
                    description=f"{type(e).__name__}: {e}",
                    details={"exception": type(e).__name__},
                ),
                final=False,
            )
        if result is None:
            return _DONE
        return Outcome(result=to_jsonable(result))
