"""``tracelet import``: TensorBoard log directories into MLflow runs (or an OTLP endpoint), exactly once.

Runs that were trained without tracelet, or whose live capture stopped early (a crash, a node lost),
have their whole history in TensorBoard's event files. This module reads those files without
TensorFlow (TensorBoard's own record reader and protos) and delivers every scalar through the same
mapping (:mod:`opentelemetry.exporter.mlflow.mapping`) and writer
(:class:`~opentelemetry.exporter.mlflow.delivery.MlflowWriter`) as live capture, so an imported run
has the keys, steps and wall times a live one would have had.

The rules:

Runs
    One MLflow run per TensorBoard run: a directory holding event files. Two layouts that
    ``SummaryWriter`` itself spreads over sub-directories belong to their parent's run, as live
    capture records them: ``add_hparams``' ``<log dir>/<unix time>/`` and ``add_scalars``'
    ``<log dir>/<main tag>_<key>/`` (whose points are tag ``<main tag>/<key>``).
Run name
    The run's directory relative to the ``LOGDIR`` argument, as TensorBoard's run selector shows
    it (``Dec01_13-28-41_host``, ``resnet/train``); ``LOGDIR``'s own name when it is the run.
Metric keys, tags, params
    As live capture: ``<writer>/<tag>`` with the writer name of the log dir (its last component,
    none when that component names the run), the log dir in run tag ``tensorboard.log_dir``
    (``tensorboard.log_dir.<writer>``), hyperparameters as params.
Points
    step and wall time as the event holds them, the wall time floored to the millisecond; the value
    as the file holds it (TensorBoard stores scalars as 32-bit floats).
Which run (idempotent, incremental, reconciling)
    In the target experiment, the active run whose ``tensorboard.log_dir`` (or
    ``tensorboard.log_dir.<writer>``) tag is this log dir: the same absolute path, or, for the
    relative paths live capture records, a path this log dir ends with. The oldest such run wins.
    With none, a run is created (tagged with the log dir's absolute path, and
    ``service.instance.id`` derived from it). Into a found run only the points it lacks are sent:
    for every key it already holds, its history is read and each (step, timestamp) it has is
    skipped as often as it occurs there. Values are not compared: live capture sends the value the
    script passed, the file holds its 32-bit rounding. Params the run already has are left alone.
OTLP (``otlp_url``)
    The same points, resource attributes and series as live capture sends, to any OTLP/HTTP
    endpoint; every point is sent, since an OTLP endpoint cannot be asked what it holds (MLflow
    behind ``tracelet receive`` stores an exact repeat once).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.exporter.mlflow.delivery import (
    DEFAULT_EXPERIMENT_ID,
    MAX_METRICS,
    MlflowRejected,
    MlflowUnavailable,
    MlflowWriter,
    default_tracking_uri,
    public_uri,
)
from opentelemetry.exporter.mlflow.mapping import (
    EXPERIMENT_NAME,
    HPARAM,
    HPARAM_NAME,
    HPARAM_VALUE,
    INSTANCE_ID,
    LOG_DIR,
    RUN_ID,
    RUN_NAME,
    SCALAR,
    SERVICE_NAME,
    START_TIME,
    STEP,
    TAG,
    WRITER,
    Flat,
    Mapper,
    RunBatch,
    run_key,
)
from opentelemetry.exporter.mlflow.spool import Status, deliver
from opentelemetry.instrumentation.tensorboard.capture import nanoseconds
from opentelemetry.instrumentation.tensorboard.writer_names import components

SERVICE = "tracelet-import"
RETRY_FOR = 60.0  # seconds MLflow may be unavailable before the import gives up (what is sent stays)
CHUNK_POINTS = 10_000  # points read before what is left of every series is mapped and sent
_HEADER = 8 + 4  # a TFRecord: length (uint64), its masked CRC, the data, the data's masked CRC
_HPARAMS_CHILD = re.compile(r"\d+(\.\d+)?")  # torch's add_hparams: <log dir>/<str(time.time())>


@dataclass
class LogDir:
    """One TensorBoard run: its directory, its MLflow run name, and its event files in reading order.

    ``files`` pairs each file with how its tags are rewritten: ``None`` as written, ``""`` for an
    ``add_hparams`` sub-directory (as written, but part of this run), ``"<key>"`` for an
    ``add_scalars`` sub-directory (tag ``<main tag>/<key>``).
    """

    path: Path
    name: str
    files: list[tuple[Path, str | None]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(_size(path) for path, _ in self.files)


@dataclass
class Summary:
    """What an import did, for the summary line and the exit code."""

    runs_created: int = 0
    runs_found: int = 0
    points_read: int = 0
    points_sent: int = 0
    points_present: int = 0
    params_sent: int = 0
    files_read: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self, target: str) -> str:
        rate = self.points_sent / self.seconds if self.seconds > 0 else 0.0
        runs = self.runs_created + self.runs_found
        text = (
            f"tracelet import: {runs} run(s) ({self.runs_created} new, {self.runs_found} existing) in {target}: "
            f"{self.points_sent:,} point(s) sent, {self.points_present:,} already there, "
            f"{self.params_sent} param(s); {self.files_read} event file(s), {self.points_read:,} point(s) read "
            f"in {self.seconds:.1f} s ({rate:,.0f} points/s)"
        )
        if self.problems:
            text += f"; {len(self.problems)} problem(s):"
        return text


class ImportFailed(Exception):  # noqa: N818 - reads as what happened
    """The target stopped taking points (unavailable past the retry time, or refused a whole batch)."""


# Finding the runs ----------------------------------------------------------------------------


def _is_event_file(name: str) -> bool:
    # TensorBoard's own test (io_wrapper.IsTensorFlowEventsFile), without a path round trip.
    return "tfevents" in name


def find_log_dirs(roots: Iterable[str | Path]) -> list[LogDir]:
    """Every TensorBoard run under ``roots`` (see the module docstring); ``ValueError`` for a missing root."""
    found: list[LogDir] = []
    seen: set[Path] = set()
    for root in roots:
        base = Path(root).expanduser().resolve()
        if not base.is_dir():
            raise ValueError(f"{root}: no such directory")
        dirs: dict[Path, list[Path]] = {}
        for directory, subdirs, files in os.walk(base):
            subdirs.sort()
            events = sorted(Path(directory, name) for name in files if _is_event_file(name))
            if events:
                dirs[Path(directory)] = events
        runs: dict[Path, LogDir] = {}
        for directory in sorted(dirs):  # parents before children
            parent = runs.get(directory.parent)
            rewrite = _child_rewrite(directory, dirs[directory]) if parent is not None else None
            if parent is not None and rewrite is not None:
                parent.files.extend((path, rewrite) for path in dirs[directory])
                continue
            relative = directory.relative_to(base).as_posix()
            runs[directory] = LogDir(directory, base.name if relative == "." else relative)
            runs[directory].files.extend((path, None) for path in dirs[directory])
        for directory, run in runs.items():
            if directory not in seen:
                seen.add(directory)
                found.append(run)
    return found


def _child_rewrite(directory: Path, files: list[Path]) -> str | None:
    """How a sub-directory of a log dir rewrites its tags, ``None`` if it is a run of its own."""
    if _HPARAMS_CHILD.fullmatch(directory.name):
        return ""
    for path in files:
        reader = EventReader(path)
        for event in reader.events():
            for value in event.summary.value:
                prefix = value.tag.replace("/", "_") + "_"
                if directory.name.startswith(prefix) and len(directory.name) > len(prefix):
                    return directory.name[len(prefix) :]
                return None
    return None


# Reading event files -------------------------------------------------------------------------


class EventReader:
    """The events of one file, with what could not be read said in words (``problem``).

    TensorBoard's loader stops silently at a truncated or corrupt record (it expects the file to
    grow); an import must say what it left out, so the bytes behind the last whole record are
    looked at: a record cut short is a truncated file (a writer killed mid-write, or one still
    writing), a whole record that fails its checksum is corruption.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.consumed = 0
        self.problem: str | None = None

    def events(self) -> Iterator[Any]:
        from google.protobuf.message import DecodeError  # noqa: PLC0415 - tensorboard's dependency
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader  # noqa: PLC0415
        from tensorboard.compat.proto.event_pb2 import Event  # noqa: PLC0415

        try:
            with self.path.open("rb"):  # a clear OSError (permission, gone) before TensorBoard's own
                pass
            records = RawEventFileLoader(str(self.path)).Load()
            for record in records:
                try:
                    event = Event.FromString(record)
                except DecodeError:
                    self.problem = f"record {self.count + 1} is not a TensorBoard event; the rest of the file skipped"
                    return
                self.consumed += len(record) + _HEADER + 4
                self.count += 1
                yield event
        except OSError as exc:
            self.problem = f"unreadable ({exc.strerror or exc})"
            return
        except Exception as exc:  # noqa: BLE001 - TensorBoard's reader raises its own error types
            self.problem = f"unreadable ({type(exc).__name__}: {exc})"
            return
        self.problem = self._tail()

    def _tail(self) -> str | None:
        size = _size(self.path)
        if self.consumed >= size:
            return None
        left = size - self.consumed
        with self.path.open("rb") as file:
            file.seek(self.consumed)
            header = file.read(_HEADER)
        length = int.from_bytes(header[:8], "little") if len(header) >= 8 else None
        where = f"after event {self.count:,} (byte {self.consumed:,} of {size:,})"
        if length is None or left < _HEADER + length + 4:
            return f"truncated {where}: the file ends inside a record (its writer was killed, or is still writing)"
        return f"corrupt record {where} (checksum mismatch); the rest of the file ({left:,} bytes) skipped"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _scalar(value: Any, plugins: dict[str, str]) -> float | None:
    """The number a summary value holds if it is a TensorBoard scalar (old or new style), else ``None``."""
    kind = value.WhichOneof("value")
    plugin = value.metadata.plugin_data.plugin_name
    if plugin:
        plugins[value.tag] = plugin  # writers put the metadata on a tag's first value only
    if kind == "simple_value":
        return value.simple_value
    if kind == "tensor" and plugins.get(value.tag) == "scalars":
        from tensorboard.util.tensor_util import make_ndarray  # noqa: PLC0415

        array = make_ndarray(value.tensor)
        return float(array.item()) if array.size == 1 else None
    return None


