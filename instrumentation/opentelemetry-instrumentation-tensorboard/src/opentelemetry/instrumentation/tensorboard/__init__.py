"""OpenTelemetry instrumentation for TensorBoard's ``SummaryWriter``.

Captures the scalars a training script writes through ``torch.utils.tensorboard.SummaryWriter``
or ``tensorboardX.SummaryWriter`` (and so through Lightning's ``TensorBoardLogger``), every step
of them, as OpenTelemetry metrics, with no change to the script.

Usage::

    from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor, views
    from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter, MeterProvider

    provider = MeterProvider(metric_readers=[...], views=views(),
                             exemplar_filter=AlwaysOnExemplarFilter())
    TensorBoardInstrumentor().instrument(meter_provider=provider)

or with no code at all: ``opentelemetry-instrument python train.py`` (the ``tensorboard``
configurator sets up the views and exemplar filter; see the README).

Instruments (meter ``opentelemetry.instrumentation.tensorboard``):

``tensorboard.scalar`` (Gauge, float, no unit: a scalar is whatever the script logs)
    One measurement per scalar point: ``add_scalar``, each key of ``add_scalars`` (tag
    ``<main_tag>/<key>``), each metric of ``add_hparams``. Series attributes (kept by the View):

    - ``tensorboard.tag`` (str): the tag TensorBoard wrote into the event (tensorboardX cleans
      tags: ``val acc (%)`` is written, and captured, as ``val_acc____``);
    - ``tensorboard.log_dir`` (str): the writer's log dir, which tells writers apart;
    - ``tensorboard.writer`` (str): the writer's short name, unique in the process and the same
      in every run of the script (``train`` for ``runs/train``, ``""`` for a default
      ``SummaryWriter()``); the rule is in :mod:`.writer_names`.

    Per-point attributes (dropped from the series by the View, kept on each exemplar as
    ``filtered_attributes``):

    - ``tensorboard.step`` (int): the step TensorBoard wrote into the event (the call's
      ``global_step``, or tensorboardX's ``use_metadata`` step); absent when the event has none
      (TensorBoard then writes step 0).

    With :func:`views` and the ``always_on`` exemplar filter every point is an exemplar whose
    ``value`` is the Python value passed, converted as TensorBoard converts it (one-element
    arrays and tensors squeezed; not TensorBoard's float32 copy), NaN and infinities included,
    and whose ``time_unix_nano`` is the wall time TensorBoard wrote into the event, floored to
    the nanosecond.
    The data point itself holds the last value, which is what Prometheus-style backends show.

``tensorboard.hparam`` (Gauge, int, always 1: an info series, no unit)
    One series per hyperparameter of ``add_hparams`` or Lightning's ``log_hyperparams``
    (nested dicts flattened with ``/``). Attributes: ``tensorboard.hparam.name``,
    ``tensorboard.hparam.value`` (str, int, float or bool), ``tensorboard.log_dir``.

``tensorboard.points`` (ObservableCounter, ``{point}``)
    Points handed to OpenTelemetry so far in this process.

``tensorboard.run.end`` (ObservableGauge, ``1``)
    Observed once, in the provider's last collection (at exit, or when tracelet stops an
    experiment), with ``tensorboard.run.status``: ``FINISHED``, ``FAILED`` (an uncaught exception)
    or ``KILLED`` (SIGTERM, Ctrl-C), as :mod:`.lifecycle` knows it. OTLP has no end of run; this is
    how a receiver at the end of the collector route ends the MLflow run. Instrumenting installs
    :mod:`.lifecycle`'s hooks, so a SIGTERM ends the process the orderly way (the last points are
    exported).

Behaviour worth knowing:

- the user's call runs exactly as written: nothing is added to its arguments. Step, wall time and
  tag are read back from the event TensorBoard built (``FileWriter.add_event`` is patched to hand
  it over), so the event files are byte for byte what they are without capture;
- if TensorBoard raises, the same exception reaches the caller and nothing is recorded (for
  ``add_scalars``, the keys TensorBoard wrote before it raised are recorded); if recording
  fails, training goes on and one warning is logged;
- ``add_hparams`` metrics are recorded once, under the calling writer's log dir, not through the
  extra writer TensorBoard creates for them;
- writers created before ``instrument()`` are captured (the methods are patched on the classes);
- nothing is imported by ``instrument()``: each writer module is patched when the script imports it
  (post-import hooks), so ``opentelemetry-instrument`` does not load torch before the script does;
- points wait in a bounded queue and become measurements when a reader collects, off the training
  thread; a forked child (a DataLoader worker) starts with an empty queue.

Settings are the ``OTEL_PYTHON_TENSORBOARD_*`` variables of :mod:`.environment_variables`; the
OpenTelemetry SDK internals this package needs are all in :mod:`._sdk_compat`.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.metrics import get_meter, get_meter_provider

from opentelemetry.instrumentation.tensorboard import lifecycle
from opentelemetry.instrumentation.tensorboard.capture import Recorder, flatten_params, scalar_value, warn_once
from opentelemetry.instrumentation.tensorboard.package import _instruments, _instruments_any
from opentelemetry.instrumentation.tensorboard.reservoir import has_views, views
from opentelemetry.instrumentation.tensorboard.version import __version__

__all__ = ["TensorBoardInstrumentor", "views"]

_logger = logging.getLogger(__name__)

_WRITERS = (
    ("torch.utils.tensorboard.writer", "SummaryWriter", "FileWriter"),
    ("tensorboardX.writer", "SummaryWriter", "FileWriter"),
)
_LIGHTNING = ("lightning_fabric.loggers.tensorboard", "lightning.fabric.loggers.tensorboard")


class _Written(threading.local):
    """The events TensorBoard writes during the patched call running on this thread.

    ``None`` outside a patched call. Reading the step, wall time and tag back from the event
    TensorBoard built is the only way to record exactly what it wrote (tensorboardX's
    ``use_metadata``, its tag cleaning, its own clock) without passing anything into the call.
    Also set while a patched method runs TensorBoard code that calls ``add_scalar`` itself.
    """

    events: list[Any] | None = None


_written = _Written()
_recorders: weakref.WeakKeyDictionary[Any, Recorder] = weakref.WeakKeyDictionary()


def _scalar_args(
    tag: str, scalar_value: Any, global_step: Any = None, walltime: float | None = None, *_: Any, **__: Any
) -> tuple[str, Any, Any, float | None]:
    return tag, scalar_value, global_step, walltime


def _scalars_args(
    main_tag: str,
    tag_scalar_dict: Mapping[str, Any],
    global_step: Any = None,
    walltime: float | None = None,
    *_: Any,
    **__: Any,
) -> tuple[str, Mapping[str, Any], Any, float | None]:
    return main_tag, tag_scalar_dict, global_step, walltime


def _hparams_args(wrapped: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[Mapping, Mapping, Any]:
    # torch and tensorboardX place global_step differently; add_hparams is rare, so bind properly.
    bound = inspect.signature(wrapped).bind(*args, **kwargs).arguments
    return bound["hparam_dict"], bound.get("metric_dict") or {}, bound.get("global_step")


def _call_capturing(wrapped: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Runs the user's call unchanged and returns its result and the events it wrote."""
    events: list[Any] = []
    _written.events = events
    try:
        return wrapped(*args, **kwargs), events
    finally:
        _written.events = None


