"""The sender on failures of no known kind: not retried (retrying would hide a bug as an outage), kept on disk."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow_readback import T0, wait_for

from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey
from opentelemetry.exporter.mlflow.sender import Sender, State
from opentelemetry.exporter.mlflow.spool import read


class BrokenWriter:
    """A writer with a bug: every write raises ``TypeError``."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, batch: RunBatch, experiment_id: str | None = None) -> None:
        self.writes += 1
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    def finish(self, *_args: object) -> bool:
        return False

    def close(self) -> None:
        pass


def test_an_unexpected_error_is_not_retried_and_the_rows_wait_in_the_spool(tmp_path: Path, caplog) -> None:
    spool = tmp_path / "spool"
    sender = Sender("http://127.0.0.1:1", spool, instance="instance-bug")  # nothing is ever sent there
    broken = BrokenWriter()
    sender._writer = broken  # type: ignore[assignment]
    run = RunKey("instance-bug", "bugs", "bug")
    with caplog.at_level(logging.WARNING):
        sender.submit([RunBatch(run, [("loss", 0.5, T0 * 1000, 7)])])
        wait_for(lambda: broken.writes == 1 and sender.flush(1.0), what="the one attempt")
    assert broken.writes == 1  # not retried
    assert not sender.unavailable  # not an outage either
    told = [r for r in caplog.records if "failed on points of run bug as a whole" in r.getMessage()]
    assert len(told) == 1 and told[0].exc_info is not None  # with the traceback: it is a bug
    assert "opentelemetry-exporter-mlflow upload --spool-dir" in told[0].getMessage()
    parked = [
        metric
        for path in sorted(spool.glob("*.jsonl"))
        if not read(path)[0].get("journal")
        for entry in read(path)[1]
        if isinstance(entry, RunBatch)
        for metric in entry.metrics
    ]
    assert parked == [("loss", 0.5, T0 * 1000, 7)]
    sender.shutdown("FINISHED", 1.0)
    assert sender._state is State.STOPPED
    assert broken.writes == 1
