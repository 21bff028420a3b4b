"""The connection forms: parsing, refusals with a reason, redaction; the compose examples use
them and name agentbus commands that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agent_sdk import Settings
from agent_sdk.topology import Topology, parse_redis_url, redact_url
from coordinator.cli import cli
from schemas.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_url() -> None:
    t = parse_redis_url("redis+cluster://bob:s3cret@10.0.0.1:7001, 10.0.0.2:7002,node3")
    assert t.topology is Topology.CLUSTER
    assert t.nodes == (("10.0.0.1", 7001), ("10.0.0.2", 7002), ("node3", 6379))
    assert (t.username, t.password, t.tls) == ("bob", "s3cret", False)
    assert "s3cret" not in repr(t)
    assert parse_redis_url("rediss+cluster://h:1/0").tls


def test_sentinel_url() -> None:
    t = parse_redis_url("redis+sentinel://:pw@s1:26379,s2/mymaster/3")
    assert t.topology is Topology.SENTINEL
    assert t.nodes == (("s1", 26379), ("s2", 26379))
    assert (t.master, t.db, t.password, t.username) == ("mymaster", 3, "pw", None)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+sentinel://h:1", "name the master"),
        ("redis+sentinel://h:1/m/x", "must be a number"),
        ("redis+cluster://h:port", "is not host:port"),
        ("redis+cluster://h:1?x=1", "options after '?'"),
        ("memcached://h:1", "must start with one of"),
    ],
)
def test_bad_urls_say_why(url: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        Settings.load(redis_url=url)


def test_passwords_are_redacted() -> None:
    assert redact_url("redis+cluster://u:pw@a:1,b:2") == "redis+cluster://u:***@a:1,b:2"
    assert redact_url("redis+sentinel://:pw@a:1/m/0") == "redis+sentinel://:***@a:1/m/0"
    assert redact_url("redis://u:pw@h:6379/0") == "redis://u:***@h:6379/0"
    s = Settings(redis_url="redis+sentinel://u:pw@a:1/m")
    assert "pw" not in s.display_url


@pytest.mark.parametrize("name", ["cluster.yml", "sentinel.yml"])
def test_compose_examples(name: str) -> None:
    data = yaml.safe_load((ROOT / "examples" / "compose" / name).read_text())
    coord = data["services"]["coordinator"]
    Settings(redis_url=coord["environment"]["AGENTBUS_REDIS_URL"])  # a valid form
    for argv in (coord["command"], coord["healthcheck"]["test"][1:]):
        assert argv[0] == "agentbus"
        result = CliRunner().invoke(cli, [*argv[1:], "--help"])
        assert result.exit_code == 0, result.output


def test_acl_mode_is_refused_on_a_cluster_and_kept_under_sentinel() -> None:
    with pytest.raises(ConfigurationError, match="not supported on a Redis Cluster"):
        Settings.load(redis_url="redis+cluster://h:1", security="acl")
    assert Settings.load(redis_url="redis+sentinel://h:1/m", security="acl").secure


def test_tls_and_credentials_of_the_multi_node_forms(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigurationError, match="not rediss://"):
        Settings.load(redis_url="redis+cluster://h:1", tls_ca=ca)
    s = Settings.load(redis_url="rediss+sentinel://h:1/m", tls_ca=ca)
    assert s.tls_options()["ssl_ca_certs"] == str(ca)
    assert redact_url("redis+cluster://u:pw@a:1,b:2?password=pw2") == (
        "redis+cluster://u:***@a:1,b:2?password=***"
    )
    assert "pw" not in redact_url("redis+sentinel://pw@a:1/m")
