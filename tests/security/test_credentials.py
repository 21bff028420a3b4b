"""Attacks 16-18: a missing password, secrets in URLs, and TLS settings."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent_sdk import Agent
from agent_sdk.connection import make_client, redis_errors
from agent_sdk.settings import Settings, redact_url
from coordinator import Coordinator
from coordinator.acl.apply import acl_command
from schemas.errors import AuthFailed, ConfigurationError, PermissionDenied
from tests.security.conftest import World


async def test_missing_or_wrong_password_fails_at_once_with_code_auth(world: World) -> None:
    """Before: 61-65 s of reconnects, then "cannot reach Redis" (code connection)."""
    user = f"{world.keys.ns}-pwtest"
    await acl_command(world.admin, "ACL", "SETUSER", user, "on", ">right", "+@all", "~*", "&*")
    try:
        for password in (None, SecretStr("wrong")):
            settings = world.base.model_copy(
                update={"redis_username": user, "redis_password": password}
            )
            started = time.monotonic()
            with pytest.raises(AuthFailed) as e:
                await Agent("alice", "worker", settings=settings).start()
            assert time.monotonic() - started < 3
            assert e.value.code == "auth"
            assert "AGENTBUS_REDIS_PASSWORD" in e.value.description
    finally:
        await acl_command(world.admin, "ACL", "DELUSER", user)


async def test_a_refused_command_is_a_permission_error(world: World) -> None:
    settings = world.settings("mallory")
    client = make_client(settings)
    try:
        if world.secure:
            with (
                pytest.raises(PermissionDenied) as e,
                redis_errors(settings, "reading bob's inbox"),
            ):
                await client.xrange(world.keys.inbox("bob"))
            assert e.value.code == "permission"
        else:
            with redis_errors(settings, "reading bob's inbox"):
                await client.xrange(world.keys.inbox("bob"))
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@host:6379/0",
        "redis://:hunter2@host:6379/0",
        "redis://hunter2@host:6379/0",
        "redis://host:6379/0?password=hunter2",
        "redis://user:hunter2@host:notaport/0",
    ],
)
def test_no_password_in_any_error_or_display(url: str) -> None:
    assert "hunter2" not in redact_url(url)
    if url.startswith("redis://"):
        s = Settings.load(redis_url=url)
        assert "hunter2" not in s.display_url
        assert "hunter2" not in repr(s)
        return
    with pytest.raises(ConfigurationError) as e:
        Settings.load(redis_url=url)
    assert "hunter2" not in str(e.value)
    assert "hunter2" not in repr(e.value.details)


def test_password_from_a_file_never_in_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    s = Settings(redis_url="redis://127.0.0.1:6379/0", redis_password_file=secret)
    assert s.password() == "hunter2"
    assert "hunter2" not in s.display_url
    assert "hunter2" not in repr(s)


def test_tls_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "k.pem"))
    for f in (ca, cert, key):
        f.write_text("-")
    s = Settings(redis_url="rediss://h:6380/0", tls_ca=ca, tls_cert=cert, tls_key=key)
    opts = s.tls_options()
    assert opts["ssl_cert_reqs"] == "required"
    assert opts["ssl_check_hostname"] is True
    assert (opts["ssl_ca_certs"], opts["ssl_certfile"], opts["ssl_keyfile"]) == (
        str(ca),
        str(cert),
        str(key),
    )
    with pytest.raises(ValueError, match="not by URL parameters"):
        Settings(redis_url="rediss://h:6380/0?ssl_cert_reqs=none")
    with pytest.raises(ValueError, match="rediss://"):
        Settings(redis_url="redis://h:6380/0", tls_ca=ca)
    with pytest.raises(ValueError, match="go together"):
        Settings(redis_url="rediss://h:6380/0", tls_cert=cert)
    off = Settings(redis_url="rediss://h:6380/0", tls_verify=False)
    with caplog.at_level(logging.WARNING, logger="agentbus.settings"):
        assert off.tls_options()["ssl_cert_reqs"] == "none"
    assert "verification is OFF" in caplog.text


async def test_a_name_outside_the_identity_fails_at_once_with_code_permission(
    world: World, coord: object
) -> None:
    """Before: the agent's Redis user may not pop the reply list of a name its identity does not
    own, the router retried the refusal in a loop, and the start waited 5 s for an answer it
    could never read, then blamed the coordinator (NoCoordinator)."""
    agent = Agent("zed", "worker", settings=world.settings("alice"))
    if not world.secure:  # documented: names are not bound to credentials
        await agent.start()
        await agent.stop()
        return
    started = time.monotonic()
    with pytest.raises(PermissionDenied) as e:
        await agent.start()
    assert time.monotonic() - started < 2.0
    assert e.value.code == "permission"
    assert world.keys.agent_prefix("zed") in str(e.value)
    assert "reply list" in str(e.value)
    assert agent.stopped.is_set()


async def test_an_agent_discovers_and_gets_others_under_its_own_credential(
    world: World, coord: Coordinator
) -> None:
    """Discovery reads the records, the indexes and each match's deadline (its own or its
    host's lease's): an agent's policy user may read them all, in both modes."""
    async with world.agent("alice", "alice") as alice, world.agent("bob", "bob"):
        assert {a.name for a in await alice.discover(role="worker")} == {"alice", "bob"}
        record = await alice.get("bob")
        assert record is not None
        assert record.name == "bob"
