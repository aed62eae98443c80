"""``start_logging`` / ``stop_logging``: one active experiment per process.

This module owns the record of which experiment is active: an experiment it starts tells it when
it stops (however it stops: ``stop_logging``, ``exp.stop()``, a ``with`` block, exit) through the
callback it is given, so :mod:`tracelet.core.experiment` never imports this module.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from tracelet.core.experiment import Experiment
from tracelet.settings import TraceletSettings, resolve

_logger = logging.getLogger(__name__)
_lock = threading.RLock()
_active: Experiment | None = None


def start_logging(
    exp_name: str | None = None,
    project: str | None = None,
    backend: str | list[str] | None = None,
    config: Mapping[str, Any] | None = None,
    settings: TraceletSettings | None = None,
    **overrides: Any,
) -> Experiment:
    """Starts an experiment: TensorBoard calls and ``exp.log_*`` go to the chosen backends until ``stop_logging``.

    ``project`` is the MLflow experiment, ``exp_name`` the run name. Settings come from, highest
    first: ``exp_name``/``project``/``backend``, keyword ``overrides`` (any
    :class:`~tracelet.settings.TraceletSettings` field), ``config`` (a dict of them), ``settings``,
    ``TRACELET_*`` environment variables. A running experiment is stopped first, with a warning.
    """
    global _active
    if settings is not None and not isinstance(settings, TraceletSettings):
        raise TypeError(f"start_logging(settings=...) takes a TraceletSettings, got {type(settings).__name__}")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"start_logging(config=...) takes a dict of settings, got {type(config).__name__}")
    explicit = {key: value for key, value in (("exp_name", exp_name), ("project", project), ("backend", backend))}
    resolved = resolve(settings, config, overrides, {k: v for k, v in explicit.items() if v is not None})
    with _lock:
        if _active is not None:
            _logger.warning(
                "tracelet: start_logging() while experiment %r is running; stopping it first (its points are "
                "delivered and its run ends)",
                _active.name,
            )
            stop_logging()
        experiment = Experiment(resolved, on_stop=_forget).start()  # stops itself at exit if nothing else does
        _active = experiment
    return experiment


def stop_logging() -> None:
    """Delivers what the active experiment captured and ends its run; does nothing when none is active."""
    global _active
    with _lock:
        experiment, _active = _active, None
        if experiment is not None:
            experiment.stop()


def get_active_experiment() -> Experiment | None:
    """The experiment ``start_logging`` started and nothing has stopped yet."""
    return _active


def _forget(experiment: Experiment) -> None:
    """An experiment stopped: it is no longer the active one (if it was)."""
    global _active
    with _lock:
        if _active is experiment:
            _active = None
