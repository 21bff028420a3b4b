"""``agentbus demo`` runs the example agents end to end; its transcript shows every step."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner

from coordinator.cli import cli
from tests.support import wait_for_sync

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def transcript() -> str:
    demo = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "demo"],
        # os.environ, not the process's C environment: pytest's terminal leaves COLUMNS there,
        # and the CLI honours COLUMNS (the transcript is matched unwrapped)
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its agents share its process group: one killpg stops all
    )
    try:
        out, err = demo.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        leftovers = psutil.Process(demo.pid).children(recursive=True)  # Redis has its own session
        os.killpg(demo.pid, signal.SIGKILL)
        for child in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        out, err = demo.communicate()
        raise AssertionError(f"agentbus demo did not finish:\n{out}\n{err}") from None
    assert demo.returncode == 0, out + err
    assert "Traceback" not in err
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "expected",
    [
        # the dashboard of the demo's gateway
        r"dashboard: http://127\.0\.0\.1:\d+/",
        # 1. registration: four processes announce, the table lists them
        r"== 1\. Registration",
        r"registered: planner, reviewer, summarizer-1, summarizer-2",
        r"\n *summarizer-2 +summarizer +ready ",
        # 2. discovery
        r"discover\(role='summarizer'\) -> \['summarizer-1', 'summarizer-2'\]",
        r"discover\(capabilities=\['review'\], tags=\['en'\]\) -> \['reviewer'\]",
        # 3. request-reply through the planner, the role queue and the reviewer
        r"planner replied: 2 summaries",
        r'review: \{"approved":true',
        # 4. kill -9 mid-task, redelivery to the other member, expiry, rejoin
        r"kill -9 (summarizer-\d) \(pid \d+\) while it holds message (\w+)",
        r"redelivered: summarizer-\d handled message \w+ on delivery 2",
        r"summarizer-\d expired from the registry",
        r"summarizer-\d restarted and registered again",
        # 5. scatter-gather
        r"2 replies, missing: none",
        # 6. broadcast: every agent printed it
        r"all 4 agents got it",
        # 7. clean leave
        r"agents still registered: \[\]",
        r"demo complete: every step passed",
    ],
)
def test_demo_transcript_shows_each_step(transcript: str, expected: str) -> None:
    assert re.search(expected, transcript), f"{expected!r} not in:\n{transcript}"


@pytest.mark.timeout(120)
def test_the_killed_member_is_not_the_one_that_finished(transcript: str) -> None:
    killed = re.search(r"kill -9 (summarizer-\d) .* message (\w+)", transcript)
    done = re.search(r"redelivered: (summarizer-\d) handled message (\w+) on delivery", transcript)
    assert killed
    assert done
    assert killed.group(1) != done.group(1)
    assert killed.group(2) == done.group(2)  # the same message id: the idempotency key
    for agent in ("planner", "summarizer-1", "summarizer-2", "reviewer"):
        assert re.search(rf"{agent} │ got broadcast", transcript)


@pytest.mark.timeout(120)
def test_demo_stay_leaves_a_dashboard_worth_opening() -> None:
    """``demo --stay``: after the steps the agents stay up and the dashboard shows them, with
    their task history; Ctrl-C goes on to the clean shutdown."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "demo", "--stay"],
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, bufsize=0,
    )  # fmt: skip
    assert demo.stdout is not None
    out = ""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(demo.stdout.fileno(), selectors.EVENT_READ)
            while "Ctrl-C to go on" not in out:
                assert sel.select(90), f"no pause in time:\n{out}"
                chunk = os.read(demo.stdout.fileno(), 65536)
                assert chunk, f"exited:\n{out}"
                out += chunk.decode(errors="replace")
        found = re.search(r"dashboard (http://127\.0\.0\.1:\d+)/", out)
        assert found, out
        base = found.group(1)
        agents = httpx.get(base + "/api/agents", timeout=10).json()
        assert {a["name"] for a in agents["agents"]} == {
            "planner", "reviewer", "summarizer-1", "summarizer-2",
        }  # fmt: skip
        assert "agentbus" in httpx.get(base + "/", timeout=10).text

        def reviewed() -> bool:  # the agent flushes its history every second
            tasks = httpx.get(base + "/api/agents/reviewer/tasks", timeout=10).json()["tasks"]
            return bool(tasks)

        wait_for_sync(reviewed, message="the reviewer's task history")
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        out += rest.decode(errors="replace")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()
    assert demo.returncode == 0, out
    assert "demo complete: every step passed" in out


def test_demo_without_the_examples_says_where_they_are(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--examples", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("agentbus: error [configuration]: the demo runs the agents")


def test_examples_use_only_the_sdk() -> None:
    """Example agents are what users copy: they import agent_sdk, never the coordinator."""
    for path in (ROOT / "examples").glob("*.py"):
        text = path.read_text()
        assert "import coordinator" not in text
        assert "from coordinator" not in text
