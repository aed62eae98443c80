"""Processes the tests start: free loopback ports, stopping by PID, and a context manager."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago.

    All sockets are held open until every port is chosen, so the same port is
    never handed out twice within one call.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """Return one free loopback port."""
    return free_ports(1)[0]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
    """Stop ``proc`` (and only it): ``sig`` (SIGTERM), wait, then SIGKILL. Returns its exit code.

    SIGTERM first so the collector flushes its queue to disk and Prometheus
    closes its TSDB cleanly; SIGKILL only if that hangs. ``sig`` is for servers
    whose clean stop is another signal (PostgreSQL's fast shutdown is SIGINT:
    its SIGTERM waits for every client to disconnect).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def tail(path: Path, limit: int = 4000) -> str:
    """Last ``limit`` characters of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class Service:
    """``with`` support for a server with ``start``, ``wait_ready`` and ``stop``."""

    def start(self) -> object:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def _wait_until(self, name: str, ready: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
        """Polls ``ready`` until it holds; fails at once if the process (``self.proc``) died, or at ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            proc = getattr(self, "proc", None)
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RuntimeError(f"{name} exited ({code}) before ready:\n{self.logs()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout}s:\n{self.logs()}")
            time.sleep(interval)

    def logs(self) -> str:
        return ""

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
