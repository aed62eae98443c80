"""The one retry policy: its delays, its jitter and its deadline, on an injected clock (no waiting)."""

from __future__ import annotations

import itertools

import pytest

from opentelemetry.exporter.mlflow.errors import MlflowUnavailable
from opentelemetry.exporter.mlflow.retry import RETRY, RetryPolicy


class Clock:
    """A monotonic clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_delays_start_at_the_first_double_and_stop_growing_at_the_cap() -> None:
    delays = list(itertools.islice(RetryPolicy(jitter=0).delays(), 8))
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_jitter_takes_off_at_most_its_fraction() -> None:
    policy = RetryPolicy(jitter=0.5)
    assert [policy.delay(n, rand=lambda: 0.0) for n in (1, 2, 7)] == [0.25, 0.5, 5.0]
    assert [policy.delay(n, rand=lambda: 1.0) for n in (1, 2, 7)] == [0.125, 0.25, 2.5]
    assert policy.delay(10_000, rand=lambda: 0.0) == 5.0  # a long outage does not overflow


def test_every_caller_uses_the_documented_policy() -> None:
    assert (RETRY.initial_delay, RETRY.multiplier, RETRY.max_delay, RETRY.jitter, RETRY.deadline) == (
        0.25,
        2.0,
        5.0,
        0.5,
        None,
    )
    assert RETRY.retry_after() == 1  # whole seconds, for an HTTP Retry-After header
    assert RetryPolicy(initial_delay=2.5).retry_after() == 3


def test_no_attempt_starts_past_the_deadline() -> None:
    clock = Clock()
    calls: list[float] = []

    def attempt() -> None:
        calls.append(clock.now)
        raise MlflowUnavailable("down")

    with pytest.raises(MlflowUnavailable):
        RetryPolicy(jitter=0, deadline=10).call(attempt, sleep=clock.sleep, clock=clock)
    # 0.25 + 0.5 + 1 + 2 + 4 = 7.75 s; the next wait (5 s) would start an attempt at 12.75 s, past 10 s.
    assert clock.slept == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert [round(t - 1000.0, 2) for t in calls] == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75]


def test_a_zero_deadline_allows_the_one_attempt() -> None:
    clock = Clock()
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise MlflowUnavailable("down")

    with pytest.raises(MlflowUnavailable):
        RETRY.with_deadline(0).call(attempt, sleep=clock.sleep, clock=clock)
    assert calls == [1] and clock.slept == []


def test_on_retry_hears_each_failure_and_its_wait() -> None:
    clock = Clock()
    heard: list[tuple[str, float]] = []
    failures = iter([MlflowUnavailable("first"), MlflowUnavailable("second")])

    def attempt() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "stored"

    result = RetryPolicy(jitter=0, deadline=60).call(
        attempt, on_retry=lambda error, wait: heard.append((str(error), wait)), sleep=clock.sleep, clock=clock
    )
    assert result == "stored"
    assert heard == [("first", 0.25), ("second", 0.5)] and clock.slept == [0.25, 0.5]


@pytest.mark.parametrize(
    "arguments",
    [{"initial_delay": 0}, {"multiplier": 0.5}, {"max_delay": 0.1}, {"jitter": 1.0}, {"deadline": -1}],
)
def test_a_policy_that_cannot_work_is_refused(arguments: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**arguments)


def test_the_deadline_counts_from_the_first_attempt_not_the_first_failure() -> None:
    clock = Clock()
    calls: list[float] = []

    def slow_attempt() -> None:  # each attempt takes 3 s before it fails
        calls.append(clock.now)
        clock.now += 3.0
        raise MlflowUnavailable("no answer within 3 s")

    with pytest.raises(MlflowUnavailable):
        RetryPolicy(jitter=0, deadline=10).call(slow_attempt, sleep=clock.sleep, clock=clock)
    # Attempts start at 0, 3.25 and 6.75 s; one more would start at 10.75 s, past the deadline.
    assert [round(t - 1000.0, 2) for t in calls] == [0.0, 3.25, 6.75]
