"""Short names for a process's writers: what tells their series apart, the same in every run.

TensorBoard names a writer's run after its log dir relative to ``--logdir``. A training script's
log dir usually holds two kinds of component: those naming the *writer* (``train``,
``validation``, ``resnet``) and those naming the *run* (``Dec01_13-28-41_host``,
``version_0``, ``CartPole-v1__ppo__1__1733059721``, ``2026-12-01``, ``seed_3``, the host
name). Metric names built from the second kind differ between two runs of one script, so they
cannot be compared side by side; names built from the first kind can.

The rule (``tensorboard.writer``, one value per log dir in a process):

1. A log dir's name is its last component, or ``""`` (no name) when that component names the
   run: it holds a number standing on its own (``_3``, ``-01``, ``.5``: dates, times, unix
   times, seeds, versions, learning rates; ``resnet50`` and ``v1`` do not count), a number
   glued to ``seed``, ``run``, ``trial`` or ``version``, a hex id of eight or more characters,
   or the host name.
2. The first log dir to claim a name in the process keeps it. A later log dir whose name is
   taken gets the nearest parent components that do not name the run prepended, one at a time,
   until the name is free (``runs/resnet/train`` is ``train``, then ``runs/vit/train`` is
   ``vit/train``; a second ``lightning_logs/version_1`` is ``lightning_logs``); when its
   path runs out, ``-2``, ``-3`` ... is appended (``writer-2`` for a name that was ``""``).

So ``runs/train`` and ``runs/validation`` are ``train`` and ``validation``; the default
``SummaryWriter()``, Lightning's ``lightning_logs/version_N`` and CleanRL's
``runs/<env>__<exp>__<seed>__<time>`` are ``""``. Writers claim names in the order their
first points are collected, which is the order the script first logs through them.
"""

from __future__ import annotations

import posixpath
import re
import socket
import threading

# A number not glued to a letter on either side, a counter word's number, or a long hex id.
_RUN_SPECIFIC = re.compile(
    r"(?<![A-Za-z0-9])\d+(?![A-Za-z])|(?:seed|run|trial|version)\d+|(?<![A-Za-z0-9])(?=[0-9a-f]*\d)[0-9a-f]{8,}(?![A-Za-z0-9])",
    re.IGNORECASE,
)


def components(log_dir: str) -> list[str]:
    """The path components of a log dir, normalised (``\\`` as ``/``, no ``.``, ``..`` resolved)."""
    path = posixpath.normpath(log_dir.replace("\\", "/"))
    return [part for part in path.split("/") if part and part not in (".", "..")]


def names_the_run(component: str, host: str | None = None) -> bool:
    """Whether a log dir component identifies one run rather than one writer (see the rule)."""
    if _RUN_SPECIFIC.search(component):
        return True
    if host:
        lowered = component.lower()
        return any(len(name) >= 3 and name in lowered for name in {host.lower(), host.split(".")[0].lower()})
    return False


class WriterNames:
    """Gives each log dir of a process its ``tensorboard.writer`` name (see the module docstring)."""

    def __init__(self, host: str | None = None) -> None:
        self._host = host
        self._names: dict[str, str] = {}  # log dir as given -> name
        self._paths: dict[str, str] = {}  # normalised log dir -> name: ./runs/a and runs/a are one writer
        self._taken: set[str] = set()
        self._lock = threading.Lock()

    def name(self, log_dir: str) -> str:
        found = self._names.get(log_dir)
        if found is not None:
            return found
        with self._lock:
            found = self._names.get(log_dir)
            if found is None:
                parts = components(log_dir)
                path = "/".join(parts)
                found = self._paths.get(path)
                if found is None:
                    found = self._paths[path] = self._claim(parts)
                self._names[log_dir] = found
            return found

    def _claim(self, parts: list[str]) -> str:
        if self._host is None:
            self._host = socket.gethostname()
        last = parts[-1] if parts else ""
        name = "" if not last or names_the_run(last, self._host) else last
        if name in self._taken:
            for parent in reversed(parts[:-1]):
                if names_the_run(parent, self._host):
                    continue
                name = f"{parent}/{name}" if name else parent
                if name not in self._taken:
                    break
            base = name or "writer"
            number = 2
            while name in self._taken:
                name = f"{base}-{number}"
                number += 1
        self._taken.add(name)
        return name
