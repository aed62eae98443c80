"""The View that makes every TensorBoard point survive aggregation.

OpenTelemetry aggregates: a gauge exports one value per series per collection. Experiment tracking
needs every ``(step, value, wall time)``. The View below keeps only the series keys
(``tensorboard.tag``, ``tensorboard.log_dir``) as attributes, so the number of streams stays
tags x writers, and gives each series a reservoir that keeps every offered measurement as an
exemplar: its value, its own time (the call's wall time) and the dropped per-point attributes
(``tensorboard.step``, metadata) as ``filtered_attributes``. The exemplar filter must be
``always_on`` for the reservoir to be offered anything.

The recorder offers each series once per collection, with a
:class:`~opentelemetry.instrumentation.tensorboard.capture.ScalarBlock` of all its points in the
measurement's context; the reservoir keeps the blocks (no copy, shared by every reader) and hands
them out merged as one block. Measurements offered one by one (without a block) are kept as single
exemplars.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import Exemplar, ExemplarReservoir, MeterProvider
from opentelemetry.sdk.metrics.view import View
from opentelemetry.util.types import Attributes

from opentelemetry.instrumentation.tensorboard import _sdk_compat, lifecycle
from opentelemetry.instrumentation.tensorboard.capture import (
    LOG_DIR,
    SCALAR,
    TAG,
    WRITER,
    ScalarBlock,
    block_of,
    warn_once,
)
from opentelemetry.instrumentation.tensorboard.environment_variables import (
    OTEL_PYTHON_TENSORBOARD_MAX_POINTS,
    read_positive_int,
)

SERIES_KEYS = frozenset({TAG, LOG_DIR, WRITER})

# A reader that never collects (a Prometheus endpoint nobody scrapes) must not hold points forever.
DEFAULT_MAX_POINTS = 1_000_000
MAX_POINTS: int | None = None
"""Points of one series a reader keeps between two collections, when set in code; ``None`` (the
default) reads ``OTEL_PYTHON_TENSORBOARD_MAX_POINTS``, else :data:`DEFAULT_MAX_POINTS`."""


def max_points() -> int:
    """The per-series bound of a new reservoir (see :data:`MAX_POINTS`), read when a series first appears."""
    if MAX_POINTS is not None:
        return MAX_POINTS
    return read_positive_int(OTEL_PYTHON_TENSORBOARD_MAX_POINTS, DEFAULT_MAX_POINTS)


class KeepAllExemplarReservoir(ExemplarReservoir):
    """Keeps every measurement offered between two collections.

    Memory is bounded by one collection interval: ``collect`` hands everything over and starts
    empty. Each reader has its own reservoirs; one that is never collected stops keeping points
    past ``OTEL_PYTHON_TENSORBOARD_MAX_POINTS`` per series (default 1,000,000) and says so once.
    The SDK calls ``offer`` outside its own lock, hence the lock here.
    """

    def __init__(self, **_: Any) -> None:
        self._lock = threading.Lock()
        self._blocks: list[ScalarBlock] = []
        self._offered: list[tuple[float, int, Attributes]] = []
        self._kept = 0
        self._max = max_points()
        lifecycle.reset_in_forked_child(self)

    def offer(self, value: float, time_unix_nano: int, attributes: Attributes, context: Context) -> None:
        block = block_of(context)
        with self._lock:
            room = self._max - self._kept
            if block is None and room > 0:
                self._kept += 1
                self._offered.append((value, time_unix_nano, attributes))
                return
            if block is not None and room > 0:
                fits = len(block) <= room
                if not fits:  # keep what fits, as one point at a time would
                    block = ScalarBlock(block.points[:room])
                self._kept += len(block)
                self._blocks.append(block)
                if fits:
                    return
        warn_once(
            "reservoir-full",
            "%s: a reader has not collected %d points of one series; further points are not kept "
            "for it (a Prometheus endpoint keeps last values only; collect or scrape more often, "
            "or raise OTEL_PYTHON_TENSORBOARD_MAX_POINTS)",
            SCALAR,
            self._max,
        )

    def collect(self, point_attributes: Attributes) -> Sequence[Exemplar]:
        with self._lock:
            blocks, self._blocks = self._blocks, []
            offered, self._offered = self._offered, []
            self._kept = 0
        if not offered:
            if len(blocks) == 1:
                return blocks[0]
            if blocks:
                return ScalarBlock([point for block in blocks for point in block.points])
            return []
        keys = point_attributes.keys() if point_attributes else ()
        exemplars = [exemplar for block in blocks for exemplar in block]
        exemplars += [
            Exemplar(
                {k: v for k, v in attributes.items() if k not in keys} if attributes else None,
                value,
                time_unix_nano,
            )
            for value, time_unix_nano, attributes in offered
        ]
        return exemplars

    def _after_fork(self) -> None:
        # The parent's points are the parent's to export; a forked child starts empty and unlocked.
        self._lock = threading.Lock()
        self._blocks = []
        self._offered = []
        self._kept = 0


class TensorBoardView(View):
    """A View marked as tracelet's, so an instrumentor can tell whether a provider has it."""


def views() -> list[View]:
    """Views to pass to ``MeterProvider(views=...)`` for lossless TensorBoard capture."""
    return [
        TensorBoardView(
            instrument_name=SCALAR,
            attribute_keys=set(SERIES_KEYS),
            exemplar_reservoir_factory=lambda _aggregation: KeepAllExemplarReservoir,
        )
    ]


def has_views(provider: object) -> bool | None:
    """Whether an SDK ``MeterProvider`` was built with :func:`views` (``None``: cannot tell)."""
    if not isinstance(provider, MeterProvider):
        return None
    found = _sdk_compat.provider_views(provider)
    return None if found is None else any(isinstance(view, TensorBoardView) for view in found)
