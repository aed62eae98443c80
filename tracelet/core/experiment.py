"""An experiment: one MLflow run (or one OTLP/Prometheus resource) that a training process logs into.

Its own metrics take the same path as TensorBoard scalars: a point on the ``tensorboard.scalar``
instrument (tag = metric name, no log dir, step = iteration), so ``exp.log_metric("loss", v, 3)``
and ``writer.add_scalar("loss", v, 3)`` end up as the same MLflow metric. Params are
``tensorboard.hparam`` info series, tags the ``mlflow.run.tag`` info gauge; the MLflow mapping
turns each into run params and tags.
"""

from __future__ import annotations

import atexit
import logging
import operator
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider

from opentelemetry.exporter.mlflow.mapping import EXPERIMENT_NAME, RUN_NAME, RUN_TAG, SERVICE_NAME, TAG_NAME, TAG_VALUE
from opentelemetry.instrumentation.tensorboard import _sdk_compat, lifecycle, system_metrics
from opentelemetry.instrumentation.tensorboard._sdk_compat import ApiGauge as Gauge
from opentelemetry.instrumentation.tensorboard.capture import Recorder
from opentelemetry.instrumentation.tensorboard.capture import flatten_params as _flatten
from opentelemetry.instrumentation.tensorboard.reservoir import TensorBoardView
from tracelet._version import __version__
from tracelet.core.pipeline import Pipeline, borrowed_provider, build
from tracelet.frameworks.pytorch import PyTorchFramework
from tracelet.settings import TraceletSettings

_logger = logging.getLogger(__name__)

METER = "tracelet"

# The experiment's meter and the TensorBoard instrumentation's both have ``tensorboard.scalar``
# under the tensorboard View; their scopes keep them apart and the mapping reads both.
_sdk_compat.quiet_view_conflicts(TensorBoardView)


@dataclass
class _Instruments:
    recorder: Recorder
    tags: Gauge


# One set per provider: the SDK registers an instrument once per meter, and a second observable
# callback on the same name would be dropped (its points never drained).
_instruments: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
_instruments_lock = threading.Lock()


def _instruments_for(provider: MeterProvider) -> _Instruments:
    with _instruments_lock:
        found = _instruments.get(provider)
        if found is None:
            meter = provider.get_meter(METER, __version__)
            found = _instruments[provider] = _Instruments(
                Recorder(meter),
                meter.create_gauge(RUN_TAG, description="A run tag (info: always 1)"),
            )
        return found


