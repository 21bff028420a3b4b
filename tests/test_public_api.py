"""The public surface of ``agent_sdk``: small, explicit and complete.

Three public modules: ``agent_sdk`` (the entry points and the five exceptions most programs
catch), ``agent_sdk.errors`` (every exception) and ``agent_sdk.types`` (records and events).
"""

from __future__ import annotations

import importlib
import inspect
import typing
from types import ModuleType

import pytest

import agent_sdk
import agent_sdk.errors
import agent_sdk.types
import schemas.errors

#: ``agent_sdk.__all__``, pinned: a name added here is a decision (see its module docstring).
TOP_LEVEL = {
    "Activity",
    "Agent",
    "AgentbusError",
    "Bus",
    "Component",
    "Host",
    "NameTaken",
    "NoResponders",
    "RemoteError",
    "RequestTimeout",
    "Settings",
}

#: Records and events every application may receive: none of these removed.
TYPES = {
    "ActivityEvent",
    "ActivityType",
    "AgentRecord",
    "AgentStatus",
    "Envelope",
    "GatherResult",
    "Message",
    "RegistryEvent",
    "RegistryEventType",
    "Subscription",
}

PUBLIC = (agent_sdk, agent_sdk.errors, agent_sdk.types)


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_all_names_import(module: ModuleType) -> None:
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)  # the star import users write
    assert set(module.__all__) <= set(namespace)
    assert len(set(module.__all__)) == len(module.__all__), "duplicates"


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_nothing_public_is_left_out(module: ModuleType) -> None:
    """Every public class or function a public module holds is in its ``__all__`` (a name
    imported into it without being exported would be a name users find and should not)."""
    public = {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public <= set(module.__all__), public - set(module.__all__)


def test_top_level_is_pinned() -> None:
    assert set(agent_sdk.__all__) == TOP_LEVEL


def test_records_and_events_are_in_types() -> None:
    assert set(agent_sdk.types.__all__) >= TYPES


def test_every_exception_is_in_errors() -> None:
    """Whatever the SDK can raise at a caller is importable from ``agent_sdk.errors``, as the
    very class ``schemas.errors`` defines (``except`` matches it)."""
    exceptions = {
        name: obj
        for name, obj in vars(schemas.errors).items()
        if inspect.isclass(obj) and issubclass(obj, schemas.errors.AgentbusError)
    }
    assert set(exceptions) <= set(agent_sdk.errors.__all__)
    for name, cls in exceptions.items():
        assert getattr(agent_sdk.errors, name) is cls, name
    assert agent_sdk.errors.ErrorInfo is schemas.errors.ErrorInfo


def test_top_level_exceptions_are_the_same_classes() -> None:
    for name in TOP_LEVEL:
        obj = getattr(agent_sdk, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert getattr(agent_sdk.errors, name) is obj, name


def _classes(hint: object) -> set[type]:
    """The classes named by a type hint (``list[AgentRecord] | None`` -> {list, AgentRecord})."""
    found: set[type] = set()
    if isinstance(hint, type):
        found.add(hint)
    for arg in typing.get_args(hint):
        found |= _classes(arg)
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        found.add(origin)
    return found


def test_what_the_verbs_return_is_public() -> None:
    """A record, event or result a public method hands back can be imported by the caller (to
    annotate with, to match on) from a public module."""
    exported = {getattr(m, n) for m in PUBLIC for n in m.__all__}
    methods = {
        agent_sdk.Bus: ("discover", "select", "get", "watch", "watch_session"),
        agent_sdk.Agent: ("request_many", "subscribe", "activity", "discover", "record"),
        agent_sdk.Activity: ("emit", "thinking"),
    }
    for cls, names in methods.items():
        for name in names:
            attr = inspect.getattr_static(cls, name)
            func = attr.fget if isinstance(attr, property) else attr
            # names imported for type checking only resolve from the public modules
            public_names = {n: getattr(m, n) for m in PUBLIC for n in m.__all__}
            returned = typing.get_type_hints(func, localns=public_names).get("return")
            ours = {
                c
                for c in _classes(returned)
                if c.__module__.split(".")[0] in ("agent_sdk", "schemas")
            }
            assert ours, (cls.__name__, name, returned)  # the check looks at something
            assert ours <= exported, (cls.__name__, name, ours - exported)


def test_facade_modules_declare_all() -> None:
    for module in ("agent", "bus", "membership", "replies", "discovery", "selection"):
        mod = importlib.import_module(f"agent_sdk.{module}")
        assert mod.__all__, module
        for name in mod.__all__:
            assert hasattr(mod, name), f"agent_sdk.{module}.{name}"


def test_every_verb_is_defined_once_with_typed_parameters() -> None:
    """``send`` & co. live in ``agent_sdk.verbs.Verbs``; Agent and Bus inherit them (never
    re-declare them), and none takes ``**kwargs``: a typo like ``timeuot=5`` is an error."""
    import inspect

    from agent_sdk.verbs import Verbs

    verbs = [
        "send",
        "request",
        "request_many",
        "broadcast",
        "broadcast_many",
        "publish",
        "subscribe",
    ]
    from agent_sdk.messaging import Messaging

    for cls in (agent_sdk.Agent, agent_sdk.Bus, Messaging):
        for verb in verbs:
            assert getattr(cls, verb) is getattr(Verbs, verb), (cls, verb)
    for verb in verbs:
        kinds = {p.kind for p in inspect.signature(getattr(Verbs, verb)).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, verb
