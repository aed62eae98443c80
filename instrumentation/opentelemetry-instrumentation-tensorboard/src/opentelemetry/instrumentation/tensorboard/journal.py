"""Append-only export journals on local disk: one file per exporting process, claimed by ``flock``.

:class:`~opentelemetry.instrumentation.tensorboard.durable_exporter.DurableMetricExporter` writes
each export's payload here before it hands it to the real exporter, and writes an acknowledgement
once that exporter returned SUCCESS, so an export the destination did not accept survives the
process: the next process on the machine that exports to the same destination sends it.

Layout of a journal directory (``$OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR/<exporter>``, by default
``~/.cache/opentelemetry-tensorboard/otlp``): a process's files share a prefix, its start in
nanoseconds and its pid (``00000001764614400000000000-4242``), so names sort in start order:

- ``<prefix>.lock``: held with an exclusive ``flock`` by its process for as long as it lives (the
  kernel releases it when the process dies, SIGKILL included), or by the process that recovers
  the journal. It appears already locked (written under a temporary name, locked, renamed), so
  nobody can claim a live process's journal in between;
- ``<prefix>.journal``: records, each ``kind`` (1 byte), ``seq`` (8), ``length`` (4), CRC-32 of
  the payload (4), then the payload. The first is a header (``H``: JSON naming the format, pid,
  host and destination), then entries (``E``: one export's payload) and acknowledgements (``A``:
  entry ``seq`` was accepted, no payload). A record cut short or failing its CRC at the end is the
  write a dying process did not finish: it and anything after it are ignored. The file is removed
  as soon as every entry in it is acknowledged, so a journal on disk always holds something unsent.

Recovery (:func:`claim_dead`): a journal whose lock can be taken belongs to a process that is
gone; the claimer keeps the lock while it sends the entries, appends an acknowledgement for each
one accepted, and removes the journal and then the lock when all are. Two processes starting at
once never both hold one lock, so each entry is sent by one of them; a claimer that dies half-way
leaves its acknowledgements behind, and the next one sends only the rest.

Durability: each record is written with one ``write`` (in the kernel at once: a killed process
loses nothing written), and the file is ``fsync``'d at most once a second (``SYNC_SECONDS``), so a
power loss costs at most that much. Without ``fcntl`` (Windows) there are no locks, and journals
are neither written nor recovered.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

FORMAT = 1
JOURNAL = ".journal"
LOCK = ".lock"
SYNC_SECONDS = 1.0  # a journal is fsync'd at most this often

HEADER, ENTRY, ACK = b"H", b"E", b"A"
_RECORD = struct.Struct(">cQII")  # kind, seq, payload length, CRC-32 of the payload


def supported() -> bool:
    """Whether journals can be kept here (they need ``flock``)."""
    return fcntl is not None


@dataclass
class Contents:
    """What a journal file holds: its header, and the entries not acknowledged, in order."""

    header: dict[str, Any]
    pending: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, payload offset, payload length)
    acknowledged: int = 0
    torn: bool = False  # the last record was cut short (its process died writing it)
    end: int = 0  # where the last whole record ends


def record(kind: bytes, seq: int, payload: bytes = b"") -> bytes:
    return _RECORD.pack(kind, seq, len(payload), zlib.crc32(payload)) + payload


def read(path: Path) -> Contents:
    """Reads a journal (see the module docstring); raises ``ValueError`` if it is not one."""
    with open(path, "rb") as file:
        data = file.read()
    contents: Contents | None = None
    entries: dict[int, tuple[int, int]] = {}
    offset = 0
    torn = False
    while offset < len(data):
        if offset + _RECORD.size > len(data):
            torn = True
            break
        kind, seq, length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            torn = True
            break
        offset = start + length
        if contents is None:
            if kind != HEADER:
                raise ValueError(f"{path} is not an export journal")
            contents = Contents(header=json.loads(payload))
            if contents.header.get("opentelemetry_tensorboard_journal") != FORMAT:
                raise ValueError(f"{path} is not an export journal of format {FORMAT}")
        elif kind == ENTRY:
            entries[seq] = (start, length)
        elif kind == ACK:
            if entries.pop(seq, None) is not None:
                contents.acknowledged += 1
        else:
            torn = True  # garbage past the last whole record
            break
    if contents is None:
        contents = Contents(header={})  # created, header not yet (or never) whole
    contents.pending = [(seq, start, length) for seq, (start, length) in entries.items()]
    contents.torn = torn
    contents.end = offset
    return contents


class Journal:
    """One journal file and its lock: this process's (:meth:`create`) or a dead one's (:func:`claim_dead`).

    Not thread-safe: its owner serialises calls.
    """

    def __init__(self, directory: Path, prefix: str, lock_fd: int, header: Mapping[str, Any] | None) -> None:
        self.directory = directory
        self.prefix = prefix
        self._lock_fd: int | None = lock_fd
        self._header = dict(header) if header is not None else None
        self._fd: int | None = None
        self._size = 0
        self._synced = 0.0
        self.sequence = 0

    @property
    def path(self) -> Path:
        return self.directory / f"{self.prefix}{JOURNAL}"

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.prefix}{LOCK}"

    @classmethod
    def create(cls, directory: Path, destination: Mapping[str, Any]) -> Journal:
        """This process's journal in ``directory``, its lock held; the file itself appears with the first entry."""
        directory.mkdir(parents=True, exist_ok=True)
        prefix = f"{time.time_ns():020d}-{os.getpid()}"
        fd = _locked_lock(directory, prefix)
        header = {
            "opentelemetry_tensorboard_journal": FORMAT,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "created": time.time(),
            "destination": dict(destination),
        }
        return cls(directory, prefix, fd, header)

    def append(self, payload: bytes) -> tuple[int, int, int]:
        """Writes one entry; returns (seq, payload offset, payload length). Raises ``OSError``."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        self.sequence += 1
        data = record(ENTRY, self.sequence, payload)
        self._write(data)
        offset = self._size + _RECORD.size
        self._size += len(data)
        self._sync()
        return self.sequence, offset, len(payload)

    def payload(self, offset: int, length: int) -> bytes:
        """An entry's payload, read back from the file."""
        if self._fd is None:
            with open(self.path, "rb") as file:
                file.seek(offset)
                return file.read(length)
        return os.pread(self._fd, length, offset)

    def acknowledge(self, seq: int) -> None:
        """Entry ``seq`` was accepted. Raises ``OSError``."""
        if self._fd is None:
            self._open()
        self._write(record(ACK, seq))
        self._size += _RECORD.size

    def remove(self) -> None:
        """Everything in the file was accepted: it goes (the lock stays held); the next entry starts a new file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(self.path)
        self._size = 0

    def close(self) -> None:
        """Lets go of the journal: synced and kept if it still holds entries; the lock is released."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.fsync(fd)
            with suppress(OSError):
                os.close(fd)
        if not self.path.exists():
            with suppress(FileNotFoundError):
                os.unlink(self.lock_path)
        lock, self._lock_fd = self._lock_fd, None
        if lock is not None:
            with suppress(OSError):
                os.close(lock)

    def _open(self) -> None:
        # An existing file (a claimed journal) is appended to; a new one starts with its header.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        if size == 0 and self._header is not None:
            header = json.dumps(self._header).encode()
            _write_all(fd, record(HEADER, 0, header))
            os.fsync(fd)
            fsync_dir(self.directory)
            size = os.fstat(fd).st_size
        self._fd, self._size = fd, size

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            _write_all(self._fd, data)
        except OSError:
            # A record half written (a full disk) would hide every later one from a reader.
            with suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise

    def _sync(self) -> None:
        now = time.monotonic()
        if self._fd is not None and now - self._synced >= SYNC_SECONDS:
            os.fsync(self._fd)
            self._synced = now


