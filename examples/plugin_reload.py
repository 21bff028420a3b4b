"""A live reload and a rollback, end to end: ``python examples/plugin_reload.py``.

It starts a private bus (a throwaway redis-server and a coordinator: ``agent_sdk.testing``),
writes a plugin ``greeter`` 1.0.0 into a temporary directory and hosts it with ``agentbus run
--plugins DIR`` (a child process), with a client asking it ``greet`` 50 times a second
throughout. Then:

1. **live reload**: the plugin's files are edited to 1.1.0; the new version serves, the old one
   drains, no request fails;
2. **rollback**: a 1.2.0 with a syntax error is saved; it is refused (``plugin_failed`` with the
   reason), and 1.1.0 keeps answering every request.

It prints what happens and exits 0 when every request was answered (1 otherwise).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent_sdk import Bus
from agent_sdk.testing import agentbus_for_tests

CODE = """
from agent_sdk.plugin import handler


@handler("greet")
async def greet(name):
    return "{greeting}, " + name + " (from {version})"


@handler("healthcheck")
async def healthcheck(payload):
    return "ok"
"""


def save(directory: Path, version: str, greeting: str, *, broken: bool = False) -> None:
    """What an editor does: the module, then the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent(CODE.format(greeting=greeting, version=version))
    if broken:
        code += "\ndef oops(:\n"  # a syntax error
    (directory / "greeter.py").write_text(code)
    (directory / "manifest.yaml").write_text(
        f"name: greeter\nversion: {version}\nrole: greeter\nentry_point: greeter\n"
        "description: Greets people\n"
    )


class Client:
    """Asks ``greet`` 50 times a second; counts the answers by version, and the failures."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latest = ""
        self.seen: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    async def _ask(self, i: int) -> None:
        try:
            reply = await self.bus.request(role="greeter", type="greet", payload=f"user{i}")
        except Exception as e:
            self.failures.append(f"{type(e).__name__}: {e}")
            return
        self.latest = reply.rsplit("from ", 1)[1].rstrip(")")
        self.answers[self.latest] += 1
        self.seen.setdefault(self.latest, asyncio.Event()).set()

    async def _run(self) -> None:
        asks: set[asyncio.Task[None]] = set()
        i = 0
        try:
            while True:
                i += 1
                task = asyncio.create_task(self._ask(i))
                asks.add(task)
                task.add_done_callback(asks.discard)
                await asyncio.sleep(0.02)  # the pace of the load: 50 requests a second
        finally:
            await asyncio.gather(*asks)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def until_version(self, version: str, timeout: float = 30.0) -> float:
        """Seconds until an answer comes from ``version``."""
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            await self.seen.setdefault(version, asyncio.Event()).wait()
        return time.monotonic() - started


async def gone(bus: Bus, old: set[str], since: str, timeout: float = 30.0) -> None:
    """Until the instances ``old`` have left the registry, read off the change feed from the
    revision ``since`` (taken before they were told to go)."""
    left = set(old)
    async with asyncio.timeout(timeout):
        async for event in bus.watch(since, roles=["greeter"],
                                     types=["agent_deregistered", "agent_expired"]):  # fmt: skip
            left.discard(event.instance_id or "")
            if not left:
                return


async def next_failure(bus: Bus, feed: str, after: Any) -> str:
    """The reason of the next ``plugin_failed`` event on the change feed after ``after``."""
    async with asyncio.timeout(30):
        while True:
            batches: Any = await bus.client.xread({feed: after}, block=1000)
            for _, entries in batches:
                for entry_id, fields in entries:
                    after = entry_id
                    if fields[b"type"] == b"plugin_failed":
                        return str(fields[b"reason"].decode())


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="example-plugins-") as tmp:
        return await show(Path(tmp))


async def show(root: Path) -> int:
    plugin = root / "greeter"
    save(plugin, "1.0.0", "hello")
    async with agentbus_for_tests() as private:
        settings = private.settings()
        env = {**os.environ, "AGENTBUS_REDIS_URL": settings.url,
               "AGENTBUS_NAMESPACE": settings.namespace}  # fmt: skip
        # the `agentbus` command of this Python (`python -m coordinator.cli` is the same)
        agentbus = shutil.which("agentbus", path=os.path.dirname(sys.executable)) or "agentbus"
        host = await asyncio.create_subprocess_exec(
            agentbus, "run", "--plugins", str(root), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert host.stderr is not None
        running: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        logs = asyncio.create_task(read_log(host.stderr, running))
        try:
            async with Bus(settings) as bus:
                print(f"hosting {plugin}: agentbus run --plugins {root}")
                await asyncio.wait_for(running, 60)  # its plugins loaded, their directory watched
                return await walk_through(bus, settings, plugin)
        finally:
            host.terminate()  # SIGTERM: it drains and every agent leaves
            await host.wait()
            logs.cancel()


async def read_log(stderr: asyncio.StreamReader, running: asyncio.Future[None]) -> None:
    """Read ``agentbus run``'s log (so that it never blocks on a full pipe); ``running`` is set
    when it says it is running (its plugins loaded, their directory watched; the plugins' own
    worker processes log "is running" earlier, under their own names)."""
    async for line in stderr:
        if b"agentbus.run: plugins is running" in line and not running.done():
            running.set_result(None)


async def walk_through(bus: Bus, settings: Any, plugin: Path) -> int:
    """The reload and the rollback under load; the exit status."""
    print("greeter 1.0.0:", await bus.request(role="greeter", type="greet", payload="ada"))
    client = Client(bus)
    client.start()

    print("\n== live reload: saving greeter 1.1.0")
    old = {r.instance_id for r in await bus.discover(role="greeter")}
    since: Any = (await bus.client.xinfo_stream(settings.keys.events()))["last-generated-id"]
    save(plugin, "1.1.0", "hi")
    took = await client.until_version("1.1.0")
    print(f"1.1.0 answers {took:.2f} s after the save (then 1.0.0 drains and leaves)")
    await gone(bus, old, since.decode())  # until then a request may still reach 1.0.0
    print("greeter 1.1.0:", await bus.request(role="greeter", type="greet", payload="ada"))

    print("\n== rollback: saving a broken greeter 1.2.0")
    feed = settings.keys.events()  # the change feed, as `agentbus watch` reads it
    last: Any = (await bus.client.xinfo_stream(feed))["last-generated-id"]
    save(plugin, "1.2.0", "hey", broken=True)
    reason = await next_failure(bus, feed, last)
    print(f"plugin_failed: {reason}")
    version: Any = await bus.client.hget(settings.keys.plugin("greeter"), "version")
    print(f"still serving: greeter {version.decode()}")
    await asyncio.sleep(1.0)  # a second more of load on the version kept
    await client.stop()

    answered = sum(client.answers.values())
    print(f"\n{answered} requests answered during all this "
          f"({', '.join(f'{n} by {v}' for v, n in sorted(client.answers.items()))}), "
          f"{len(client.failures)} failed")  # fmt: skip
    for failed in client.failures[:5]:
        print("  failed:", failed)
    return 0 if not client.failures and "1.2.0" not in client.answers else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
