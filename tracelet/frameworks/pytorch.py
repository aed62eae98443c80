"""PyTorch: TensorBoard ``SummaryWriter`` capture and direct metric logging for an experiment."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from opentelemetry.metrics import MeterProvider

from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.capture import attribute_value as _plain

_logger = logging.getLogger(__name__)


class BoundExperiment(Protocol):
    """What a framework uses of the experiment it is bound to; :class:`tracelet.Experiment` is one.

    Written out here so that frameworks depend on this interface, not on the experiment module,
    which makes the frameworks (the experiment imports this module, never the other way round).
    """

    @property
    def name(self) -> str | None: ...

    @property
    def is_running(self) -> bool: ...

    @property
    def _meter_provider(self) -> MeterProvider:
        """The provider TensorBoard capture records into."""
        ...

    def log_metric(self, name: str, value: float, iteration: int | None = None) -> None: ...

    def _record(self, name: str, value: Any, iteration: Any, extra: Mapping[str, Any] | None) -> None:
        """Records one point with per-point attributes ``extra``."""
        ...

    def _attach(self, framework: PyTorchFramework) -> None:
        """Stops ``framework`` with the experiment."""
        ...

    def _stop_tensorboard_capture(self) -> None:
        """Ends the TensorBoard capture the experiment's frameworks started."""
        ...


class PyTorchFramework:
    """Captures ``SummaryWriter.add_scalar``/``add_scalars``/``add_hparams`` (torch and tensorboardX) and
    Lightning's ``TensorBoardLogger`` for an experiment, and logs metrics directly.

    ``tracelet.start_logging`` makes one (``exp._frameworks["pytorch"]``). Capture is process-wide:
    when TensorBoard is already captured (by that framework, or by ``opentelemetry-instrument``),
    ``start_tracking`` leaves it as it is, so no point is recorded twice. With
    ``patch_tensorboard=False`` this framework never patches TensorBoard and only logs directly,
    and binding it to an experiment (``initialize``) ends the TensorBoard capture that
    ``start_logging`` started for that experiment: from then on only direct logging reaches it.
    """

    name = "pytorch"

    def __init__(self, patch_tensorboard: bool = True) -> None:
        self.patch_tensorboard = patch_tensorboard
        self._experiment: BoundExperiment | None = None
        self._instrumented = False

    def initialize(self, experiment: BoundExperiment) -> None:
        """Binds the framework to ``experiment``; stopping the experiment stops this framework too.

        With ``patch_tensorboard=False`` the experiment stops capturing TensorBoard (what was
        captured before stays and is delivered).
        """
        self._experiment = experiment
        experiment._attach(self)
        if not self.patch_tensorboard:
            experiment._stop_tensorboard_capture()

    def start_tracking(self) -> None:
        """Starts TensorBoard capture into the experiment, unless capture is already on or not wanted."""
        experiment = self._bound("start_tracking")
        if not self.patch_tensorboard or self._instrumented:
            return
        if not experiment.is_running:
            _logger.warning("tracelet: experiment %r is stopped; TensorBoard is not captured", experiment.name)
            return
        instrumentor = TensorBoardInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            return  # every SummaryWriter is already captured; a second capture would double each point
        instrumentor.instrument(meter_provider=experiment._meter_provider)
        self._instrumented = instrumentor.is_instrumented_by_opentelemetry

    def stop_tracking(self) -> None:
        """Ends the TensorBoard capture this framework started (the points taken so far stay queued)."""
        if self._instrumented:
            self._instrumented = False
            TensorBoardInstrumentor().uninstrument()

    @property
    def is_capturing(self) -> bool:
        """Whether this framework started the process's TensorBoard capture."""
        return self._instrumented

    def log_metric(self, name: str, value: float, iteration: int | None = None) -> None:
        """Logs one point into the experiment, as ``add_scalar(name, value, iteration)`` would."""
        self._bound("log_metric").log_metric(name, value, iteration)

    def log_enhanced_metric(
        self,
        name: str,
        value: float,
        metric_type: str = "custom",
        iteration: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Logs one point with a type and metadata.

        ``metric_type`` and each metadata entry travel with the point as attributes; in MLflow they
        become run tags ``metric.<name>.metric_type``, ``metric.<name>.<key>`` (the latest value wins).
        """
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"log_enhanced_metric({name!r}): metadata must be a dict, got {type(metadata).__name__}")
        extra: dict[str, Any] = {"metric_type": _plain(metric_type)}
        for key, item in (metadata or {}).items():
            if item is not None:
                extra[str(key)] = _plain(item)
        self._bound("log_enhanced_metric")._record(name, value, iteration, extra)

    def _bound(self, what: str) -> BoundExperiment:
        if self._experiment is None:
            raise RuntimeError(f"PyTorchFramework.{what}(): call initialize(experiment) first")
        return self._experiment
