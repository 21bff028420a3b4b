"""The public surface of ``agent_sdk``: small, explicit and complete."""

from __future__ import annotations

import importlib
import inspect

import agent_sdk
import schemas.errors

#: Names every application needs; others may be added, none of these removed.
REQUIRED = {
    "Agent",
    "AgentRecord",
    "AgentStatus",
    "AgentbusError",
    "Bus",
    "Component",
    "NameTaken",
    "NoCoordinator",
    "NoResponders",
    "Settings",
}


def test_all_names_import() -> None:
    for name in agent_sdk.__all__:
        assert getattr(agent_sdk, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from agent_sdk import *", namespace)  # the star import users write
    assert set(agent_sdk.__all__) <= set(namespace)


def test_all_has_no_duplicates() -> None:
    assert len(set(agent_sdk.__all__)) == len(agent_sdk.__all__)


def test_required_names_are_exported() -> None:
    assert set(agent_sdk.__all__) >= REQUIRED


def test_every_public_exception_is_exported() -> None:
    """Whatever the SDK can raise at a caller is importable from ``agent_sdk``."""
    exceptions = {
        name
        for name, obj in vars(schemas.errors).items()
        if inspect.isclass(obj) and issubclass(obj, schemas.errors.AgentbusError)
    }
    assert exceptions <= set(agent_sdk.__all__)


def test_nothing_public_is_left_out() -> None:
    """Every public class or function defined in ``agent_sdk/__init__.py`` is in ``__all__``."""
    public = {
        name
        for name, obj in vars(agent_sdk).items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public <= set(agent_sdk.__all__), public - set(agent_sdk.__all__)


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
