"""How the process ends, for the terminal status of its MLflow runs.

- ``FINISHED``: the provider shuts down normally (end of script, ``sys.exit``, ``provider.shutdown()``).
- ``FAILED``: an uncaught exception reached ``sys.excepthook`` (chained, the previous hook still
  prints the traceback); ``KILLED`` when it was ``KeyboardInterrupt`` (Ctrl-C).
- ``KILLED``: SIGTERM. The handler only records the fact and raises ``SystemExit(143)`` in the main
  thread: the interrupted code may hold any lock (the SDK's, the exporter's, logging's), so
  flushing from inside the handler could deadlock. Unwinding runs ``finally`` blocks and then
  ``atexit``, where the provider's shutdown flushes the exporter as on a normal exit. A second
  SIGTERM during that shutdown is ignored so it cannot cut the flush short (the shutdown is
  bounded by the exporter's ``export_timeout``; SIGKILL still ends everything); a first SIGTERM
  that arrives during a flush raises ``SystemExit`` when the flush is over. The handler is
  installed only from the main thread and only over ``SIG_DFL``: a handler the application or a
  framework installed (Lightning, torchrun, ...) is never replaced. A forked child (a DataLoader
  worker) inherits the handler; there it restores ``SIG_DFL`` and lets the signal do what it did.

Forked children: whatever holds the parent's points or its helper's pipe registers with
:func:`reset_in_forked_child` and is reset in the child (one ``os.register_at_fork`` for all, held
weakly, so a finished experiment's objects are freed as soon as nothing else holds them).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Protocol

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"

_outcome: str | None = None
_exiting = False
_deferred = False
_sigterms = 0
_interrupted = False
_hooked = False
_signalled = False
_pid = os.getpid()
_previous_excepthook = sys.excepthook


class ForkAware(Protocol):
    """What :func:`reset_in_forked_child` takes: an object that can reset itself in a forked child."""

    def _after_fork(self) -> None: ...


_forked_resets: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_in_forked_child(owner: ForkAware) -> None:
    """Calls ``owner._after_fork()`` in every child this process forks, as long as ``owner`` lives."""
    _forked_resets.add(owner)


def _reset_forked() -> None:
    for owner in list(_forked_resets):
        owner._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_forked)


def outcome() -> str:
    """The status the process's runs should end with, as far as is known now."""
    return _outcome or FINISHED


def killed() -> bool:
    """Whether the process is ending because it was told to stop (SIGTERM, or an uncaught Ctrl-C).

    Then shutdown hands the points over and lets the process go, rather than waiting for delivery.
    """
    return _sigterms > 0 or _interrupted


@contextmanager
def ending_as(status: str) -> Iterator[None]:
    """Runs ended inside this block end with ``status``, unless the process already has an outcome.

    For a caller that knows better than the process, e.g. a ``with`` block that saw an exception
    the process survives: that run failed, the process did not.
    """
    global _outcome
    previous = _outcome
    _outcome = previous or status
    try:
        yield
    finally:
        _outcome = previous


@contextmanager
def flushing() -> Iterator[None]:
    """Marks a flush that SIGTERM must not cut short.

    A SIGTERM arriving meanwhile is recorded; if it is the first one (the process was not already
    exiting because of SIGTERM), ``SystemExit(143)`` is raised once the flush is over.
    """
    global _exiting, _deferred
    outer = _exiting
    _exiting = True
    try:
        yield
    finally:
        _exiting = outer
        if not outer and _deferred and threading.current_thread() is threading.main_thread():
            _deferred = False
            raise SystemExit(128 + signal.SIGTERM)


def _excepthook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    global _outcome, _interrupted
    _interrupted = issubclass(kind, KeyboardInterrupt)
    if _outcome is None:
        _outcome = KILLED if issubclass(kind, KeyboardInterrupt) else FAILED
    _previous_excepthook(kind, value, traceback)


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    global _outcome, _deferred, _sigterms
    if os.getpid() != _pid:  # a forked child (DataLoader worker): SIGTERM means what it always meant
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _outcome = KILLED
    _sigterms += 1
    if _exiting:
        _deferred = _sigterms == 1
        return
    raise SystemExit(128 + signum)


def install() -> None:
    """Chains ``sys.excepthook`` (once) and handles SIGTERM (once, from the main thread, over ``SIG_DFL``)."""
    global _hooked, _signalled, _previous_excepthook, _pid
    if not _hooked:
        _hooked = True
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
    if _signalled or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return
    _signalled = True
    _pid = os.getpid()
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        pass