def _as_written(event: Any, global_step: Any) -> tuple[str, int | None, float]:
    """Tag, step and wall time as an event holds them (step ``None``: the event has none)."""
    step = event.step
    if not step and global_step is None:
        step = None
    return event.summary.value[0].tag, step, event.wall_time


def _log_dir(writer: Any) -> str | None:
    state = writer.__dict__
    log_dir = state.get("log_dir") or state.get("logdir")
    return None if log_dir is None else str(log_dir)


def _step(global_step: Any) -> int | None:
    return None if global_step is None else int(global_step)


class TensorBoardInstrumentor(BaseInstrumentor):
    """Patches ``SummaryWriter`` (torch and tensorboardX) and Lightning's ``TensorBoardLogger``."""

    _recorder: Recorder | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _check_dependency_conflicts(self):
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts  # noqa: PLC0415

        return get_dependency_conflicts(_instruments, _instruments_any)

    @property
    def recorder(self) -> Recorder | None:
        """Where captured points wait for the next collection (``None`` when not instrumented)."""
        return self._recorder

    def _instrument(self, **kwargs: Any) -> None:
        provider = kwargs.get("meter_provider") or get_meter_provider()
        if has_views(provider) is False:
            _logger.warning(
                "tensorboard: the MeterProvider has no tensorboard View; only the last value per "
                "collection survives. Build it with views=opentelemetry.instrumentation.tensorboard.views() "
                "and the always_on exemplar filter, or run under opentelemetry-instrument with "
                "OTEL_PYTHON_CONFIGURATOR=tensorboard"
            )
        recorder = _recorders.get(provider)
        if recorder is None:
            # One per provider: instruments are registered once, so a second instrument() reuses them.
            recorder = _recorders[provider] = Recorder(get_meter(__name__, __version__, provider))
            _end_at_exit(recorder)
        recorder.max_pending = int(kwargs.get("max_pending", recorder.max_pending))
        TensorBoardInstrumentor._recorder = recorder
        self._patched: list[tuple[Any, str]] = []

        # Nothing is imported here: each writer is patched when the script imports it (at once if it
        # already has), so torch, tensorboardX and Lightning load when and as the script decides.
        # The import hooks are registered once per process (wrapt keeps them for good) and patch
        # with whatever recorder is current when the module arrives, so no experiment outlives itself.
        for module_name, patch in _PATCHES.items():
            module = sys.modules.get(module_name)
            if module is not None:
                patch(self, recorder, module)
            elif module_name not in _hooked_modules:
                _hooked_modules.add(module_name)
                wrapt.register_post_import_hook(_patch_when_imported, module_name)

    def _patch_writer(self, recorder: Recorder, module: Any, class_name: str, file_writer: str) -> None:
        writer = getattr(module, class_name)
        self._wrap(getattr(module, file_writer), "add_event", _wrap_add_event)
        self._wrap(writer, "add_scalar", _wrap_add_scalar(recorder))
        self._wrap(writer, "add_scalars", _wrap_add_scalars(recorder))
        self._wrap(writer, "add_hparams", _wrap_add_hparams(recorder))

    def _patch_lightning(self, recorder: Recorder, module: Any) -> None:
        self._wrap(module.TensorBoardLogger, "log_hyperparams", _wrap_log_hyperparams(recorder))

    def _wrap(self, owner: type, name: str, wrapper: Any) -> None:
        if isinstance(owner.__dict__.get(name), wrapt.ObjectProxy):
            return
        wrapt.wrap_function_wrapper(owner, name, wrapper)
        self._patched.append((owner, name))

    def _uninstrument(self, **kwargs: Any) -> None:
        for owner, name in getattr(self, "_patched", []):
            unwrap(owner, name)
        self._patched = []
        recorder = TensorBoardInstrumentor._recorder
        TensorBoardInstrumentor._recorder = None
        if recorder is not None:
            try:
                recorder.drain()
            except Exception:  # the methods are restored already; a later instrument() must find it so
                _logger.exception("tensorboard: could not hand the last points to OpenTelemetry")


