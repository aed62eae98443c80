"""Run a real PostgreSQL server from tests: a throw-away cluster on a free loopback port.

Teams run ``mlflow server`` on PostgreSQL rather than sqlite, and MLflow's SQL differs per dialect
(duplicate checks, locking, many writers at once), so the route is tested against the server users
run: Debian's package (``scripts/install-postgresql.sh``), a cluster made by ``initdb`` in a new
temporary directory, listening on 127.0.0.1 only, its unix socket inside that directory, stopped by
the PID this module started and then deleted.

PostgreSQL refuses to run as root. As root the cluster belongs to the ``postgres`` user the package
creates, and ``initdb`` and ``postgres`` are executed as that user with ``setpriv`` (which execs,
so the PID started is the server's own, not a wrapper's).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .collector import REPO_ROOT
from .process import Service, free_port, stop_process, tail

__all__ = ["Postgres", "postgres_bin_dir"]

INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-postgresql.sh"
SERVER_USER = "postgres"  # created by Debian's package; owns the cluster when tests run as root
SUPERUSER = "tracelet"  # the cluster's superuser, MLflow's database user


def postgres_bin_dir(install: bool = True) -> Path:
    """``/usr/lib/postgresql/<version>/bin`` (newest version); runs scripts/install-postgresql.sh if none.

    Debian keeps ``initdb`` and ``postgres`` out of PATH (only wrappers are there), so the
    versioned directory is looked up. The install script is idempotent.
    """
    found = sorted(
        (path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "postgres").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    if not install:
        raise FileNotFoundError("PostgreSQL not installed (scripts/install-postgresql.sh installs it)")
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"install-postgresql.sh failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class Postgres(Service):
    """One PostgreSQL cluster with one database, password login over TCP on 127.0.0.1.

    The cluster lives in a new directory under the system temp dir, not in pytest's ``tmp_path``:
    as root that one is private to root (mode 0700) and the ``postgres`` user could not reach it.

    Args:
        database: the database created once the server is up (MLflow's store).
        settings: extra ``-c name=value`` server settings.
        bin_dir: where ``initdb``/``postgres`` are; default :func:`postgres_bin_dir`.
    """

    def __init__(
        self,
        database: str = "mlflow",
        *,
        settings: Mapping[str, str] | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else postgres_bin_dir()
        self.database = database
        self.settings = dict(settings or {})
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # Where things are, and how clients connect.
    @property
    def data_dir(self) -> Path:
        return self._root / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root / "socket"

    @property
    def log_path(self) -> Path:
        return self._root / "postgres.log"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("the cluster is not created yet (start() creates it)")
        return self.root

    @property
    def uri(self) -> str:
        """SQLAlchemy URI for ``mlflow server --backend-store-uri``.

        ``+psycopg2`` because SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3.
        """
        return f"postgresql+psycopg2://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """libpq connection string (``psycopg2.connect(dsn)``), for reading the store directly."""
        return f"host={self.host} port={self.port} user={SUPERUSER} password={self.password} dbname={self.database}"

    @property
    def pid(self) -> int | None:
        """PID of the postmaster (the server's own process), if running."""
        return self.proc.pid if self.proc is not None else None

    # Life cycle.
    def _as_server_user(self) -> list[str]:
        """Command prefix that runs a program as the cluster's owner (nothing unless root)."""
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", "--"]

    def _env(self) -> dict[str, str]:
        """The calling shell's PG* variables (PGHOST, PGPORT, ...) must not redirect anything."""
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}

    def _create_cluster(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tracelet-postgres-"))
        self.socket_dir.mkdir()
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SERVER_USER)
            for path in (self.root, self.socket_dir, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        result = subprocess.run(
            [
                *self._as_server_user(),
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(password_file),
                "--auth-local=trust",  # the socket is inside the private cluster directory
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # a throw-away cluster: no need to wait for the disk here
                "--no-instructions",
            ],
            cwd=self.root,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        password_file.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")

    def start(self) -> Postgres:
        """Create the cluster and start the server (without waiting); returns self."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("postgres already running")
        if self.root is None:
            self._create_cluster()
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "logging_collector": "off",
            **self.settings,
        }
        args: Sequence[str] = [
            *self._as_server_user(),
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            *(item for name, value in settings.items() for item in ("-c", f"{name}={value}")),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=self._root, env=self._env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server accepts connections, then create the database (once)."""

        def ready() -> bool:
            answer = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                env=self._env(),
                check=False,
                timeout=10,
            )
            return answer.returncode == 0

        self._wait_until("postgres", ready, timeout, interval=0.2)
        self.psql(
            f"SELECT 'CREATE DATABASE {self.database}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{self.database}')\\gexec",
            database="postgres",
        )

    def psql(self, sql: str, database: str | None = None) -> str:
        """Runs ``sql`` with psql over the unix socket (trusted) and returns its unaligned output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database or self.database,
            ],
            input=sql,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr[-3000:]}")
        return result.stdout

    def stop(self, timeout: float = 30.0) -> int | None:
        """Fast shutdown (SIGINT: clients are disconnected) of this server's PID; deletes the cluster."""
        code = None
        if self.proc is not None:
            code = stop_process(self.proc, timeout, sig=signal.SIGINT)
        if self.root is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)
            self.root = None
        return code

    def logs(self) -> str:
        """Tail of the server's log."""
        return tail(self.log_path) if self.root is not None else ""
