"""Event loops and worker processes.

Benchmarks that measure "between two processes" run the other side in a separate process
forked from a clean fork server (``multiprocessing`` ``forkserver``, heavy imports preloaded).
A worker is an async function ``fn(ctx, *args)``: it calls ``ctx.ready()`` once it can serve,
may ``ctx.put()`` results, and is terminated by ``Worker.stop()`` when it serves forever.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Worker", "WorkerContext", "pick_loop", "run", "spawn"]

T = TypeVar("T")


def pick_loop(preference: str = "auto") -> str:
    """``uvloop`` when asked for or available (``auto``), else ``asyncio``."""
    if preference == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if preference == "uvloop":
            raise
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``coro`` to completion on a new event loop of the given kind, with the garbage
    collector set and paced as ``agentbus run`` does (``agent_sdk.runner.tune_gc`` and
    ``paced``: every process of the bench, agentbus's and the baselines' alike)."""
    from agent_sdk.runner import paced, tune_gc

    if tune_gc():
        coro = paced(coro)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class WorkerContext:
    """What a worker function gets: ``ready()`` to say it serves, ``put()`` to send results."""

    def __init__(self, ready: Any, results: Any) -> None:
        self._ready = ready
        self._results = results

    def ready(self) -> None:
        self._ready.set()

    def put(self, value: Any) -> None:
        self._results.put(value)


WorkerFn = Callable[..., Awaitable[Any]]


def _child(fn: WorkerFn, args: tuple[Any, ...], loop: str, ready: Any, results: Any) -> None:
    ctx = WorkerContext(ready, results)
    profile_dir = os.environ.get("BENCH_PROFILE")
    profiler: Any = None
    if profile_dir:  # BENCH_PROFILE=<dir>: a pyinstrument text report per worker process
        import pyinstrument

        profiler = pyinstrument.Profiler(async_mode="disabled")
        profiler.start()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(_call(fn, ctx, args), loop)
    except KeyboardInterrupt:
        pass
    except SystemExit:
        pass
    except BaseException as e:
        results.put({"error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        if profiler is not None:
            profiler.stop()
            path = (
                Path(profile_dir or ".") / f"{getattr(fn, '__name__', 'worker')}-{os.getpid()}.txt"
            )
            path.write_text(profiler.output_text(unicode=True, show_all=False))


async def _call(fn: WorkerFn, ctx: WorkerContext, args: tuple[Any, ...]) -> None:
    await fn(ctx, *args)


class Worker:
    """A spawned worker process and its result queue."""

    def __init__(self, process: Any, ready: Any, results: Any, name: str) -> None:
        self.process = process
        self._ready = ready
        self._results = results
        self.name = name

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self.process.is_alive() or time.monotonic() > deadline:
                self._raise_if_failed()
                self.stop()
                why = "exited" if not self.process.is_alive() else f"not ready after {timeout}s"
                raise RuntimeError(f"worker {self.name} {why}")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        try:
            value = self._results.get_nowait()
        except queue.Empty:
            return
        if isinstance(value, dict) and "error" in value:
            raise RuntimeError(f"worker {self.name} failed: {value['error']}")
        self._pending = value

    def result(self, timeout: float = 120.0) -> Any:
        pending = getattr(self, "_pending", None)
        if pending is not None:
            self._pending = None
            return pending
        try:
            value = self._results.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"worker {self.name} gave no result in {timeout}s") from None
        if isinstance(value, dict) and "error" in value:
            raise RuntimeError(f"worker {self.name} failed: {value['error']}")
        return value

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


#: Imported once by the fork server, so each worker starts in milliseconds, not ~0.5 s.
_PRELOAD = ["redis.asyncio", "pydantic", "orjson", "schemas", "agent_sdk.agent", "bench.raw",
            "bench.host_workers",
            "bench.messaging", "bench.fleet", "bench.failure"]  # fmt: skip


def context() -> Any:
    """Workers come from a fork server: a clean process started once (never a fork of the
    bench process with its event loop and sockets), with the heavy imports preloaded."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def spawn(fn: WorkerFn, *args: Any, loop: str, wait: bool = True) -> Worker:
    """Start ``fn(ctx, *args)`` in a new process; by default wait until it is ready."""
    ctx = context()
    ready = ctx.Event()
    results = ctx.Queue()
    name = getattr(fn, "__name__", "worker")
    process = ctx.Process(
        target=_child, args=(fn, args, loop, ready, results), name=name, daemon=True
    )
    process.start()
    worker = Worker(process, ready, results, name)
    if wait:
        worker.wait_ready()
    return worker