def _hparams(value: Any) -> dict[str, Any]:
    """The hyperparameters of an ``hparams`` session-start summary (``{}`` for its other summaries)."""
    from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: PLC0415

    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    if data.WhichOneof("data") != "session_start_info":
        return {}
    params: dict[str, Any] = {}
    for name, given in data.session_start_info.hparams.items():
        kind = given.WhichOneof("kind")
        if kind == "number_value":
            number = given.number_value
            # The file holds every number as a double; the script's 32 was an int, as live capture sends it.
            params[name] = int(number) if number.is_integer() and abs(number) < 2**53 else number
        elif kind in ("string_value", "bool_value"):
            params[name] = getattr(given, kind)
    return params


# Targets -------------------------------------------------------------------------------------


@dataclass
class _Existing:
    """A run already in MLflow that a log dir's points go into."""

    run_id: str
    name: str | None
    instance_id: str
    writer: str | None  # the writer name its live capture gave this log dir
    log_dir: str  # the log dir as its tag holds it
    params: dict[str, str]
    keys: set[str]


class MlflowTarget:
    """Delivers batches into MLflow on one thread while the caller reads the next events.

    Reads what runs already hold through MLflow's own client; writes through the exporter's
    :class:`MlflowWriter` with the spool's retry (:func:`~opentelemetry.exporter.mlflow.spool.deliver`).
    """

    def __init__(self, tracking_uri: str | None, experiment: str | None) -> None:
        from mlflow.tracking import MlflowClient  # noqa: PLC0415 - 1-4 s to import, only for this command

        self.uri = tracking_uri or default_tracking_uri()
        self.writer = MlflowWriter(self.uri, timeout=30.0)
        self.client = MlflowClient(self.uri)
        self.experiment = experiment
        self.sent = 0
        self.error: Exception | None = None
        self._runs: list[Any] | None = None
        self._queue: queue.Queue[RunBatch | Status | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._loop, name="tracelet-import", daemon=True)
        self._thread.start()

    @property
    def where(self) -> str:
        experiment = self.experiment or "the default experiment"
        return f"MLflow {public_uri(self.uri)} ({experiment})"

    def existing(self, log_dir: Path, instance_id: str) -> tuple[_Existing | None, int]:
        """The run that already holds ``log_dir`` (see the module docstring), and how many claim it."""
        wanted = components(str(log_dir))
        matches: list[tuple[int, int, _Existing]] = []
        for run in self._all_runs():
            tags = run.data.tags
            for tag, value in tags.items():
                if tag != LOG_DIR and not tag.startswith(LOG_DIR + "."):
                    continue
                given = components(value)
                if os.path.isabs(value):  # written by an import, or by a script that gave an absolute path
                    if given != wanted:
                        continue
                    rank = 0
                elif given and wanted[-len(given) :] == given:  # relative to the training's working directory
                    rank = 0 if tags.get(INSTANCE_ID) == instance_id else 1
                else:
                    continue
                writer = tag[len(LOG_DIR) + 1 :] if tag != LOG_DIR else ""
                found = _Existing(
                    run.info.run_id,
                    run.info.run_name,
                    tags.get(INSTANCE_ID, ""),
                    writer,
                    value,
                    dict(run.data.params),
                    set(run.data.metrics),
                )
                matches.append((rank, int(run.info.start_time or 0), found))
                break
        if not matches:
            return None, 0
        matches.sort(key=lambda match: (match[0], match[1]))
        return matches[0][2], len(matches)

    def history(self, run_id: str, key: str) -> Counter[tuple[int, int]]:
        """How often each (step, timestamp) of ``key`` is in the run."""
        return Counter((m.step, m.timestamp) for m in self._call(self.client.get_metric_history, run_id, key))

    def _all_runs(self) -> list[Any]:
        if self._runs is None:
            from mlflow.entities import ViewType  # noqa: PLC0415

            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or DEFAULT_EXPERIMENT_ID
            if self.experiment:
                found = self._call(self.client.get_experiment_by_name, self.experiment)
                if found is None:
                    self._runs = []
                    return self._runs
                experiment_id = found.experiment_id
            runs: list[Any] = []
            token = None
            while True:
                page = self._call(
                    self.client.search_runs,
                    [experiment_id],
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=1000,
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    break
            self._runs = runs
        return self._runs

    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:
            return function(*args, **kwargs)
        except MlflowException as exc:
            raise ImportFailed(f"MLflow at {public_uri(self.uri)}: {exc.message}") from None

    def send(self, item: RunBatch | Status) -> None:
        """Queues ``item``; raises :class:`ImportFailed` once the sending thread has stopped on an error."""
        while True:
            if self.error is not None:
                raise ImportFailed(str(self.error))
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Waits until everything queued is in MLflow; :class:`ImportFailed` if it could not be."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.writer.close()
        if self.error is not None:
            raise ImportFailed(str(self.error))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain: the caller stops at its next send
            try:
                deliver(self.writer, item, None, RETRY_FOR, command="tracelet import")
            except (MlflowUnavailable, MlflowRejected) as exc:
                self.error = exc
                continue
            if isinstance(item, RunBatch):
                self.sent += len(item.metrics)


class OtlpTarget:
    """Sends flat points as OTLP metrics (what live capture's SDK would export) to one endpoint."""

    def __init__(self, url: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

        from tracelet.core.pipeline import otlp_url  # noqa: PLC0415

        self.url = otlp_url(url) or url
        self._exporter = OTLPMetricExporter(endpoint=self.url)
        self.sent = 0
        self.error: Exception | None = None

    @property
    def where(self) -> str:
        return f"OTLP {self.url}"

    def export(self, flats: list[Flat]) -> None:
        from opentelemetry.sdk.metrics import Exemplar  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
            Gauge,
            Metric,
            MetricExportResult,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

        if not flats:
            return
        resource = flats[0][0]
        now = time.time_ns()
        metrics: dict[str, list[Any]] = {}
        points = 0
        for _resource, name, attributes, value, exemplars in flats:
            kept = [Exemplar(dict(extra), number, ns, None, None) for number, ns, extra in exemplars]
            points += len(kept) if name == SCALAR else 0
            last = kept[-1].time_unix_nano if kept else now
            metrics.setdefault(name, []).append(NumberDataPoint(dict(attributes), 0, last, value, exemplars=kept))
        data = MetricsData(
            [
                ResourceMetrics(
                    Resource(dict(resource)),
                    [
                        ScopeMetrics(
                            InstrumentationScope("tracelet.import"),
                            [Metric(name, None, None, Gauge(data_points)) for name, data_points in metrics.items()],
                            None,
                        )
                    ],
                    None,
                )
            ]
        )
        if self._exporter.export(data) is not MetricExportResult.SUCCESS:
            raise ImportFailed(f"the OTLP endpoint {self.url} did not take the points (see the message above)")
        self.sent += points

    def close(self) -> None:
        self._exporter.shutdown()


# The import ----------------------------------------------------------------------------------


def instance_id(log_dir: Path) -> str:
    """The ``service.instance.id`` of a run the import creates: the same for the same log dir every time."""
    return f"{SERVICE}-{hashlib.sha1(str(log_dir).encode()).hexdigest()[:16]}"


class Importer:
    """Imports log dirs into one target; ``progress(bytes_read, points_sent)`` is called after each chunk."""

    def __init__(
        self,
        target: MlflowTarget | OtlpTarget,
        experiment: str | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> None:
        self.target = target
        self.experiment = experiment
        self.summary = Summary()
        self._mapper = Mapper(experiment)
        self._progress = progress
        self._done_bytes = 0

    def run(self, log_dirs: Iterable[LogDir]) -> Summary:
        """Imports every log dir; a target failure raises :class:`ImportFailed`, with the summary filled so far."""
        started = time.perf_counter()
        try:
            for log_dir in log_dirs:
                self._one(log_dir)
            if isinstance(self.target, MlflowTarget):
                self.target.close()
        finally:
            self.summary.points_sent = self.target.sent
            self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _resource(self, log_dir: LogDir) -> tuple[dict[str, Any], _Existing | None]:
        """The resource live capture would have given this log dir's run, and the run found for it."""
        own = instance_id(log_dir.path)
        resource: dict[str, Any] = {SERVICE_NAME: SERVICE, INSTANCE_ID: own, RUN_NAME: log_dir.name}
        if self.experiment:
            resource[EXPERIMENT_NAME] = self.experiment
        if not isinstance(self.target, MlflowTarget):
            return resource, None
        existing, claims = self.target.existing(log_dir.path, own)
        if existing is None:
            return resource, None
        resource.update({RUN_ID: existing.run_id, INSTANCE_ID: existing.instance_id or own})
        if existing.name:
            resource[RUN_NAME] = existing.name
        if claims > 1:
            self.summary.problems.append(
                f"{log_dir.path}: {claims} MLflow runs hold this log dir; its points went into the oldest, "
                f"{existing.run_id}"
            )
        return resource, existing

    def _one(self, log_dir: LogDir) -> None:
        resource, existing = self._resource(log_dir)
        written_dir = existing.log_dir if existing is not None else str(log_dir.path)
        writer = existing.writer if existing is not None else None
        dedupe = _Dedupe(self.target, existing)
        series: dict[str, list[tuple[float, int, dict[str, Any]]]] = {}
        last_value: dict[str, float] = {}
        params: dict[str, Any] = {}
        times = [None, 0]  # first and last ms
        read = 0
        # MLflow stores a request of one key's rows fastest: send a series as soon as it fills one.
        per_series = MAX_METRICS if isinstance(self.target, MlflowTarget) else CHUNK_POINTS

        def flush(consumed: int, only: str | None = None) -> None:
            """Maps and sends the points read so far (``only``: of that tag alone)."""
            if START_TIME not in resource and times[0] is not None:
                resource[START_TIME] = times[0]
            flats: list[Flat] = []
            for tag in [only] if only is not None else list(series):
                attributes = {TAG: tag, LOG_DIR: written_dir}
                if writer is not None:
                    attributes[WRITER] = writer
                flats.append((resource, SCALAR, attributes, last_value[tag], series.pop(tag)))
            for name, value in params.items():
                attributes = {HPARAM_NAME: name, HPARAM_VALUE: value, LOG_DIR: written_dir}
                flats.append((resource, HPARAM, attributes, 1.0, ()))
            params.clear()
            if isinstance(self.target, OtlpTarget):
                self.target.export(flats)
            else:
                for batch in self._mapper.map(flats):
                    batch = dedupe.missing(batch)
                    self.summary.params_sent += len(batch.params)
                    if batch:
                        self.target.send(batch)
            if self._progress is not None:
                self._progress(self._done_bytes + consumed, self.target.sent)

        for path, rewrite in log_dir.files:
            reader = EventReader(path)
            plugins: dict[str, str] = {}
            pending = 0
            for event in reader.events():
                for value in event.summary.value:
                    number = _scalar(value, plugins)
                    if number is None:
                        if plugins.get(value.tag) == "hparams":
                            params.update(_hparams(value))
                        continue
                    tag = f"{value.tag}/{rewrite}" if rewrite else value.tag
                    ns = nanoseconds(event.wall_time)
                    points = series.get(tag)
                    if points is None:
                        points = series[tag] = []
                    points.append((number, ns, {STEP: event.step}))
                    last_value[tag] = number
                    ms = ns // 1_000_000
                    if times[0] is None or ms < times[0]:
                        times[0] = ms
                    times[1] = max(times[1], ms)
                    pending += 1
                    if len(points) >= per_series:
                        flush(reader.consumed, tag)
                if pending >= CHUNK_POINTS:
                    read += pending
                    pending = 0
                    flush(reader.consumed)
            read += pending
            self._done_bytes += _size(path)
            self.summary.files_read += 1
            if reader.problem:
                self.summary.problems.append(f"{path}: {reader.problem}")
        flush(0)
        self.summary.points_read += read
        self.summary.points_present += dedupe.present
        if existing is None and read:
            self.summary.runs_created += 1
        elif existing is not None:
            self.summary.runs_found += 1
        made_here = existing is None or existing.instance_id == instance_id(log_dir.path)
        if isinstance(self.target, MlflowTarget) and read and made_here:
            # A run the import made ends FINISHED at its last point (again, later, if training went on).
            run = run_key(resource, self.experiment)
            self.target.send(Status(run, "FINISHED", max(times[1], resource.get(START_TIME) or 0)))


class _Dedupe:
    """What of a batch its run lacks: points whose (step, timestamp) it holds fewer times, new params."""

    def __init__(self, target: MlflowTarget | OtlpTarget, existing: _Existing | None) -> None:
        self.target = target
        self.existing = existing
        self.present = 0
        self._counts: dict[str, Counter[tuple[int, int]]] = {}

    def missing(self, batch: RunBatch) -> RunBatch:
        existing = self.existing
        if existing is None or not isinstance(self.target, MlflowTarget):
            return batch
        metrics = []
        for row in batch.metrics:
            key, _value, timestamp, step = row
            if key not in existing.keys:
                metrics.append(row)
                continue
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = self.target.history(existing.run_id, key)
            if counts[(step, timestamp)] > 0:
                counts[(step, timestamp)] -= 1
                self.present += 1
            else:
                metrics.append(row)
        batch.metrics = metrics
        batch.params = {k: v for k, v in batch.params.items() if k not in existing.params}
        return batch


# The command ---------------------------------------------------------------------------------


def run_import(
    logdirs: list[str],
    tracking_uri: str | None = None,
    experiment: str | None = None,
    otlp: str | None = None,
    say: Callable[[str], object] | None = None,
) -> int:
    """``tracelet import``: 0 when everything was read and delivered, 1 when something was skipped or
    the target gave up, ``ValueError`` (exit 2) for a directory that does not exist or holds no event files."""
    report = say or (lambda text: print(text, flush=True))
    try:
        import tensorboard  # noqa: F401, PLC0415 - the event file reader
    except ImportError:
        raise ValueError("tracelet import reads event files with tensorboard: pip install 'tracelet[import]'") from None
    log_dirs = find_log_dirs(logdirs)
    if not log_dirs:
        raise ValueError(f"no TensorBoard event files (events.out.tfevents.*) under {', '.join(logdirs)}")
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
    target: MlflowTarget | OtlpTarget = OtlpTarget(otlp) if otlp else MlflowTarget(tracking_uri, experiment)
    total = sum(log_dir.size for log_dir in log_dirs)
    progress = _progress_bar(total)
    failed: str | None = None
    importer = Importer(target, experiment, progress.update if progress else None)
    if progress:
        progress.start()
    try:
        importer.run(log_dirs)
    except ImportFailed as exc:
        failed = str(exc)
    finally:
        if progress:
            progress.stop()
        if isinstance(target, OtlpTarget):
            target.close()
    summary = importer.summary
    report(summary.line(target.where))
    for problem in summary.problems:
        report(f"  {problem}")
    if failed:
        report(f"tracelet import: stopped: {failed}; what was sent stays, run the same command again to send the rest")
    return 1 if failed or summary.problems else 0


class _ProgressBar:
    """A rich progress bar over the bytes of the event files, with the points sent and points/s."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        self._started = time.perf_counter()
        self._progress = Progress(
            TextColumn("importing"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[points]:>12,} points"),
            TextColumn("{task.fields[rate]:>8,.0f} points/s"),
            TimeElapsedColumn(),
            transient=True,
        )
        self._task = self._progress.add_task("import", total=max(total, 1), points=0, rate=0.0)

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def update(self, done: int, points: int) -> None:
        elapsed = time.perf_counter() - self._started
        rate = points / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._task, completed=done, points=points, rate=rate)


def _progress_bar(total: int) -> _ProgressBar | None:
    """A progress bar on a terminal; nothing when the output goes to a file or a pipe."""

    return _ProgressBar(total) if sys.stdout.isatty() else None