def _writer_patch(class_name: str, file_writer: str) -> Callable[[TensorBoardInstrumentor, Recorder, Any], None]:
    return lambda instrumentor, recorder, module: instrumentor._patch_writer(recorder, module, class_name, file_writer)


# What to patch in each module, once it is imported.
_PATCHES: dict[str, Callable[[TensorBoardInstrumentor, Recorder, Any], None]] = {
    **{module: _writer_patch(class_name, file_writer) for module, class_name, file_writer in _WRITERS},
    **{module: TensorBoardInstrumentor._patch_lightning for module in _LIGHTNING},
}
_hooked_modules: set[str] = set()


def _end_at_exit(recorder: Recorder) -> None:
    """At exit, before the provider's own exit handler (registered earlier, so run later), the run ends.

    Held weakly: a recorder whose experiment is over is not kept alive by the exit handler.
    """
    lifecycle.install()
    ref = weakref.ref(recorder)

    def end() -> None:
        alive = ref()
        if alive is not None and alive.ended is None:
            alive.end(lifecycle.outcome())

    atexit.register(end)


def _patch_when_imported(module: Any) -> None:
    """The post-import hook: patches a module imported while capture runs (nothing otherwise)."""
    recorder = TensorBoardInstrumentor._recorder
    if recorder is not None:
        _PATCHES[module.__name__](TensorBoardInstrumentor(), recorder, module)


def _record_failed(exc: Exception) -> None:
    warn_once(
        f"record:{type(exc).__name__}",
        "tensorboard: a point could not be captured and training goes on (%s: %s); "
        "further failures of this kind are not reported",
        type(exc).__name__,
        exc,
    )


