"""The Grafana dashboard in the repo (deploy/grafana/dashboards/agentbus.json) asks only for
series the gateway's /metrics serves, and its provisioning files are where compose mounts them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent_sdk import Agent, Settings
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "agentbus.json"
_SERIES = re.compile(r"\bagentbus_[a-z_]+")


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _queries() -> list[str]:
    queries = [t["expr"] for p in _dashboard()["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in _dashboard()["templating"]["list"] if "definition" in v]
    return queries


def test_the_dashboard_is_well_formed() -> None:
    dash = _dashboard()
    assert dash["uid"] == "agentbus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["targets"] for p in dash["panels"])
    variables = {v["name"] for v in dash["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", " ".join(_queries()))) - {"__rate_interval", "__all"}
    assert used <= variables, used - variables


async def test_every_series_it_queries_is_served(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    async with Agent("graphed", "worker", settings=settings) as agent:

        @agent.on("job")
        async def job(payload: Any) -> str:
            return "ok"

        await http.post("/api/agents/graphed/requests", json={"type": "job"})

        async def scraped() -> str | None:
            text = (await http.get("/metrics")).text
            return text if "agentbus_handler_latency_seconds_bucket" in text else None

        text = await wait_for(scraped, message="handler metrics in /metrics")
        served = set(re.findall(r"^(agentbus_[a-z_]+)", text, flags=re.MULTILINE))
        served |= set(re.findall(r"^# TYPE (agentbus_[a-z_]+)", text, flags=re.MULTILINE))
    wanted = {name for q in _queries() for name in _SERIES.findall(q)}
    assert len(wanted) >= 10
    assert wanted <= served, wanted - served


def test_compose_mounts_the_monitoring_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]  # optional: not started by default
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), source
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["gateway:8080"]
    assert job["metrics_path"] == "/metrics"
    provider = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "agentbus.yml"
    path = yaml.safe_load(provider.read_text())["providers"][0]["options"]["path"]
    assert any(v.endswith(":" + path + ":ro") for v in services["grafana"]["volumes"])
