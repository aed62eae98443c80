"""How rows are packed into MLflow ``runs/log-batch`` requests, within MLflow's limits and in order."""

from __future__ import annotations

from collections import deque
from typing import Any

from opentelemetry.exporter.mlflow.mapping import RunBatch

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
MAX_ENTITIES = 1000


def take(queue: deque[RunBatch]) -> RunBatch:
    """Removes one request's worth of rows from the head of ``queue`` (consecutive batches of one run).

    Batches are consumed in order, so every metric keeps its order; a partly taken head batch stays
    at the head with what is left. Limits are MLflow's ``log-batch`` limits. A param whose value
    differs from one already in the request ends it (MLflow would refuse the whole request).
    """
    head = queue[0]
    out = RunBatch(head.run)
    room = MAX_ENTITIES
    while queue and room:
        batch = queue[0]
        if batch.run != out.run:
            break
        if batch.params:
            if any(out.params.get(k, v) != v for k, v in batch.params.items()):
                break
            for key in list(batch.params):
                if room == 0 or len(out.params) >= MAX_PARAMS:
                    break
                out.params[key] = batch.params.pop(key)
                room -= 1
        if batch.tags and not batch.params:
            for key in list(batch.tags):
                if key not in out.tags and (room == 0 or len(out.tags) >= MAX_TAGS):
                    break
                if key not in out.tags:
                    room -= 1
                out.tags[key] = batch.tags.pop(key)
        if not batch.params and not batch.tags and batch.metrics:
            n = min(MAX_METRICS - len(out.metrics), room)
            if n >= len(batch.metrics):
                out.metrics.extend(batch.metrics)
                room -= len(batch.metrics)
                batch.metrics = []
            elif n > 0:
                out.metrics.extend(batch.metrics[:n])
                del batch.metrics[:n]
                room -= n
        if batch:
            break
        queue.popleft()
    return out


def chunks(batch: RunBatch) -> list[RunBatch]:
    """``batch`` cut into request-sized batches, without touching ``batch``."""
    queue = deque([RunBatch(batch.run, list(batch.metrics), dict(batch.params), dict(batch.tags))])
    out = []
    while queue:
        out.append(take(queue))
    return out


def halves(batch: RunBatch) -> tuple[RunBatch, RunBatch]:
    """``batch`` cut in two of (nearly) equal entity counts, params first, then tags, then metrics."""
    entities: list[tuple[str, Any]] = [("p", kv) for kv in batch.params.items()]
    entities += [("t", kv) for kv in batch.tags.items()]
    entities += [("m", m) for m in batch.metrics]
    middle = len(entities) // 2
    out = []
    for part in (entities[:middle], entities[middle:]):
        half = RunBatch(batch.run)
        for kind, item in part:
            if kind == "p":
                half.params[item[0]] = item[1]
            elif kind == "t":
                half.tags[item[0]] = item[1]
            else:
                half.metrics.append(item)
        out.append(half)
    return out[0], out[1]


def size(batch: RunBatch) -> int:
    """The entities of ``batch``, as MLflow counts them against its limits."""
    return len(batch.metrics) + len(batch.params) + len(batch.tags)
