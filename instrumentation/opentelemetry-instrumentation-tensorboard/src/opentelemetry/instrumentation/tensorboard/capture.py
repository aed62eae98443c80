"""Turning captured points into OpenTelemetry measurements, in bulk and off the training thread.

Recording a synchronous measurement costs several microseconds (attribute copies, hashing,
one pass per reader), a sizeable share of ``add_scalar`` itself. So the call site only appends a
tuple to a deque, and the points become measurements when a reader collects (the observable
``tensorboard.points`` callback drains the deque first): **one** measurement per series (tag and
log dir) and collection, carrying the series' last value, with every point of the series since
the last collection attached as a :class:`ScalarBlock` in the measurement's context. The
reservoir of :func:`~opentelemetry.instrumentation.tensorboard.reservoir.views` takes the block
and hands it out as the data point's exemplars: every point an exemplar with its own value (NaN
and infinities included), step and wall time, without one SDK measurement or one ``Exemplar``
object per point unless an exporter asks for them.

Once more than ``max_pending`` points wait (a long export interval, a fast loop), a helper thread
drains them; only if it falls four times behind does the caller drain itself, so memory stays
bounded even without a reader.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

from opentelemetry.context import Context, get_current, get_value, set_value
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import Exemplar

from opentelemetry.instrumentation.tensorboard import _sdk_compat, lifecycle
from opentelemetry.instrumentation.tensorboard.writer_names import WriterNames

SCALAR = "tensorboard.scalar"
HPARAM = "tensorboard.hparam"
POINTS = "tensorboard.points"
RUN_END = "tensorboard.run.end"

TAG = "tensorboard.tag"
LOG_DIR = "tensorboard.log_dir"
WRITER = "tensorboard.writer"
STEP = "tensorboard.step"
HPARAM_NAME = "tensorboard.hparam.name"
HPARAM_VALUE = "tensorboard.hparam.value"
RUN_STATUS = "tensorboard.run.status"

_logger = logging.getLogger(__name__)

# (value, step, wall time in seconds, tag, log dir, extra per-point attributes)
Point = tuple[float, "int | None", float, str, "str | None", "Mapping[str, Any] | None"]


_BLOCK = "opentelemetry.instrumentation.tensorboard.points"


MAX_WALLTIME = 9_223_372_036.0  # seconds: the last wall time OTLP's and MLflow's int64 nanoseconds hold (2262)


def nanoseconds(seconds: float) -> int:
    """TensorBoard's float wall time as integer nanoseconds, floored, so that ``// 10**6`` floors to the ms.

    ``int(s * 1e9)`` is off by ~100 ns and rounding to the microsecond moves about one point in
    2,000 into the next millisecond. Splitting off the whole seconds is exact (the fraction of a
    double is exact), and the fraction's product with 1e9 errs far less than its distance to the
    next integer. A wall time no timestamp can hold (NaN, infinite, negative, past 2262: all
    accepted by TensorBoard) maps to 0, 1970-01-01; :func:`exemplar_fields` reports it once per tag.
    """
    if not 0.0 <= seconds < MAX_WALLTIME:  # NaN fails this too
        return 0
    whole = math.floor(seconds)
    return whole * 1_000_000_000 + math.floor((seconds - whole) * 1e9)


class ScalarBlock(Sequence[Exemplar]):
    """The points of one series since the last collection, as the exemplars of its data point.

    Holds the recorder's tuples as they are (``points``: value, step, wall time in seconds, tag,
    log dir, extra attributes); an ``Exemplar`` is made only for an exporter that reads one
    (``filtered_attributes`` = ``tensorboard.step`` and the extra attributes). Exporters that know
    the layout (the MLflow exporter) read ``points`` directly, through :func:`exemplar_fields`.
    """

    __slots__ = ("points",)

    def __init__(self, points: list[Point]) -> None:
        self.points = points

    def __len__(self) -> int:
        return len(self.points)

    @overload
    def __getitem__(self, index: int) -> Exemplar: ...
    @overload
    def __getitem__(self, index: slice) -> list[Exemplar]: ...
    def __getitem__(self, index: int | slice) -> Exemplar | list[Exemplar]:
        if isinstance(index, slice):
            return [_exemplar(point) for point in self.points[index]]
        return _exemplar(self.points[index])

    def __iter__(self) -> Iterator[Exemplar]:
        return map(_exemplar, self.points)

    def __repr__(self) -> str:
        return f"ScalarBlock({len(self.points)} points)"

    def __reduce__(self) -> tuple[type[ScalarBlock], tuple[list[Point]]]:
        return ScalarBlock, (self.points,)

    def __deepcopy__(self, _memo: dict) -> list[dict[str, Any]]:
        # ``dataclasses.asdict`` (``MetricsData.to_json``) deep-copies sequence types it does not know
        # instead of walking them; this gives it what walking a list of ``Exemplar`` s would.
        return [dataclasses.asdict(exemplar) for exemplar in self]


def exemplar_fields(point: Point) -> tuple[float, int, dict[str, Any]]:
    """A block point as an exemplar's value, ``time_unix_nano`` and ``filtered_attributes``."""
    value, step, walltime, tag, _log_dir, extra = point
    attributes: dict[str, Any] = {} if step is None else {STEP: step}
    if extra:
        attributes.update(extra)
    time_unix_nano = nanoseconds(walltime)
    if not time_unix_nano and walltime != 0:
        warn_once(
            f"walltime:{tag}",
            "tensorboard: %r has the wall time %r, which no timestamp can hold; it is recorded at 0 (1970-01-01)",
            tag,
            walltime,
        )
    return value, time_unix_nano, attributes


