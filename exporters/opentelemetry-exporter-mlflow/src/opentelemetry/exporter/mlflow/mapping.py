"""From OpenTelemetry points to MLflow rows: the one mapping the exporter and the OTLP receiver share.

Both walk their own structure (SDK ``MetricsData`` in process, an OTLP
``ExportMetricsServiceRequest`` in the receiver) into the same flat stream, and :class:`Mapper`
turns that stream into :class:`RunBatch` es. The rules, all deterministic:

Run (from resource attributes, so points arriving later through a collector land in the same run)
    - identity: ``service.instance.id`` (one per process), stored as that run tag;
    - experiment: ``mlflow.experiment.name``, else the mapper's default (``MLFLOW_EXPERIMENT_NAME``);
    - run id: ``mlflow.run.id`` attaches to an existing run (``MLFLOW_RUN_ID``);
    - run name: ``mlflow.run.name``, else ``service.name`` unless it is the SDK's
      ``unknown_service``; ranks above 0 of a distributed job (``distributed.rank``) get their
      own run named ``<name>-rank<N>``, tagged ``distributed.rank``;
    - start time: ``mlflow.run.start_time`` (ms since the epoch: when the process started
      tracking), else the earliest point's wall time;
    - source, as MLflow's own client records it: ``mlflow.source.name`` (the script's path),
      ``mlflow.user`` and ``tracelet.version`` become run tags of those names, with
      ``mlflow.source.type`` = ``LOCAL`` where the script is known.

Metric key (from ``tensorboard.scalar`` exemplars)
    - ``<writer>/<tag>``: ``<tag>`` is the tag TensorBoard wrote (tensorboardX's cleaned tag),
      ``<writer>`` the series' ``tensorboard.writer`` name (the writer-name rule of
      :mod:`opentelemetry.instrumentation.tensorboard.writer_names`: the log dir's last
      component, none when that component names the run, parents prepended where two writers
      of a process would share one), and just ``<tag>`` when the name is empty. So
      ``runs/train`` and ``runs/validation`` both logging ``Loss`` give ``train/Loss`` and
      ``validation/Loss``; a default ``SummaryWriter()``, Lightning's ``version_N`` and
      ``runs/<env>__<exp>__<seed>__<time>`` keep ``Loss``; ``runs/resnet/train`` and
      ``runs/vit/train`` give ``train/Loss`` and ``vit/train/Loss``. Points without a
      ``tensorboard.writer`` attribute take the log dir's last component unless it names the run;
    - characters MLflow refuses become ``_``; empty, ``.`` and ``..`` path segments and
      leading, trailing or doubled ``/`` are removed or replaced; a key longer than 250
      characters keeps 241 and gains ``-`` and 8 hex digits of its SHA-1. Each rename is
      reported once;
    - in one run, two different series (tag, writer) never share a key: when renaming makes a
      second series land on a key another one holds (``a?b`` and ``a#b`` both ``a_b``), the
      second gains ``-`` and 8 hex digits of its SHA-1, reported once;
    - each writer's log dir goes on the run as tag ``tensorboard.log_dir`` (the writer with no
      name) or ``tensorboard.log_dir.<writer>``, so what the log dir said about the run (date,
      host, seed) is kept on the run instead of in every key;
    - the run's description (``mlflow.note.content``, what MLflow's UI shows as the run's
      description) says which script logged, through which tracelet version, and lists the
      log dirs with the key prefix of each; it grows as writers appear, unless the script sets
      that tag itself.

Point
    step = ``tensorboard.step`` (0 when absent, as TensorBoard writes it), timestamp = the
    exemplar's time in ms (the call's wall time), value as is (NaN and infinities included).

Metadata
    every other per-point attribute (``metric_type``, user metadata such as ``dataset``) becomes
    the run tag ``metric.<key>.<attribute>``.

Hyperparameters (``tensorboard.hparam`` series)
    run param ``<name>`` = ``str(value)`` (at most 6,000 characters).

Run tags (``mlflow.run.tag`` series, an info gauge with ``mlflow.tag.name`` and ``mlflow.tag.value``)
    run tag ``<name>`` = ``str(value)`` (at most 8,000 characters).

Every batch carries the params and tags its points imply, whether or not an earlier one did: which
of them MLflow already holds is for delivery to know, and
:class:`~opentelemetry.exporter.mlflow.writer.MlflowWriter` sends each again only when its value
changes. The mapper remembers only what mapping needs (the keys it gave, the log dirs it saw).

System and GPU samples (the system-metrics meter's ``system.*``, ``process.*``, ``hw.*``)
    ``system/...`` keys named as MLflow's own system metrics, step = the sample's index, timestamp =
    the collection time: the table is in :mod:`~opentelemetry.exporter.mlflow.system_keys`.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import AggregationTemporality

from opentelemetry.exporter.mlflow.reporting import ReportOnce
from opentelemetry.exporter.mlflow.system_keys import READ as SYSTEM_READ
from opentelemetry.exporter.mlflow.system_keys import SCOPE as SYSTEM_SCOPE
from opentelemetry.exporter.mlflow.system_keys import Sample, SystemKeys
from opentelemetry.instrumentation.tensorboard.capture import exemplar_fields
from opentelemetry.instrumentation.tensorboard.writer_names import components, names_the_run

SCALAR = "tensorboard.scalar"
HPARAM = "tensorboard.hparam"
TAG = "tensorboard.tag"
LOG_DIR = "tensorboard.log_dir"
WRITER = "tensorboard.writer"
STEP = "tensorboard.step"
HPARAM_NAME = "tensorboard.hparam.name"
HPARAM_VALUE = "tensorboard.hparam.value"
RUN_TAG = "mlflow.run.tag"
TAG_NAME = "mlflow.tag.name"
TAG_VALUE = "mlflow.tag.value"
RUN_END = "tensorboard.run.end"
RUN_STATUS = "tensorboard.run.status"
MAPPED = frozenset({SCALAR, HPARAM, RUN_TAG})  # the metrics this mapping reads

INSTANCE_ID = "service.instance.id"
SERVICE_NAME = "service.name"
EXPERIMENT_NAME = "mlflow.experiment.name"
RUN_ID = "mlflow.run.id"
RUN_NAME = "mlflow.run.name"
START_TIME = "mlflow.run.start_time"
RANK = "distributed.rank"
WORLD_SIZE = "distributed.world_size"
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
USER = "mlflow.user"
VERSION = "tracelet.version"
NOTE = "mlflow.note.content"
NOTE_LOG_DIRS = 20  # log dirs the description lists; the tags keep every one

MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

_DELTA = AggregationTemporality.DELTA  # the same number as OTLP's AGGREGATION_TEMPORALITY_DELTA

_logger = logging.getLogger(__name__)
_BAD = re.compile(r"[^/\w.\- :]")


@dataclass(frozen=True)
class RunKey:
    """Which MLflow run a point belongs to."""

    instance_id: str
    experiment_name: str | None = None
    run_name: str | None = None
    run_id: str | None = None
    rank: int | None = None
    tags: tuple[tuple[str, str], ...] = ()
    start_ms: int | None = field(default=None, compare=False)  # when the process started tracking


@dataclass
class RunBatch:
    """Rows for one run, in the order the points were recorded."""

    run: RunKey
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags)


# A flat point: resource attributes, metric name, series attributes, value, exemplars
# (value, time in ns, filtered attributes).
Exemplar = tuple[float, int, Mapping[str, Any]]
Flat = tuple[Mapping[str, Any], str, Mapping[str, Any], float, Iterable[Exemplar]]


def mlflow_name(name: str) -> str:
    """A name MLflow accepts for a metric, param or tag key (see the module docstring)."""
    key = _BAD.sub("_", name)
    parts = [part for part in key.split("/") if part]
    parts = ["_" if part == "." else part.replace("..", "__") if part.startswith("..") else part for part in parts]
    key = "/".join(parts) or "_"
    if len(key) > MAX_KEY:
        key = f"{key[: MAX_KEY - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    if posixpath.normpath(key) != key:  # what the rules above could not foresee
        key = key.replace(".", "_")
    return key


def writer_label(log_dir: str | None) -> str | None:
    """The writer name of a series that carries none: the log dir's last component, unless it names the run."""
    if not log_dir:
        return None
    parts = components(log_dir)
    if not parts or names_the_run(parts[-1]):
        return None
    return parts[-1]


