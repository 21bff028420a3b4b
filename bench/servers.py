"""Throwaway servers for one benchmark run: our own redis-server and nats-server.

Never the Redis on 6379: ``RedisServer`` binds a free port on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from types import TracebackType

from agent_sdk.embedded import RedisServer, free_port

__all__ = ["NatsServer", "RedisServer", "nats_available"]


def nats_available() -> bool:
    """A NATS peer needs both the server binary and the nats-py client."""
    if shutil.which("nats-server") is None:
        return False
    try:
        import nats  # noqa: F401
    except ImportError:
        return False
    return True


class NatsServer:
    """``nats-server -a 127.0.0.1 -p <free port>``, ready when ``start()`` returns."""

    def __init__(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server is not on PATH")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nats-server did not start on port {self.port}") from None
                time.sleep(0.01)  # polling a child process we started

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
