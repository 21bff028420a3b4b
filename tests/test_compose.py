"""docker-compose.yml cannot run here: check its shape and that every agentbus command it names
exists in the CLI (with those options), so the file cannot drift from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from coordinator.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _as_argv(value: Any) -> list[str]:
    """A compose command/test as argv: lists stay lists, strings are split on whitespace."""
    if isinstance(value, str):
        return value.split()
    assert isinstance(value, list)
    argv = [str(v) for v in value]
    if argv and argv[0] in ("CMD", "CMD-SHELL"):
        argv = argv[1:] if argv[0] == "CMD" else " ".join(argv[1:]).split()
    return argv


def _agentbus_commands() -> list[list[str]]:
    found = []
    for service in _compose()["services"].values():
        candidates = [service.get("command"), service.get("entrypoint")]
        candidates.append((service.get("healthcheck") or {}).get("test"))
        for value in candidates:
            if value is None:
                continue
            argv = _as_argv(value)
            if argv and argv[0] == "agentbus":
                found.append(argv[1:])
    return found


def test_redis_service_has_aof_and_a_ping_healthcheck() -> None:
    redis = _compose()["services"]["redis"]
    command = _as_argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert _as_argv(redis["healthcheck"]["test"]) == ["redis-cli", "ping"]


def test_coordinator_is_built_from_the_repo_and_checked_by_agentbus() -> None:
    coord = _compose()["services"]["coordinator"]
    assert coord["build"] in (".", {"context": "."})
    assert (ROOT / "Dockerfile").exists()
    assert _as_argv(coord["healthcheck"]["test"])[:3] == ["agentbus", "coordinator", "check"]
    assert coord["depends_on"]["redis"]["condition"] == "service_healthy"
    assert coord["environment"]["AGENTBUS_REDIS_URL"].startswith("redis://redis:")


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("schemas", "agent_sdk", "coordinator", "gateway"):
        assert f"COPY {package} " in dockerfile
    assert "gateway]" in dockerfile  # the gateway extra is installed


def test_gateway_service_listens_for_the_host_and_is_checked() -> None:
    gateway = _compose()["services"]["gateway"]
    assert gateway["build"] in (".", {"context": "."})
    assert gateway["ports"] == ["127.0.0.1:8080:8080"]
    assert "/healthz" in " ".join(_as_argv(gateway["healthcheck"]["test"]))
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "profiles" not in gateway  # started by a plain `docker compose up`


def test_compose_names_agentbus_commands() -> None:
    assert sorted(map(tuple, _agentbus_commands())) == [
        ("coordinator",),
        ("coordinator", "check", "--quiet"),
        ("gateway", "--host", "0.0.0.0", "--port", "8080"),
    ]


@pytest.mark.parametrize("argv", _agentbus_commands(), ids=" ".join)
def test_every_agentbus_command_in_compose_exists(argv: list[str]) -> None:
    # --help after the arguments: click parses them all first, so an unknown command or option
    # fails with a usage error (exit 2) instead of printing help.
    result = CliRunner().invoke(cli, [*argv, "--help"], prog_name="agentbus")
    assert result.exit_code == 0, result.output
    words = argv[: next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))]
    assert f"Usage: agentbus {' '.join(words)}" in result.output


def test_an_unknown_command_would_be_caught() -> None:
    """The check above can fail: a made-up command or option is a usage error."""
    runner = CliRunner()
    assert runner.invoke(cli, ["coordinator", "chek", "--help"]).exit_code == 2
    assert runner.invoke(cli, ["coordinator", "check", "--loud", "--help"]).exit_code == 2