def run_key(resource: Mapping[str, Any], default_experiment: str | None = None) -> RunKey:
    """The run identified by a resource (see the module docstring)."""
    instance = str(resource.get(INSTANCE_ID) or "")
    name = resource.get(RUN_NAME)
    if not name:
        service = str(resource.get(SERVICE_NAME) or "")
        name = None if not service or service.startswith("unknown_service") else service
    rank = _integer(resource.get(RANK))  # one that is not an integer stays a tag only
    if name and rank:
        name = f"{name}-rank{rank}"
    tags = {INSTANCE_ID: instance}
    for attribute in (SERVICE_NAME, RANK, WORLD_SIZE, SOURCE_NAME, USER, VERSION):
        if resource.get(attribute) not in (None, ""):
            tags[attribute] = str(resource[attribute])[:MAX_TAG_VALUE]
    if SOURCE_NAME in tags:
        tags[SOURCE_TYPE] = "LOCAL"
    return RunKey(
        instance_id=instance,
        experiment_name=str(resource.get(EXPERIMENT_NAME) or default_experiment or "") or None,
        run_name=str(name) if name else None,
        run_id=str(resource.get(RUN_ID) or "") or None,
        rank=rank,
        tags=tuple(sorted(tags.items())),
        start_ms=_integer(resource.get(START_TIME)),
    )