def _wrap_add_event(wrapped: Any, _instance: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """``FileWriter.add_event``: hands the event just written to the patched call around it."""
    result = wrapped(*args, **kwargs)
    events = _written.events
    if events is not None:
        events.append(args[0] if args else kwargs["event"])
    return result


def _wrap_add_scalar(recorder: Recorder):
    scalar = recorder.scalar

    def add_scalar(wrapped: Any, instance: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        if _written.events is not None:  # inside another patched call, which records this point
            return wrapped(*args, **kwargs)
        result, events = _call_capturing(wrapped, args, kwargs)
        try:
            if not kwargs and len(args) == 3:  # add_scalar(tag, value, step): the training loop's form
                tag, value, global_step = args
                walltime = None
            else:
                tag, value, global_step, walltime = _scalar_args(*args, **kwargs)
            if events:
                tag, step, walltime = _as_written(events[-1], global_step)
            else:  # a writer that writes nothing (tensorboardX's write_to_disk=False)
                step, walltime = _step(global_step), time.time() if walltime is None else walltime
            scalar(tag, scalar_value(value), step, walltime, _log_dir(instance))
        except Exception as exc:  # noqa: BLE001 - capture must never break training
            _record_failed(exc)
        return result

    return add_scalar


def _wrap_add_scalars(recorder: Recorder):
    def record(instance: Any, args: tuple, kwargs: dict[str, Any], events: list[Any]) -> None:
        try:
            main_tag, scalars, global_step, walltime = _scalars_args(*args, **kwargs)
            log_dir = _log_dir(instance)
            if not events:  # a writer that writes nothing: every key as TensorBoard would have
                step, walltime = _step(global_step), time.time() if walltime is None else walltime
                events = [None] * len(scalars)
        except Exception as exc:  # noqa: BLE001
            _record_failed(exc)
            return
        # One event per key, in the dict's order; TensorBoard stops at a value it refuses, so
        # the keys before it are written and recorded, and one value that cannot be captured
        # leaves the others alone.
        for (key, value), event in zip(scalars.items(), events, strict=False):
            try:
                tag = main_tag
                if event is not None:
                    tag, step, walltime = _as_written(event, global_step)
                recorder.scalar(f"{tag}/{key}", scalar_value(value), step, walltime, log_dir)
            except Exception as exc:  # noqa: BLE001
                _record_failed(exc)

    def add_scalars(wrapped: Any, instance: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        if _written.events is not None:
            return wrapped(*args, **kwargs)
        events: list[Any] = []
        _written.events = events
        try:
            result = wrapped(*args, **kwargs)
        except BaseException:
            _written.events = None
            if events:
                record(instance, args, kwargs, events)
            raise
        _written.events = None
        record(instance, args, kwargs, events)
        return result

    return add_scalars


def _wrap_add_hparams(recorder: Recorder):
    def add_hparams(wrapped: Any, instance: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        if _written.events is not None:
            return wrapped(*args, **kwargs)
        hparam_dict, metric_dict, global_step = _hparams_args(wrapped, args, kwargs)
        result, events = _call_capturing(wrapped, args, kwargs)
        try:
            log_dir = _log_dir(instance)
            recorder.hparams(flatten_params(hparam_dict), log_dir)
            # The metrics are the last events, one each, written through TensorBoard's own add_scalar.
            written = events[-len(metric_dict) :] if metric_dict and len(events) >= len(metric_dict) else []
            for index, (key, value) in enumerate(metric_dict.items()):
                if written:
                    tag, step, walltime = _as_written(written[index], global_step)
                else:
                    tag, step, walltime = str(key), _step(global_step), time.time()
                recorder.scalar(tag, scalar_value(value), step, walltime, log_dir)
        except Exception as exc:  # noqa: BLE001
            _record_failed(exc)
        return result

    return add_hparams


def _wrap_log_hyperparams(recorder: Recorder):
    def log_hyperparams(wrapped: Any, instance: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        result = wrapped(*args, **kwargs)
        try:
            params = args[0] if args else kwargs.get("params", {})
            if not isinstance(params, Mapping):
                params = vars(params)
            recorder.hparams(flatten_params(params), str(instance.log_dir))
        except Exception as exc:  # noqa: BLE001
            _record_failed(exc)
        return result

    return log_hyperparams
