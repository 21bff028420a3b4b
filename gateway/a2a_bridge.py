"""A2A messages delivered as bus requests (``a2a-sdk``'s server side, with our own handler).

``SendMessage`` to ``/a2a/{name}`` becomes ``bus.request(name, type, payload)``:

* **type**: the message's ``type`` metadata; without it, the agent's only handled type; else a
  clear ``InvalidParams`` error naming the types (its card lists them as skills);
* **payload**: the one data part's value; else the text parts joined; else ``None``;
* **session**: the message's ``contextId`` (a new one when absent) is the agentbus session the
  request carries (``session`` header, and ``tenant`` when the caller has one), owned by the
  caller as for ``POST /api/.../requests``;
* **reply**: an agent ``Message`` with a text part (a string reply) or a data part (any other
  JSON value). A handler error, a timeout or an agent gone is a ``Task`` in state ``failed``
  whose status message has the error (``[code] description``, and the ``ErrorInfo`` as data);
  input the agent refused (``bad_request``, ``unknown_type``, ``too_large``) is ``InvalidParams``.

``SendStreamingMessage``: a ``Task`` (``submitted``), then each activity event of the session
as a ``working`` status update (the event as a data part; ``agentbus.event`` metadata names its
type), then the reply as an artifact and a final ``completed`` (or ``failed``) status. The
session is followed through the shared session reader (``gateway.fanout``), subscribed before
the request goes out, and read up to its newest entry once the reply is in: every activity event
the agent wrote while handling the request arrives, before the final status.

The gateway keeps no task: ``GetTask``, ``ListTasks``, ``CancelTask``, resubscription and push
notifications are ``UnsupportedOperation``. 0.3's ``message/send`` and ``message/stream`` are
served by ``a2a-sdk``'s compatibility adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any, NoReturn

import orjson
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.types.a2a_pb2 import (
    AgentCard,
    Artifact,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import InternalError, InvalidParamsError, UnsupportedOperationError
from google.protobuf import json_format, struct_pb2

from agent_sdk.activity import DEFAULT_RETENTION, TENANT_HEADER
from agent_sdk.watch import latest_id
from gateway.a2a_cards import handled_types
from gateway.auth import claim_session, session_tenant
from gateway.fanout import Frame, follow, id_key
from gateway.fleet import usage_of
from gateway.state import Gateway
from gateway.tokens import Principal
from schemas.envelope import new_id
from schemas.errors import AgentbusError, ConnectionFailed, ErrorInfo, InvalidInput
from schemas.events import ActivityType
from schemas.names import check_identifier

__all__ = ["BusRequestHandler"]

#: Errors the caller must fix (its input): ``InvalidParams``; the rest fail the task.
_CALLER_ERRORS = frozenset({"bad_request", "unknown_type", "too_large", "invalid_name"})
_ACTIVITY = frozenset(t.value for t in ActivityType)
#: How long the end of a streamed request waits for the activity already written to arrive.
_DRAIN_SECONDS = 5.0


def _value(obj: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(obj, value)
    return value


def _parts(result: Any) -> list[Part]:
    return [Part(text=result)] if isinstance(result, str) else [Part(data=_value(result))]


def _payload(message: Message) -> Any:
    data = [p for p in message.parts if p.HasField("data")]
    texts = [p.text for p in message.parts if p.HasField("text")]
    if any(p.HasField("raw") or p.HasField("url") for p in message.parts):
        raise InvalidParamsError(message="file parts are not supported: send text or data")
    if len(data) > 1:
        raise InvalidParamsError(message="send at most one data part (the request's payload)")
    if data:
        return json_format.MessageToDict(data[0].data)
    return "\n".join(texts) if texts else None


def _agent_message(context_id: str, task_id: str | None, parts: list[Part]) -> Message:
    return Message(
        message_id=new_id(), context_id=context_id, task_id=task_id or "",
        role=Role.ROLE_AGENT, parts=parts,
    )  # fmt: skip


def _error_parts(info: ErrorInfo) -> list[Part]:
    return [Part(text=f"[{info.code}] {info.description}"), Part(data=_value(info.model_dump()))]


def _raise_for_caller(e: AgentbusError) -> None:
    if isinstance(e, ConnectionFailed):
        raise InternalError(message=f"[{e.code}] {e.description}") from e
    if isinstance(e, InvalidInput) or e.code in _CALLER_ERRORS:
        raise InvalidParamsError(message=f"[{e.code}] {e.description}") from e


def _unsupported(what: str) -> NoReturn:
    raise UnsupportedOperationError(
        message=f"{what}: the agentbus gateway keeps no A2A tasks (each message is one request)"
    )


class BusRequestHandler(RequestHandler):
    """Serves every bus agent; the agent is ``context.state["agent"]`` (from the URL) and the
    caller ``context.state["principal"]`` (checked by the route: an operator)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _target(
        self, context: ServerCallContext, message: Message
    ) -> tuple[str, str, Any, dict[str, str]]:
        """(agent, type, payload, headers) for ``message``; claims its session."""
        name: str = context.state["agent"]
        who: Principal = context.state["principal"]
        gateway = self.gateway
        meta = json_format.MessageToDict(message.metadata) if message.metadata else {}
        mtype = meta.get("type")
        if mtype is None:
            record = await gateway.bus.get(name)
            if record is None:
                raise InvalidParamsError(message=f"no live agent named {name!r}")
            usage = (await usage_of(gateway.lanes, gateway.settings, [name]))[name]
            types = handled_types(record, usage)
            if len(types) != 1:
                raise InvalidParamsError(
                    message=f"say which message type to send to {name!r} in the message's "
                    f"metadata 'type' (its skills): one of {types}"
                    if types
                    else f"{name!r} lists no message type: name one in the metadata 'type'"
                )
            mtype = types[0]
        if not isinstance(mtype, str) or not 1 <= len(mtype) <= 128:
            raise InvalidParamsError(message="metadata 'type' must be a string of 1-128 chars")
        session = message.context_id or new_id()
        try:
            check_identifier(session, "contextId")
        except ValueError as e:
            raise InvalidParamsError(message=str(e)) from e
        try:
            tenant = session_tenant(gateway, who)
            await claim_session(gateway, who, session, DEFAULT_RETENTION, tenant)
        except AgentbusError as e:
            raise InvalidParamsError(message=f"[{e.code}] {e.description}") from e
        headers = {"session": session}
        if tenant is not None:
            headers[TENANT_HEADER] = tenant
        return name, mtype, _payload(message), headers

    async def _request(self, name: str, mtype: str, payload: Any, headers: dict[str, str]) -> Any:
        return await self.gateway.bus.request(name, mtype, payload, headers=headers)

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        name, mtype, payload, headers = await self._target(context, params.message)
        session = headers["session"]
        try:
            reply = await self._request(name, mtype, payload, headers)
        except AgentbusError as e:
            _raise_for_caller(e)
            task_id = new_id()
            failed = _agent_message(session, task_id, _error_parts(e.info))
            return Task(
                id=task_id, context_id=session,
                status=TaskStatus(state=TaskState.TASK_STATE_FAILED, message=failed),
            )  # fmt: skip
        return _agent_message(session, None, _parts(reply))

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        name, mtype, payload, headers = await self._target(context, params.message)
        session, tenant, task_id = headers["session"], headers.get(TENANT_HEADER), new_id()
        gateway, s = self.gateway, self.gateway.settings
        try:  # before the first event: a refusal is a JSON-RPC error, not a broken stream
            hub = gateway.session_hub(session, tenant)
        except AgentbusError as e:
            raise InternalError(message=f"[{e.code}] {e.description}") from e
        # From here the hub is released in the finally below, however the stream ends: the
        # dispatcher starts this generator at once, so its finally runs (on close or collection).
        frames = follow(hub, None, replay_all=False, limit=s.gateway_client_queue,
                        keepalive=s.gateway_keepalive)  # fmt: skip
        request: asyncio.Task[Any] | None = None
        pending: asyncio.Task[Frame] | None = None
        try:
            try:
                await anext(frames)  # "ready": subscribed, all written from now on arrives
            except AgentbusError as e:
                raise InternalError(message=f"[{e.code}] {e.description}") from e
            yield Task(
                id=task_id, context_id=session,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
            )  # fmt: skip
            request = asyncio.create_task(self._request(name, mtype, payload, headers))
            pending = asyncio.create_task(anext(frames))
            seen = "0-0"  # the id of the last frame taken from the session
            while not request.done():
                waiting: set[asyncio.Future[Any]] = {request}
                if pending is not None:
                    waiting.add(pending)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                while pending is not None and pending.done():
                    frame = pending.exception() is None and pending.result()
                    pending = None
                    if frame and frame.id is not None:
                        seen = frame.id
                    if frame and not frame.final:
                        pending = asyncio.create_task(anext(frames))
                    if frame and frame.kind in _ACTIVITY:
                        yield self._working(session, task_id, frame)
            if pending is not None:  # the activity written before the reply, then the end
                until = await latest_id(gateway.bus.client, hub.key)
                if id_key(until) > id_key(seen):
                    async for frame in self._until(pending, frames, until):
                        yield self._working(session, task_id, frame)
                    pending = None
            try:
                reply = request.result()
            except AgentbusError as e:
                failed = _agent_message(session, task_id, _error_parts(e.info))
                yield self._final(session, task_id, TaskState.TASK_STATE_FAILED, failed)
                return
            yield TaskArtifactUpdateEvent(
                task_id=task_id, context_id=session, last_chunk=True,
                artifact=Artifact(artifact_id=new_id(), name="reply", parts=_parts(reply)),
            )  # fmt: skip
            done = _agent_message(session, task_id, _parts(reply))
            yield self._final(session, task_id, TaskState.TASK_STATE_COMPLETED, done)
        finally:
            for task in (pending, request):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await frames.aclose()
            await gateway.release_session(session, tenant)

    async def _until(
        self, pending: asyncio.Task[Frame], frames: AsyncGenerator[Frame, None], until: str
    ) -> AsyncGenerator[Frame, None]:
        """The activity frames up to stream id ``until``, starting with ``pending``'s."""
        if until == "0-0":
            pending.cancel()
            return
        nxt: asyncio.Task[Frame] | asyncio.Future[Frame] = pending
        while True:
            try:
                frame = await asyncio.wait_for(nxt, _DRAIN_SECONDS)
            except (TimeoutError, StopAsyncIteration):
                return
            if frame.final:
                return
            if frame.kind in _ACTIVITY:
                yield frame
            if frame.id is not None and id_key(frame.id) >= id_key(until):
                return
            nxt = asyncio.ensure_future(anext(frames))

    @staticmethod
    def _working(session: str, task_id: str, frame: Frame) -> TaskStatusUpdateEvent:
        event = orjson.loads(frame.data)
        message = _agent_message(session, task_id, [Part(data=_value(event))])
        status = TaskStatus(state=TaskState.TASK_STATE_WORKING, message=message)
        update = TaskStatusUpdateEvent(task_id=task_id, context_id=session, status=status)
        update.metadata.update({"agentbus.event": frame.kind, "agentbus.id": frame.id or ""})
        return update

    @staticmethod
    def _final(
        session: str, task_id: str, state: TaskState, message: Message
    ) -> TaskStatusUpdateEvent:
        status = TaskStatus(state=state, message=message)
        return TaskStatusUpdateEvent(task_id=task_id, context_id=session, status=status)

    # -- what a stateless gateway does not keep -------------------------------------------------
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        _unsupported("GetTask")

    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        _unsupported("ListTasks")

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        _unsupported("CancelTask")

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        _unsupported("SubscribeToTask")
        yield  # an async generator, as the interface wants

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        _unsupported("push notifications")

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        _unsupported("push notifications")

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        _unsupported("push notifications")

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        _unsupported("push notifications")

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        _unsupported("the extended agent card (the public one is all there is)")