class Experiment:
    """One training run's logging; made by :func:`tracelet.start_logging`, usable as a context manager.

    Leaving the ``with`` block stops it; leaving it with an exception ends the MLflow run FAILED
    (KILLED for Ctrl-C).
    """

    def __init__(
        self, settings: TraceletSettings | None = None, *, on_stop: Callable[[Experiment], object] | None = None
    ) -> None:
        """``on_stop`` is called with the experiment once it stops (``start_logging`` forgets it then)."""
        self.settings = settings if settings is not None else TraceletSettings()
        self._on_stop = on_stop
        self._frameworks: dict[str, PyTorchFramework] = {}
        self._attached: list[PyTorchFramework] = []
        self._pipeline: Pipeline | None = None
        self._instruments: _Instruments | None = None
        self._running = False
        self._warned: set[str] = set()

    # Life cycle ---------------------------------------------------------------------------------

    def start(self) -> Experiment:
        """Builds the pipeline (or joins the one ``opentelemetry-instrument`` set up) and starts capture."""
        if self._running:
            return self
        borrowed = borrowed_provider()
        if borrowed is not None:
            self._pipeline = Pipeline(borrowed, owned=False)
            self._explain_borrowed()
        else:
            self._pipeline = build(self.settings)
        self._instruments = _instruments_for(self._pipeline.provider)
        self._running = True
        # Registered after the exporters were made, so it runs before their own exit handlers: the
        # captured points are handed over before the pipeline closes.
        atexit.register(self.stop)
        try:
            # A run exists as soon as the experiment starts, even before the first point.
            self.set_tag("tracelet.version", __version__)
            framework = PyTorchFramework(patch_tensorboard=self.settings.patch_tensorboard)
            self._frameworks[framework.name] = framework
            framework.initialize(self)
            framework.start_tracking()
        except BaseException:
            self.stop(failed=True)
            raise
        return self

    def stop(self, failed: bool = False) -> None:
        """Delivers every point captured so far and ends the run (FINISHED, or FAILED if ``failed``).

        Safe to call twice and after a failure: each step runs even when an earlier one raised.
        """
        self._stop("FAILED" if failed else None)

    def _stop(self, status: str | None) -> None:
        if not self._running:
            return
        self._running = False
        atexit.unregister(self.stop)
        if self._on_stop is not None:
            self._on_stop(self)
        for framework in reversed(self._attached):
            self._attempt("stop TensorBoard capture", framework.stop_tracking)
        pipeline, instruments = self._pipeline, self._instruments
        if instruments is not None:
            self._attempt("hand over the last points", instruments.recorder.drain)
            if pipeline is not None and pipeline.owned:  # the last collection tells OTLP how the run ended
                instruments.recorder.end(status or lifecycle.outcome())
        if pipeline is not None:
            # A ``with`` block's exception fails this run, not the process: its outcome is set for the close.
            with lifecycle.ending_as(status) if status else nullcontext():
                self._attempt("deliver the last points", pipeline.close)

    def _attempt(self, what: str, action: Any) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001
            _logger.warning(
                "tracelet: could not %s for experiment %r: %s: %s", what, self.name, type(exc).__name__, exc
            )

    def __enter__(self) -> Experiment:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None or issubclass(exc_type, (SystemExit, GeneratorExit)):
            self._stop(None)
        else:  # as MLflow's own start_run does: Ctrl-C kills the run, any other exception fails it
            self._stop("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    @property
    def is_running(self) -> bool:
        return self._running

    # Identity -----------------------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        """The MLflow run name (under ``opentelemetry-instrument``: the one its resource gives)."""
        resource = self._pipeline.resource if self._pipeline else {}
        return resource.get(RUN_NAME) or self.settings.exp_name or resource.get(SERVICE_NAME)

    @property
    def project(self) -> str | None:
        """The MLflow experiment name (``None``: MLFLOW_EXPERIMENT_NAME or MLflow's default experiment)."""
        resource = self._pipeline.resource if self._pipeline else {}
        return resource.get(EXPERIMENT_NAME) or self.settings.project

    @property
    def prometheus_url(self) -> str | None:
        """Where the ``prometheus`` backend serves ``/metrics``, when it is on."""
        return self._pipeline.prometheus_url if self._pipeline else None

    @property
    def tracking_uri(self) -> str | None:
        """The MLflow store the ``mlflow`` backend writes to (``None``: no such backend, or a borrowed pipeline)."""
        return self._pipeline.tracking_uri if self._pipeline else None

    @property
    def _meter_provider(self) -> MeterProvider:
        if self._pipeline is None:
            raise RuntimeError("tracelet: the experiment has not been started")
        return self._pipeline.provider

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Experiment name={self.name!r} project={self.project!r} backend={self.settings.backend} {state}>"

    # Logging ------------------------------------------------------------------------------------

    def log_metric(self, name: str, value: float, iteration: int | None = None) -> None:
        """Logs one point, as ``add_scalar(name, value, iteration)`` would (no iteration: step 0)."""
        self._record(name, value, iteration, None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs run params (nested dicts become ``a/b``); MLflow refuses to change a param once set."""
        if not isinstance(params, Mapping):
            raise TypeError(f"log_params() takes a dict of name -> value, got {type(params).__name__}")
        if self._usable("params"):
            self._instruments.recorder.hparams(_flatten(params), None)  # type: ignore[union-attr]

    def log_param(self, name: str, value: Any) -> None:
        self.log_params({_name("log_param", name): value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Sets run tags (values as text)."""
        if not isinstance(tags, Mapping):
            raise TypeError(f"set_tags() takes a dict of name -> value, got {type(tags).__name__}")
        if not self._usable("tags"):
            return
        gauge = self._instruments.tags  # type: ignore[union-attr]
        for tag, value in tags.items():
            gauge.set(1, {TAG_NAME: _name("set_tag", tag), TAG_VALUE: str(value)})

    def set_tag(self, name: str, value: Any) -> None:
        self.set_tags({name: value})

    def _record(self, name: str, value: Any, iteration: Any, extra: Mapping[str, Any] | None) -> None:
        name = _name("log_metric", name)
        number = _number(name, value)
        step = _step(name, iteration)
        if self._usable("metrics"):
            self._instruments.recorder.scalar(name, number, step, time.time(), None, extra)  # type: ignore[union-attr]

    def _usable(self, what: str) -> bool:
        if self._running:
            return True
        if what not in self._warned:
            self._warned.add(what)
            _logger.warning(
                "tracelet: experiment %r is not running (stop_logging() was called); %s logged to it are dropped",
                self.name,
                what,
            )
        return False

    def _attach(self, framework: PyTorchFramework) -> None:
        if framework not in self._attached:
            self._attached.append(framework)

    def _stop_tensorboard_capture(self) -> None:
        """Ends the TensorBoard capture this experiment's frameworks started (a framework asked for none)."""
        stopped = False
        for framework in self._attached:
            if framework.is_capturing:
                framework.stop_tracking()
                stopped = True
        if stopped:
            _logger.info("tracelet: experiment %r no longer captures TensorBoard; it logs directly only", self.name)
        elif self._pipeline is not None and not self._pipeline.owned:
            _logger.warning(
                "tracelet: TensorBoard is captured by opentelemetry-instrument, which patch_tensorboard=False "
                "cannot turn off; set OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tensorboard for that"
            )

    def _explain_borrowed(self) -> None:
        resource = self._pipeline.resource if self._pipeline else {}
        ignored = [f"backend={self.settings.backend}"]
        if self.settings.project and resource.get(EXPERIMENT_NAME) != self.settings.project:
            ignored.append(f"project={self.settings.project!r}")
        if self.settings.exp_name and resource.get(RUN_NAME) != self.settings.exp_name:
            ignored.append(f"exp_name={self.settings.exp_name!r}")
        if self.settings.system_metrics and not system_metrics.enabled():
            variable = system_metrics.OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS
            ignored.append(f"system_metrics=True (for that, set {variable}=true)")
        _logger.warning(
            "tracelet: running under opentelemetry-instrument, which already captures TensorBoard; tracelet logs "
            "into that pipeline (exporter from OTEL_METRICS_EXPORTER, run from its resource) and ignores %s. "
            "Name the run with OTEL_RESOURCE_ATTRIBUTES=mlflow.experiment.name=...,mlflow.run.name=... "
            "(the OpenTelemetry SDK cannot add readers or change the resource of a running MeterProvider)",
            ", ".join(ignored),
        )


def _name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}(): the name must be a non-empty string, got {name!r}")
    return name


def _number(name: str, value: Any) -> float:
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of more than one element
        raise TypeError(f"metric {name!r}: the value must be a number, got {type(value).__name__} {value!r}") from None


def _step(name: str, iteration: Any) -> int | None:
    if iteration is None:
        return None
    try:
        return operator.index(iteration)
    except TypeError:
        item = getattr(iteration, "item", None)  # a 0-d tensor or numpy scalar
        if callable(item) and isinstance(item(), int):
            return item()
        raise TypeError(f"metric {name!r}: the iteration must be an integer, got {iteration!r}") from None
