"""A real ``mlflow server`` on 127.0.0.1 for tests: started and stopped by its own PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from .process import free_port

__all__ = ["MlflowServer", "free_port"]


class MlflowServer:
    """One ``mlflow server`` process with a sqlite store in ``root``; restartable on the same port.

    ``backend_store_uri`` puts the store elsewhere (e.g. a :class:`~support.postgres.Postgres`
    database's ``uri``); ``workers`` is MLflow's ``--workers``: one by default, several where a
    test or benchmark needs requests served in parallel (not with sqlite, which takes one writer).
    """

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        basic_auth_password: str | None = None,
        backend_store_uri: str | None = None,
        workers: int = 1,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.basic_auth_password = basic_auth_password  # MLflow's basic-auth app, user "admin"
        self.backend_store_uri = backend_store_uri
        self.workers = workers

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_uri(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"

    def start(self, wait: bool = True) -> MlflowServer:
        # One worker (by default) and no job runner: 2 processes instead of ~15, ready in a few seconds.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        auth: list[str] = []
        if self.basic_auth_password is not None:
            config = self.root / "basic_auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
                f"admin_username = admin\nadmin_password = {self.basic_auth_password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = f"test-{self.port}"
            auth = ["--app-name", "basic-auth"]
        mlflow = Path(sys.executable).with_name("mlflow")
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                self.store_uri,
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                *auth,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"mlflow server not ready after {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stops the server by its PID (SIGTERM lets it stop its own workers)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The workers leave with their parent; wait until the port is free again.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)

    def restart(self) -> None:
        self.stop()
        self.start()
