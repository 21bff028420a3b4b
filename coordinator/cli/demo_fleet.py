"""The example agents of ``agentbus demo`` as subprocesses, with their output in the transcript.

Each agent is ``agentbus run <script>:build --arg name=<name>`` in the examples directory (as a
user would run it); every line it prints is shown indented under its name and kept, so the demo
can wait for a line (``is running``, ``summarizing ...``) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from schemas.errors import AgentbusError, ConfigurationError

__all__ = ["AgentProcess", "Fleet", "find_examples"]

_STYLES = ("cyan", "magenta", "blue", "yellow", "green")


def find_examples(explicit: Path | None = None) -> Path:
    """The ``examples/`` directory of the source tree this package runs from."""
    path = explicit or Path(__file__).resolve().parents[2] / "examples"
    if (path / "summarizer.py").is_file():
        return path
    raise ConfigurationError(
        f"the demo runs the agents in examples/ of a source checkout, not found at {path}: "
        "clone the repository and `pip install -e .` there (or pass --examples DIR)"
    )


class AgentProcess:
    """One example agent process and the lines it printed."""

    def __init__(self, name: str, script: str, style: str) -> None:
        self.name = name
        self.script = script
        self.style = style
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Fleet:
    """Starts, watches and stops the example agents."""

    def __init__(self, examples: Path, env: dict[str, str], show: Callable[[str], None]) -> None:
        self.examples = examples
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.show = show
        self.agents: dict[str, AgentProcess] = {}
        self._changed = asyncio.Condition()

    async def start(self, name: str, script: str) -> AgentProcess:
        old = self.agents.get(name)
        style = old.style if old else _STYLES[len(self.agents) % len(_STYLES)]
        agent = AgentProcess(name, script, style)
        self.agents[name] = agent
        agent.proc = await asyncio.create_subprocess_exec(  # as a user runs an agent
            sys.executable, "-m", "coordinator.cli", "run", f"{Path(script).stem}:build",
            "--arg", f"name={name}", cwd=self.examples, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        agent.reader = asyncio.create_task(self._relay(agent))
        return agent

    async def _relay(self, agent: AgentProcess) -> None:
        assert agent.proc is not None
        assert agent.proc.stdout is not None
        async for raw in agent.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            prefix = f"{agent.name}: "
            text = line.removeprefix(prefix)
            self.show(f"    [{agent.style}]{agent.name:>12}[/] │ {_escape(text)}")
            async with self._changed:
                agent.lines.append(text)
                self._changed.notify_all()
        await agent.proc.wait()
        async with self._changed:
            self._changed.notify_all()

    def mark(self) -> dict[str, int]:
        """How many lines each agent printed so far (``wait_line(since=...)`` looks after it)."""
        return {n: len(a.lines) for n, a in self.agents.items()}

    async def wait_line(
        self,
        pattern: str,
        names: list[str],
        timeout: float = 30.0,
        since: dict[str, int] | None = None,
    ) -> tuple[AgentProcess, re.Match[str]]:
        """The first agent among ``names`` whose output after ``since`` matches ``pattern``."""
        regex = re.compile(pattern)
        start = {n: (since or {}).get(n, 0) for n in names}

        def found() -> tuple[AgentProcess, re.Match[str]] | None:
            for n in names:
                agent = self.agents[n]
                for line in agent.lines[start[n] :]:
                    if m := regex.search(line):
                        return agent, m
            return None

        async with asyncio.timeout(timeout), self._changed:
            while (hit := found()) is None:
                dead = [n for n in names if not self.agents[n].alive]
                if dead and len(dead) == len(names):
                    raise AgentbusError(f"{', '.join(dead)} exited before printing {pattern!r}")
                await self._changed.wait()
        return hit

    async def wait_all(
        self,
        pattern: str,
        names: list[str],
        timeout: float = 30.0,
        since: dict[str, int] | None = None,
    ) -> None:
        """Wait until every agent in ``names`` printed a line matching ``pattern``."""
        await asyncio.gather(*(self.wait_line(pattern, [n], timeout, since) for n in names))

    def kill(self, name: str) -> None:
        """SIGKILL: no leave, no ack: the bus must notice on its own."""
        agent = self.agents[name]
        if agent.proc is not None and agent.alive:
            agent.proc.send_signal(signal.SIGKILL)

    async def stop_all(self, timeout: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every agent (they leave cleanly), wait, SIGKILL stragglers."""
        for agent in self.agents.values():
            if agent.proc is not None and agent.alive:
                with contextlib.suppress(ProcessLookupError):
                    agent.proc.terminate()
        codes: dict[str, int | None] = {}
        for agent in self.agents.values():
            if agent.proc is None:
                continue
            try:
                async with asyncio.timeout(timeout):
                    await agent.proc.wait()
            except TimeoutError:
                agent.proc.kill()
                await agent.proc.wait()
            if agent.reader is not None:
                with contextlib.suppress(Exception):
                    await agent.reader
            codes[agent.name] = agent.proc.returncode
        return codes


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
