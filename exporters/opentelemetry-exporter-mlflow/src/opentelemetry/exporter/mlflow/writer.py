"""Synchronous delivery of :class:`~opentelemetry.exporter.mlflow.mapping.RunBatch` es into MLflow runs.

:class:`MlflowWriter` is shared by the in-process exporter (on its sender thread) and tracelet's
OTLP receiver (on its request threads): it finds or creates each batch's run, packs its rows into
requests (:mod:`~opentelemetry.exporter.mlflow.batching`), sends them through a
:mod:`~opentelemetry.exporter.mlflow.transport`, isolates what MLflow refuses by halving, and
remembers which params and tags MLflow acknowledged, so that they are sent again only when they change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from opentelemetry.exporter.mlflow.batching import chunks, halves, size
from opentelemetry.exporter.mlflow.errors import (
    MlflowExperimentDeleted,
    MlflowRejected,
    MlflowUnavailable,
)
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey
from opentelemetry.exporter.mlflow.reporting import ReportOnce
from opentelemetry.exporter.mlflow.tracking_uri import check_tracking_uri, default_tracking_uri
from opentelemetry.exporter.mlflow.transport import Transport, transport_for

_logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT_ID = "0"
STATUSES = frozenset({"FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"})

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class MlflowWriter:
    """Writes :class:`RunBatch` es into MLflow, synchronously; the one place that talks to MLflow.

    Contract of :meth:`write` (the exporter's sender thread and tracelet's OTLP receiver rely on it):

    - it returns once every row of the batch is stored, except rows MLflow refuses for their
      content (a changed param, a step outside int64, ...): those are dropped, each reported once
      (``logging.warning`` with MLflow's reason, per kind and key) and the rest is delivered;
    - it raises :class:`MlflowUnavailable` when MLflow cannot take the batch now (connection refused,
      timeout, HTTP 5xx, 429, a non-MLflow answer, an experiment deleted in MLflow until
      it is restored). Part of the batch may already be stored; sending the same batch again is
      safe, since MLflow stores an identical ``(key, step, timestamp, value)`` once (NaN and
      infinities included), re-logs identical params and overwrites tags. A receiver answers 503
      so the sender retries; for 401/403 it raises the subclass :class:`MlflowCredentialsRefused`,
      which the sender does not retry;
    - it raises :class:`MlflowRejected` when the whole batch can never be stored as addressed (an
      experiment name or run MLflow refuses to create): retrying will not help, the message says why.

    The run is resolved once per :class:`RunKey` and cached: an existing run id (``run.run_id``)
    is attached to; otherwise the experiment (``run.experiment_name``, else ``experiment_id``,
    else the default experiment) is searched for an active run tagged with the
    ``service.instance.id``, else a run is created with the run name and tags of the key. An
    experiment named by the key that does not exist yet is created as a training experiment
    (``mlflow.experimentKind`` = ``custom_model_development``); existing ones are left as they are. A run
    deleted meanwhile is replaced by a new one (reported once). Rows go out in ``runs/log-batch``
    requests of at most 1,000 metrics, 100 params, 100 tags and 1,000 entities, in order. Thread-safe.
    """

    def __init__(
        self, tracking_uri: str | None = None, timeout: float = 10.0, experiment_id: str | None = None
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.tracking_uri = check_tracking_uri(tracking_uri or default_tracking_uri())
        self.experiment_id = experiment_id or os.environ.get("MLFLOW_EXPERIMENT_ID") or None
        self._transport: Transport = transport_for(self.tracking_uri, timeout)
        self._lock = threading.Lock()
        self._request_timeout = timeout
        self._timed_out: set[tuple[str, str, str | None]] = set()  # creates that may have happened
        self._runs: dict[tuple[RunKey, str | None], str] = {}
        self._experiments: dict[str, str] = {}
        self._report = ReportOnce(_logger)
        # What MLflow acknowledged, by MLflow run id: ("param" | "tag", key) -> value. A param or tag
        # whose value MLflow already holds is not sent again; one that changed, or one whose request
        # failed, is.
        self._acknowledged: dict[str, dict[tuple[str, str], str]] = {}

    # Public API -----------------------------------------------------------------------------

    def write(self, batch: RunBatch, experiment_id: str | None = None) -> None:
        """Stores ``batch`` in its run (see the class docstring for what returning or raising means)."""
        if not batch:
            return
        start_ms = batch.run.start_ms
        if start_ms is None:
            start_ms = min((m[2] for m in batch.metrics), default=None)
        run_id = self.run_id(batch.run, experiment_id, start_ms)
        for chunk in chunks(self._unacknowledged(run_id, self._checked(batch))):
            if not chunk:
                continue
            try:
                self._send(run_id, chunk)
            except _RunGoneError as gone:
                run_id = self._replace(batch.run, experiment_id, run_id, gone.reason, start_ms)
                self._send(run_id, chunk)

    def run_id(self, run: RunKey, experiment_id: str | None = None, start_ms: int | None = None) -> str:
        """The MLflow run for ``run``, found or created (cached)."""
        cache = (run, experiment_id)
        found = self._runs.get(cache)
        if found is not None:
            return found
        with self._lock:
            found = self._runs.get(cache)
            if found is None:
                found = self._runs[cache] = self._resolve(run, experiment_id, start_ms, attach=True)
        return found

    def finish(
        self, run: RunKey, status: str = "FINISHED", end_ms: int | None = None, experiment_id: str | None = None
    ) -> bool:
        """Sets the terminal status of ``run`` if it exists in MLflow; returns whether it did.

        Raises :class:`MlflowUnavailable` like :meth:`write`. Never creates a run.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
        run_id = self._runs.get((run, experiment_id))
        if run_id is None:
            if run.run_id:
                run_id = run.run_id
            elif run.instance_id:
                try:
                    key = (self._experiment_id(run, experiment_id), run.instance_id, run.run_name)
                    run_id = self._find(key, wait=False)
                except MlflowRejected:
                    run_id = None
            if run_id is None:
                return False
        self._transport.update_run(run_id, status, int(end_ms if end_ms is not None else time.time() * 1000))
        if status != "RUNNING":
            self._acknowledged.pop(run_id, None)  # ended: should it take rows again, they all go
        return True

    def find_experiment(self, name: str) -> str | None:
        """The id of the active experiment ``name``, ``None`` if MLflow has none; never creates one."""
        try:
            found, active = self._transport.experiment(name)
        except MlflowRejected as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return found if active else None

    def close(self) -> None:
        self._transport.close()

    # Internals ------------------------------------------------------------------------------

    def _checked(self, batch: RunBatch) -> RunBatch:
        """``batch`` without points MLflow would store wrongly (steps or times outside int64)."""
        bad = [
            m
            for m in batch.metrics
            if type(m[3]) is not int
            or type(m[2]) is not int
            or not (_INT64_MIN <= m[3] <= _INT64_MAX and _INT64_MIN <= m[2] <= _INT64_MAX)
        ]
        if not bad:
            return batch
        metrics = []
        for key, value, timestamp, step in batch.metrics:
            try:
                step, timestamp = int(step), int(timestamp)
            except (TypeError, ValueError, OverflowError):
                step = _INT64_MAX + 1
            if _INT64_MIN <= step <= _INT64_MAX and _INT64_MIN <= timestamp <= _INT64_MAX:
                metrics.append((key, value, timestamp, step))
            else:
                self._report(
                    f"range:{key}",
                    "MLflow cannot store metric %r at step %r, timestamp %r (outside int64); that point is "
                    "dropped and further ones of this metric are not reported",
                    key,
                    step,
                    timestamp,
                )
        return RunBatch(batch.run, metrics, batch.params, batch.tags)

    def _unacknowledged(self, run_id: str, batch: RunBatch) -> RunBatch:
        """``batch`` without the params and tags whose value MLflow already acknowledged for ``run_id``."""
        known = self._acknowledged.get(run_id)
        if not known or not (batch.params or batch.tags):
            return batch
        params = {k: v for k, v in batch.params.items() if known.get(("param", k)) != v}
        tags = {k: v for k, v in batch.tags.items() if known.get(("tag", k)) != v}
        return RunBatch(batch.run, batch.metrics, params, tags)

    def _acknowledge(self, run_id: str, chunk: RunBatch) -> None:
        """Records the params and tags of ``chunk``: MLflow stored them (or refused them for good)."""
        if chunk.params or chunk.tags:
            known = self._acknowledged.setdefault(run_id, {})
            known.update({("param", k): v for k, v in chunk.params.items()})
            known.update({("tag", k): v for k, v in chunk.tags.items()})

    def _send(self, run_id: str, chunk: RunBatch) -> None:
        """One request; on a refusal, halves until the refused entity is alone, reports it, sends the rest."""
        try:
            self._transport.log_batch(run_id, chunk)
        except MlflowRejected as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST" or "must be in the 'active' state" in exc.message:
                raise _RunGoneError(exc.message) from None
            if size(chunk) <= 1:
                self._refused(chunk, exc)
                self._acknowledge(run_id, chunk)  # MLflow keeps a param's first value: this one never lands
                return
            first, second = halves(chunk)
            self._send(run_id, first)
            self._send(run_id, second)
            return
        self._acknowledge(run_id, chunk)

    def _refused(self, chunk: RunBatch, exc: MlflowRejected) -> None:
        if chunk.params:
            kind, key = "param", next(iter(chunk.params))
        elif chunk.tags:
            kind, key = "tag", next(iter(chunk.tags))
        else:
            kind, key = "metric", chunk.metrics[0][0]
        self._report(
            f"refused:{kind}:{key}",
            "MLflow refused %s %r of run %s and did not store it: %s (the rest is delivered; further "
            "refusals of this %s are not reported)",
            kind,
            key,
            chunk.run.run_name or chunk.run.instance_id,
            exc.message,
            kind,
        )

    def _experiment_id(self, run: RunKey, experiment_id: str | None) -> str:
        name = run.experiment_name
        if not name:
            return experiment_id or self.experiment_id or DEFAULT_EXPERIMENT_ID
        found = self._experiments.get(name)
        if found is not None:
            return found
        transport = self._transport
        try:
            found, active = transport.experiment(name)
        except MlflowRejected as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                found, active = transport.create_experiment(name), True
            except MlflowRejected as again:
                if again.code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found, active = transport.experiment(name)
        if not active:
            raise MlflowExperimentDeleted(
                f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) or delete it "
                "for good (mlflow gc) so that its points can be stored"
            )
        self._experiments[name] = found
        return found

    def _resolve(
        self,
        run: RunKey,
        experiment_id: str | None,
        start_ms: int | None,
        attach: bool,
        like: tuple[str, str | None] | None = None,
    ) -> str:
        """Finds or creates the run; ``like`` = (experiment id, name) of a run being replaced."""
        transport = self._transport
        if run.run_id and attach:
            try:
                stage, experiment, name = transport.run_info(run.run_id)
                if stage == "active":
                    return run.run_id
                like, reason = (experiment, name), "is deleted"
            except MlflowRejected as exc:
                reason = f"cannot be used ({exc.message})"
            self._report(
                f"attach:{run.run_id}",
                "MLflow run %s %s; the points go to a new run instead",
                run.run_id,
                reason,
            )
        if like is not None:
            experiment, name = like[0], run.run_name or like[1]
        else:
            experiment, name = self._experiment_id(run, experiment_id), run.run_name
        if not run.instance_id:
            start = int(start_ms if start_ms is not None else time.time() * 1000)
            return transport.create_run(experiment, name, dict(run.tags), start)
        # Find, else create, then find again: a create that timed out may still have happened (its
        # run shows up later), and two resolvers may create at once. The process's runs of one name
        # converge on the oldest; the empty extras made by retries are deleted.
        key = (experiment, run.instance_id, name)
        found = self._find(key, wait=key in self._timed_out)
        if found:
            return found
        start = int(start_ms if start_ms is not None else time.time() * 1000)
        try:
            created = transport.create_run(experiment, name, dict(run.tags), start)
        except MlflowUnavailable:
            self._timed_out.add(key)
            raise
        self._timed_out.discard(key)
        return self._find(key, wait=False, created=created) or created

    def _find(self, key: tuple[str, str, str | None], wait: bool, created: str | None = None) -> str | None:
        """The oldest active run of ``key`` (experiment, instance, name); deletes ``created`` if it is a duplicate.

        ``wait``: a create for ``key`` timed out, so its run may still appear: look again for up to
        one request timeout before answering that there is none.
        """
        experiment, instance, name = key
        deadline = time.monotonic() + (self._request_timeout if wait else 0.0)
        while True:
            runs = sorted(r for r in self._transport.find_runs(experiment, instance) if r[2] == name or name is None)
            if runs or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not runs:
            return None
        keep = runs[0][1]
        if created is not None and created != keep:
            with contextlib.suppress(MlflowUnavailable, MlflowRejected):
                self._transport.delete_run(created)
            self._report(
                f"duplicate:{created}",
                "MLflow already had run %s for these points (an earlier request that timed out had created it); "
                "the duplicate %s is deleted",
                keep,
                created,
            )
        return keep

    def _replace(self, run: RunKey, experiment_id: str | None, old: str, reason: str, start_ms: int | None) -> str:
        with self._lock:
            cache = (run, experiment_id)
            current = self._runs.get(cache)
            if current is not None and current != old:
                return current
            try:
                like: tuple[str, str | None] | None = self._transport.run_info(old)[1:]
            except MlflowRejected:
                like = None
            new = self._runs[cache] = self._resolve(run, experiment_id, start_ms, attach=False, like=like)
        self._report(
            f"gone:{old}", "MLflow run %s cannot take points any more (%s); they go to new run %s", old, reason, new
        )
        return new


class _RunGoneError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