def claim_dead(directory: Path) -> Iterator[tuple[Journal, Contents]]:
    """The journals in ``directory`` whose process is gone, oldest first, each claimed (its lock held).

    The caller sends each one's pending entries, acknowledges them, then :meth:`Journal.remove`
    and :meth:`Journal.close` it; or only closes it, leaving the rest for the next claimer.
    Journals that cannot be read stay where they are, unclaimed. Stale locks (a process that
    died before it wrote anything) are removed on the way.
    """
    if fcntl is None or not directory.is_dir():
        return
    names = sorted(os.listdir(directory))
    for name in names:
        if name.endswith(LOCK) and name[: -len(LOCK)] + JOURNAL not in names:
            _remove_stale_lock(directory, name[: -len(LOCK)])
    for name in names:
        if not name.endswith(JOURNAL):
            continue
        prefix = name[: -len(JOURNAL)]
        fd = _claim(directory, prefix)
        if fd is None:
            continue  # its process lives, or another process is recovering it
        journal = Journal(directory, prefix, fd, header=None)
        try:
            contents = read(journal.path)
        except FileNotFoundError:  # recovered meanwhile by the claimer before us
            journal.close()
            continue
        except (OSError, ValueError):
            journal.close()  # unreadable: kept, never sent
            continue
        if contents.torn:
            try:  # acknowledgements appended after a torn record would be invisible to the next reader
                os.truncate(journal.path, contents.end)
            except OSError:
                journal.close()
                continue
        yield journal, contents


def _claim(directory: Path, prefix: str) -> int | None:
    """The lock of ``prefix``, held; ``None`` while someone else holds it or the journal is gone."""
    path = directory / f"{prefix}{LOCK}"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        # A journal without a lock (removed by hand): lock it the way an owner does, unless someone is quicker.
        try:
            return _locked_lock(directory, prefix, replace=False)
        except FileExistsError:
            return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    # The lock file may have been removed (its journal finished) between open and flock.
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same or not (directory / f"{prefix}{JOURNAL}").exists():
        os.close(fd)
        return None
    return fd


def _locked_lock(directory: Path, prefix: str, replace: bool = True) -> int:
    """Creates ``<prefix>.lock`` already locked (locked under a temporary name, then renamed or linked)."""
    temporary = directory / f".{prefix}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, str(os.getpid()).encode())
        path = directory / f"{prefix}{LOCK}"
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # FileExistsError if another claimer made one first
            os.unlink(temporary)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        os.close(fd)
        raise
    return fd


def _remove_stale_lock(directory: Path, prefix: str) -> None:
    fd = _claim_lock_only(directory / f"{prefix}{LOCK}")
    if fd is None:
        return
    try:
        if not (directory / f"{prefix}{JOURNAL}").exists():
            with suppress(FileNotFoundError):
                os.unlink(directory / f"{prefix}{LOCK}")
    finally:
        os.close(fd)


def _claim_lock_only(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Makes files created or removed in ``directory`` survive a power loss (best effort)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