def describe(run: RunKey, log_dirs: Mapping[str, str]) -> str:
    """The run's description (markdown): the script, the tracelet version, the log dirs by key prefix.

    Short paragraphs, log dirs before the script's full path: MLflow's run page shows the first
    lines of a description and folds the rest.
    """
    tags = dict(run.tags)
    source = tags.get(SOURCE_NAME)
    script = posixpath.basename(source.replace("\\", "/")) if source else tags.get(SERVICE_NAME)
    by = f"tracelet {tags[VERSION]}" if tags.get(VERSION) else "tracelet"
    of = f" of `{script}`" if script else ""
    text = f"TensorBoard scalars{of}, captured by {by}."
    dirs = [
        f"`{log_dir}`" + (f" (keys `{label}/...`)" if label else "")
        for label, log_dir in list(log_dirs.items())[:NOTE_LOG_DIRS]
    ]
    if len(log_dirs) > NOTE_LOG_DIRS:
        dirs.append(f"and {len(log_dirs) - NOTE_LOG_DIRS} more (run tags `{LOG_DIR}.*`)")
    if dirs:
        text += f"\n\nLog dirs: {', '.join(dirs)}"
    if source:
        text += f"\n\nScript: `{source}`"
    return text[:MAX_TAG_VALUE]


def _integer(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


class Mapper:
    """Maps flat points to MLflow rows; remembers the keys it gave and what it reported, not what was delivered."""

    def __init__(self, default_experiment: str | None = None) -> None:
        self.default_experiment = default_experiment
        self._keys: dict[tuple[RunKey, str, str | None, str | None], str] = {}
        self._owners: dict[RunKey, dict[str, tuple[str, str, str]]] = {}  # key -> the series holding it
        self._metadata_tags: dict[tuple[str, str], str] = {}  # (key, attribute) -> run tag
        self._log_dirs: dict[RunKey, dict[str, str]] = {}  # writer label ("" for none) -> log dir
        self._notes: dict[RunKey, str] = {}  # the description of each run, as its log dirs make it
        self._described: set[RunKey] = set()  # runs whose script sets the description itself
        self._report = ReportOnce(_logger)
        self._system = SystemKeys()

    def key(self, run: RunKey, tag: str, log_dir: str | None, writer: str | None) -> str:
        """The MLflow key of one series in ``run`` (see the module docstring)."""
        series = (run, tag, log_dir, writer)
        cached = self._keys.get(series)
        if cached is not None:
            return cached
        label = writer if writer is not None else writer_label(log_dir)
        wanted = f"{label}/{tag}" if label else tag
        key = mlflow_name(wanted)
        if key != wanted:
            self.report(f"key:{wanted}", "MLflow does not accept the metric name %r; it is stored as %r", wanted, key)
        owners = self._owners.setdefault(run, {})
        # A writer name is unique in its process; without one, the log dir tells series apart.
        owner = (tag, label or "", "" if writer is not None else log_dir or "")
        held = owners.setdefault(key, owner)
        if held != owner:
            unique = mlflow_name(f"{key}-{hashlib.sha1(repr(owner).encode()).hexdigest()[:8]}")
            self.report(
                f"collision:{run}:{unique}",
                "metric %r%s and metric %r%s would both be stored as %r in one MLflow run; the second is stored as %r",
                held[0],
                f" of writer {held[1]!r}" if held[1] else "",
                tag,
                f" of writer {label!r}" if label else "",
                key,
                unique,
            )
            key = unique
            owners.setdefault(key, owner)
        self._keys[series] = key
        return key

    def report(self, what: str, message: str, *args: object) -> None:
        """Logs ``message`` the first time ``what`` happens."""
        self._report(what, message, *args)

    def map(self, points: Iterable[Flat], samples: Iterable[Sample] = ()) -> list[RunBatch]:
        """The rows of ``points`` (TensorBoard scalars, hparams, run tags) and ``samples`` (system metrics), by run."""
        batches: dict[RunKey, RunBatch] = {}
        runs: dict[int, RunKey] = {}
        alive: list[Mapping[str, Any]] = []  # keeps each resource's id() unique during the walk

        def batch_of(resource: Mapping[str, Any]) -> RunBatch:
            run = runs.get(id(resource))
            if run is None:
                run = runs[id(resource)] = run_key(resource, self.default_experiment)
                alive.append(resource)
            batch = batches.get(run)
            if batch is None:
                batch = batches[run] = RunBatch(run)
            return batch

        for resource, name, attributes, value, exemplars in points:
            if name not in MAPPED:
                continue
            batch = batch_of(resource)
            if name == SCALAR:
                self._scalars(batch, attributes, exemplars)
            elif name == HPARAM:
                self._hparam(batch, attributes, value)
            else:
                self._run_tag(batch, attributes)
        system: dict[RunKey, list[tuple[str, Mapping[str, Any], float, int, str]]] = {}
        for resource, name, attributes, value, time_unix_nano, kind in samples:
            system.setdefault(batch_of(resource).run, []).append((name, attributes, value, time_unix_nano, kind))
        for run, found in system.items():
            batches[run].metrics.extend(self._system.rows(run, found))
        return [batch for batch in batches.values() if batch]

    def _scalars(self, batch: RunBatch, attributes: Mapping[str, Any], exemplars: Iterable[Exemplar]) -> None:
        log_dir, writer = attributes.get(LOG_DIR), attributes.get(WRITER)
        log_dir = None if log_dir is None else str(log_dir)
        writer = None if writer is None else str(writer)
        key = self.key(batch.run, str(attributes.get(TAG, "")), log_dir, writer)
        if log_dir is not None:
            label = writer if writer is not None else writer_label(log_dir)
            self._set_tag(batch, mlflow_name(f"{LOG_DIR}.{label}") if label else LOG_DIR, log_dir)
            self._describe(batch, label or "", log_dir)
        append = batch.metrics.append
        for value, time_unix_nano, extra in exemplars:
            step = 0
            if extra:
                try:
                    step = int(extra.get(STEP, 0))
                except (TypeError, ValueError):  # from another producer: this point alone is refused
                    self.report(
                        f"step:{key}",
                        "metric %r: a point with step %r (not an integer) is dropped; the other points land",
                        key,
                        extra.get(STEP),
                    )
                    continue
                if len(extra) > (STEP in extra):
                    self._metadata(batch, key, extra)
            append((key, float(value), time_unix_nano // 1_000_000, step))

    def _describe(self, batch: RunBatch, label: str, log_dir: str) -> None:
        """The run's description, grown by each new log dir, unless the script sets its own."""
        dirs = self._log_dirs.setdefault(batch.run, {})
        note = self._notes.get(batch.run)
        if note is None or dirs.get(label) != log_dir:
            dirs[label] = log_dir
            note = self._notes[batch.run] = describe(batch.run, dirs)
        if batch.run not in self._described:
            self._set_tag(batch, NOTE, note)

    def _metadata(self, batch: RunBatch, key: str, extra: Mapping[str, Any]) -> None:
        tags = self._metadata_tags
        for attribute, value in extra.items():
            if attribute == STEP:
                continue
            tag = tags.get((key, attribute))
            if tag is None:
                tag = tags[(key, attribute)] = mlflow_name(f"metric.{key}.{attribute}")
            batch.tags[tag] = _text(value)[:MAX_TAG_VALUE]

    def _hparam(self, batch: RunBatch, attributes: Mapping[str, Any], value: float) -> None:
        name = attributes.get(HPARAM_NAME)
        if name is None:
            return
        param = mlflow_name(str(name))
        text = _text(attributes.get(HPARAM_VALUE, ""))
        if len(text) > MAX_PARAM_VALUE:
            self.report(f"param:{param}", "MLflow keeps %d characters of param %r", MAX_PARAM_VALUE, param)
            text = text[:MAX_PARAM_VALUE]
        batch.params[param] = text

    def _run_tag(self, batch: RunBatch, attributes: Mapping[str, Any]) -> None:
        name = attributes.get(TAG_NAME)
        if name is None:
            return
        tag = mlflow_name(str(name))
        if tag == NOTE:  # the script's own description: never replaced by tracelet's
            self._described.add(batch.run)
        self._set_tag(batch, tag, _text(attributes.get(TAG_VALUE, "")))

    def _set_tag(self, batch: RunBatch, tag: str, text: str) -> None:
        batch.tags[tag] = text[:MAX_TAG_VALUE]

    def forget(self, run: RunKey) -> None:
        """Nothing to forget: the mapper keeps no record of what was delivered (the writer does).

        Kept for callers that forget a run after a failed delivery; they need not.
        """

    # Walkers -----------------------------------------------------------------------------------

    def from_sdk(self, data: Any) -> list[RunBatch]:
        """Maps an SDK ``MetricsData`` (what a ``MetricExporter`` receives)."""
        return self.map(_walk_sdk(data), _samples_sdk(data))

    def from_otlp(self, request: Any) -> list[RunBatch]:
        """Maps an OTLP ``ExportMetricsServiceRequest`` protobuf (what the receiver receives)."""
        return self.map(_walk_otlp(request), _samples_otlp(request))

    def run_ends(self, request: Any) -> list[tuple[RunKey, str, int]]:
        """(run, status, end ms) of each run an OTLP request says has ended (``tensorboard.run.end``).

        OTLP has no end of run; the TensorBoard instrumentation observes ``tensorboard.run.end`` in
        the provider's last collection, with ``tensorboard.run.status`` FINISHED, FAILED or KILLED.
        The end time is that data point's time. A status MLflow does not know is ignored.
        """
        ends = []
        for resource_metrics in request.resource_metrics:
            resource = _attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != RUN_END or metric.WhichOneof("data") != "gauge":
                        continue
                    for point in metric.gauge.data_points:
                        status = _attributes(point.attributes).get(RUN_STATUS)
                        if status in ("FINISHED", "FAILED", "KILLED"):
                            run = run_key(resource, self.default_experiment)
                            ends.append((run, str(status), point.time_unix_nano // 1_000_000))
        return ends


def _text(value: Any) -> str:
    return str(value)


def _walk_sdk(data: Any) -> Iterator[Flat]:
    for resource_metrics in data.resource_metrics:
        resource = dict(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name not in MAPPED:
                    continue
                for point in getattr(metric.data, "data_points", ()):
                    block = getattr(point.exemplars, "points", None)
                    if block is not None:  # the TensorBoard instrumentation's ScalarBlock: no Exemplar objects
                        exemplars: Iterable[Exemplar] = map(exemplar_fields, block)
                    else:
                        exemplars = ((e.value, e.time_unix_nano, e.filtered_attributes) for e in point.exemplars or ())
                    yield resource, metric.name, point.attributes or {}, point.value, exemplars


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_any_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {item.key: _any_value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    return {item.key: _any_value(item.value) for item in key_values}


def _number(message: Any) -> float:
    return float(message.as_int) if message.WhichOneof("value") == "as_int" else message.as_double


def _walk_otlp(request: Any) -> Iterator[Flat]:
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name not in MAPPED:
                    continue
                kind = metric.WhichOneof("data")
                if kind not in ("gauge", "sum"):
                    continue
                for point in getattr(metric, kind).data_points:
                    exemplars = (
                        (_number(e), e.time_unix_nano, _attributes(e.filtered_attributes)) for e in point.exemplars
                    )
                    yield resource, metric.name, _attributes(point.attributes), _number(point), exemplars


def _samples_sdk(data: Any) -> Iterator[Sample]:
    for resource_metrics in data.resource_metrics:
        resource: dict[str, Any] | None = None
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != SYSTEM_SCOPE:
                continue
            if resource is None:
                resource = dict(resource_metrics.resource.attributes)
            for metric in scope_metrics.metrics:
                if metric.name not in SYSTEM_READ:
                    continue
                temporality = getattr(metric.data, "aggregation_temporality", None)  # a Sum's; a Gauge has none
                kind = "gauge" if temporality is None else "delta" if temporality == _DELTA else "cumulative"
                for point in getattr(metric.data, "data_points", ()):
                    yield resource, metric.name, point.attributes or {}, point.value, point.time_unix_nano, kind


def _samples_otlp(request: Any) -> Iterator[Sample]:
    for resource_metrics in request.resource_metrics:
        resource: dict[str, Any] | None = None
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != SYSTEM_SCOPE:
                continue
            if resource is None:
                resource = _attributes(resource_metrics.resource.attributes)
            for metric in scope_metrics.metrics:
                if metric.name not in SYSTEM_READ:
                    continue
                which = metric.WhichOneof("data")
                if which == "gauge":
                    kind = "gauge"
                elif which == "sum":
                    kind = "delta" if metric.sum.aggregation_temporality == _DELTA else "cumulative"
                else:
                    continue
                for point in getattr(metric, which).data_points:
                    attributes = _attributes(point.attributes)
                    yield resource, metric.name, attributes, _number(point), point.time_unix_nano, kind