def _exemplar(point: Point) -> Exemplar:
    value, time_unix_nano, attributes = exemplar_fields(point)
    return Exemplar(attributes, value, time_unix_nano)


def block_of(context: Context | None) -> ScalarBlock | None:
    """The block a measurement carries in its context (see :class:`Recorder`), if any."""
    if context is None:
        return None
    block = get_value(_BLOCK, context)
    return block if isinstance(block, ScalarBlock) else None


class _Once:
    """Logs a problem the first time only: a failure per call would drown the training log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warn(self, key: str, message: str, *args: object) -> None:
        if key not in self._seen:
            self._seen.add(key)
            _logger.warning(message, *args)


warn_once = _Once().warn


def _measure(instrument: Any) -> _sdk_compat.Measure | None:
    """The SDK's measurement entry point behind ``instrument``, or ``None`` (then ``set`` is used).

    The API's ``set`` drops NaN and infinities (a NaN loss is the point a user most needs to see)
    and stamps the current time; :func:`._sdk_compat.measurement_sink` keeps both. An SDK whose
    internals moved is reported once, naming its version, rather than losing NaN silently.
    """
    try:
        return _sdk_compat.measurement_sink(instrument)
    except _sdk_compat.UnsupportedSdkError as exc:
        warn_once("sdk-measure", "%s: %s; series whose last value is NaN or infinite are skipped", SCALAR, exc)
        return None


class Recorder:
    """Holds points from the call site until OpenTelemetry takes them."""

    def __init__(self, meter: Meter, max_pending: int = 100_000) -> None:
        self.max_pending = max_pending
        self._pending: deque[Point] = deque()
        self._drain_lock = threading.Lock()
        self._captured = 0
        self._scalar = meter.create_gauge(SCALAR, description="A TensorBoard scalar; every point is an exemplar")
        self._hparam = meter.create_gauge(HPARAM, description="A TensorBoard hyperparameter (info: always 1)")
        self._points = meter.create_observable_counter(
            POINTS,
            callbacks=[self._on_collect],
            unit="{point}",
            description="Scalar points handed to OpenTelemetry",
        )
        # OTLP has no end of run: the last collection says how the run ended (see ``end``).
        self._ended: str | None = None
        self._run_end = meter.create_observable_gauge(
            RUN_END,
            callbacks=[self._on_run_end],
            unit="1",
            description="1 in the last collection of a run, with tensorboard.run.status FINISHED, FAILED or KILLED",
        )
        self._measure: Any = None
        self.writer_names = WriterNames()
        self._wake = threading.Event()
        self._drainer: threading.Thread | None = None
        self._parent = os.getpid()
        lifecycle.reset_in_forked_child(self)

    def scalar(
        self,
        tag: str,
        value: float,
        step: int | None,
        walltime: float,
        log_dir: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Keeps one point; cheap enough for the training loop."""
        pending = self._pending
        pending.append((value, step, walltime, tag, log_dir, extra))
        if len(pending) > self.max_pending:
            self._overflow(len(pending))

    def _overflow(self, waiting: int) -> None:
        if waiting > 4 * self.max_pending:
            self.drain()  # the helper cannot keep up: bounded memory comes before speed
            return
        self._wake.set()
        if self._drainer is None or not self._drainer.is_alive():
            self._drainer = threading.Thread(target=self._drain_when_woken, name="tensorboard-drain", daemon=True)
            self._drainer.start()

    def _drain_when_woken(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.drain()
            except Exception:
                _logger.exception("tensorboard: could not hand points to OpenTelemetry")

    def hparams(self, params: Mapping[str, Any], log_dir: str | None) -> None:
        """Records hyperparameters as info series (value 1), one per name and value."""
        for name, value in params.items():
            attributes: dict[str, Any] = {HPARAM_NAME: str(name), HPARAM_VALUE: value}
            if log_dir is not None:
                attributes[LOG_DIR] = log_dir
            self._hparam.set(1, attributes)

    def drain(self) -> int:
        """Hands every pending point to the SDK, one measurement per series; returns how many points."""
        with self._drain_lock:
            measure = self._measure or _measure(self._scalar)
            self._measure = measure
            series: dict[tuple[str, str | None], list[Point]] = {}
            pending = self._pending
            popleft = pending.popleft
            count = 0
            while pending:
                try:
                    point = popleft()
                except IndexError:  # another thread emptied it
                    break
                key = (point[3], point[4])
                found = series.get(key)
                if found is None:
                    series[key] = [point]
                else:
                    found.append(point)
                count += 1
            current = get_current()
            name = self.writer_names.name
            for (tag, log_dir), points in series.items():
                attributes: dict[str, Any] = {TAG: tag}
                if log_dir is not None:
                    attributes[LOG_DIR] = log_dir
                    attributes[WRITER] = name(log_dir)
                value, _step, walltime = points[-1][:3]
                context = set_value(_BLOCK, ScalarBlock(points), current)
                if measure is not None:
                    measure(value, nanoseconds(walltime), attributes, context)
                elif math.isfinite(value):
                    self._scalar.set(value, attributes, context)
                else:
                    warn_once(
                        "nonfinite",
                        "%s: this MeterProvider is not the OpenTelemetry SDK; a series whose last value is not "
                        "finite (NaN, inf) cannot be recorded and is skipped",
                        SCALAR,
                    )
            self._captured += count
            return count

    def _on_collect(self, _options: CallbackOptions) -> Iterable[Observation]:
        try:
            self.drain()
        except Exception:  # a collection must never fail because of one bad point
            _logger.exception("tensorboard: could not hand points to OpenTelemetry")
        return [Observation(self._captured)]

    def end(self, status: str) -> None:
        """The run ends with ``status``: the next collection, the provider's last, carries ``tensorboard.run.end``.

        A receiver at the end of an OTLP route (``tracelet receive``) sets the MLflow run's status
        from it, as the in-process exporter does at shutdown.
        """
        self._ended = status

    @property
    def ended(self) -> str | None:
        """The status :meth:`end` was given, or ``None`` while the run goes on."""
        return self._ended

    def _on_run_end(self, _options: CallbackOptions) -> Iterable[Observation]:
        status = self._ended
        return [Observation(1, {RUN_STATUS: status})] if status else []

    def _after_fork(self) -> None:
        # A forked child (e.g. a DataLoader worker) must not send the parent's points a second time,
        # and its own points have no exporter: it says so at its first point.
        self._pending = _ForkedQueue(self._parent)
        self._drain_lock = threading.Lock()
        self._captured = 0
        self._wake = threading.Event()
        self._drainer = None  # threads do not survive a fork


class _ForkedQueue(deque):
    """The queue of a forked child's recorder: reports, at the first point, that nothing exports it."""

    def __init__(self, parent: int) -> None:
        super().__init__()
        self._parent = parent

    def append(self, point: Point) -> None:
        warn_once(
            "forked",
            "tensorboard: points recorded in forked child process %d (a DataLoader worker?) are not exported: "
            "the exporter belongs to process %d, so log them from there",
            os.getpid(),
            self._parent,
        )
        super().append(point)


def scalar_value(value: Any) -> float:
    """The number TensorBoard writes for ``value``, as the Python float passed (not float32's copy).

    TensorBoard squeezes any one-element array or tensor (gymnasium's episode statistics come as
    numpy arrays of shape (1,)); ``float()`` of such an array raises on NumPy 2, ``item()`` does not.
    """
    if type(value) is float:
        return value
    if not isinstance(value, (int, float)):
        item = getattr(value, "item", None)
        if callable(item):
            value = item()
    return float(value)


def attribute_value(value: Any) -> str | int | float | bool:
    """A value OpenTelemetry attributes accept: tensors and numpy scalars become numbers, the rest text."""
    if isinstance(value, (str, bool, int, float)):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return attribute_value(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as ``{"optim/lr": 0.1}``, the way Lightning flattens them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}/"))
        else:
            flat[name] = attribute_value(value)
    return flat
