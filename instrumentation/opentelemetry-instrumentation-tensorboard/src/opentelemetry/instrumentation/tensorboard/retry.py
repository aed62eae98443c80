"""The one retry policy: how long to wait between attempts, for how long at most, and what to retry.

Every sender of this project's packages waits these delays: the durable exporter's journal
(:mod:`~opentelemetry.instrumentation.tensorboard.durable_exporter`), and the MLflow exporter's
sender, upload and OTLP receiver (``opentelemetry.exporter.mlflow.retry`` gives the policy MLflow's
failure classification). Exponential backoff, each delay shortened by up to a fraction at random so
that many jobs that lost one server do not come back in step. A server tells its senders when to
come back with :meth:`RetryPolicy.retry_after`, the policy's first delay in whole seconds.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, an optional deadline, and what is worth retrying.

    Attributes:
        initial_delay: seconds before the first retry.
        multiplier: each delay is this many times the one before it.
        max_delay: no delay is longer (before jitter).
        jitter: fraction of each delay taken off at random (0: none; 0.5: between half and all of it).
        deadline: seconds from the first attempt after which no attempt starts; ``None``: no limit.
        retryable: whether :meth:`call` retries an error; by default none is (a caller that retries
            says which failures are transient: retrying anything else only hides it).
    """

    initial_delay: float = 0.25
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.5
    deadline: float | None = None
    retryable: Callable[[BaseException], bool] = field(default=lambda _error: False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.initial_delay > 0 and self.multiplier >= 1 and self.max_delay >= self.initial_delay):
            raise ValueError(f"a retry policy needs 0 < initial_delay <= max_delay and multiplier >= 1: {self}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.deadline is not None and not self.deadline >= 0:
            raise ValueError(f"deadline must be a number of seconds >= 0, got {self.deadline!r}")

    def with_deadline(self, seconds: float | None) -> RetryPolicy:
        """The same delays, giving up ``seconds`` after the first attempt."""
        return replace(self, deadline=seconds)

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first), jitter included."""
        exponent = min(max(retry, 1) - 1, 64)  # 2**64 * any delay is past max_delay already
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        return base * (1.0 - self.jitter * rand())

    def delays(
        self, clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random
    ) -> Iterator[float]:
        """The waits of one sequence of attempts, started now; none that would start an attempt past the deadline."""
        ends = None if self.deadline is None else clock() + self.deadline  # now, not at the first wait

        def waits() -> Iterator[float]:
            retry = 0
            while True:
                retry += 1
                wait = self.delay(retry, rand)
                if ends is not None and clock() + wait > ends:
                    return
                yield wait

        return waits()

    def call(
        self,
        attempt: Callable[[], T],
        on_retry: Callable[[BaseException, float], object] | None = None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> T:
        """``attempt()`` until it returns; :attr:`retryable` failures are retried after each delay, until the deadline.

        Any other failure is raised at once; the last retryable one is raised when the deadline
        leaves no room for another attempt.
        ``on_retry(error, wait)`` is called before each wait.
        """
        waits = self.delays(clock, rand)
        while True:
            try:
                return attempt()
            except Exception as error:
                if not self.retryable(error):
                    raise
                wait = next(waits, None)
                if wait is None:
                    raise
                if on_retry is not None:
                    on_retry(error, wait)
                sleep(wait)

    def retry_after(self) -> int:
        """The first delay in whole seconds, at least 1: what an HTTP ``Retry-After`` header can say."""
        return max(1, math.ceil(self.initial_delay))
