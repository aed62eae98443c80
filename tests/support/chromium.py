"""Debian's headless Chromium for tests that look at a web UI as a user sees it, after its JavaScript ran.

Driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages ended by
a NUL byte on file descriptors 3 and 4), so nothing but the browser ``scripts/install-chromium.sh``
installs is needed: no websocket client, no browser download. Started with a fresh profile and
stopped by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .process import Service, stop_process, tail

__all__ = ["BINARY", "Chromium", "missing"]

BINARY = "/usr/bin/chromium"

# Without the background-networking flags Chromium keeps dialling out, which a closed network
# refuses; --no-sandbox because the tests may run as root.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-pipe",
)


def missing() -> str | None:
    """Why Chromium cannot run here, or ``None`` when it can."""
    if not os.access(BINARY, os.X_OK):
        return f"{BINARY} is not installed (scripts/install-chromium.sh installs Debian's chromium)"
    return None


class Chromium(Service):
    """One headless browser with one page, ``width`` x ``height`` CSS pixels."""

    def __init__(self, root: Path, width: int = 1600, height: int = 1200) -> None:
        self.root = Path(root)
        self.width, self.height = width, height
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._session = ""

    # Service -----------------------------------------------------------------------------------

    def start(self) -> Chromium:
        profile = self.root / "profile"
        shutil.rmtree(profile, ignore_errors=True)
        profile.mkdir(parents=True)
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        log = open(self.root / "chromium.log", "ab")  # noqa: SIM115 - owned by the process
        # The browser reads commands on fd 3 and writes replies on fd 4; bash puts the pipes there
        # (dash takes single-digit descriptors only).
        self.proc = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$@" 3<&{to_browser} 4>&{from_browser}',
                "chromium",
                BINARY,
                *_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(to_browser, from_browser),
            start_new_session=True,
        )
        log.close()
        os.close(to_browser)
        os.close(from_browser)
        threading.Thread(target=self._read, name="chromium-replies", daemon=True).start()
        return self

    def wait_ready(self) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(RuntimeError, TimeoutError, OSError):
                self.call("Browser.close", timeout=10)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_process(proc)
        os.close(self._commands)

    # The protocol ------------------------------------------------------------------------------

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Sends one browser-level command and returns its result."""
        return self._send(method, params, None, timeout)

    def page(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Sends one command to the page."""
        return self._send(method, params, self._session, timeout)

    def _send(self, method: str, params: dict[str, Any], session: str | None, timeout: float) -> dict[str, Any]:
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._answers:
                remaining = deadline - time.monotonic()
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited: {tail(self.root / 'chromium.log')}")
                if remaining <= 0:
                    raise TimeoutError(f"chromium did not answer {method} within {timeout} s")
                self._cond.wait(min(remaining, 0.5))
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._replies, "rb", buffering=0) as replies:
            while chunk := replies.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:  # events (no id) are not needed
                        with self._cond:
                            self._answers[message["id"]] = message
                            self._cond.notify_all()

    # What a test does with a page --------------------------------------------------------------

    def open(self, url: str) -> None:
        """Loads ``url`` in the page (a new document, or a new route of a single-page app)."""
        self.page("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page (promises awaited)."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90, what: str = "") -> Any:
        """Evaluates ``expression`` until it is truthy (the UI renders asynchronously); returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(f"page never showed {what or expression!r}; it shows:\n{text[:3000]}")
            time.sleep(0.25)

    def screenshot(self, path: Path) -> Path:
        """Saves what the page shows as a PNG."""
        data = self.page("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
