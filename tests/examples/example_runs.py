"""Reading back what an example script wrote: MLflow runs, TensorBoard event files, its own source.

Each example runs as its own process (as a user runs it) in a fresh working directory, with
``MLFLOW_TRACKING_URI`` pointing at the real ``mlflow server``. The expected values come from
the TensorBoard event files the script itself wrote (read with tbparse) or from its own code,
never from constants in the tests.
"""

from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from tbparse import SummaryReader


def clean_environment() -> dict[str, str]:
    """This process's environment (``mlflow_env`` set MLFLOW_TRACKING_URI) minus OpenTelemetry and tracelet settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_"))}


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class ExampleRun:
    """One finished example process and the MLflow runs it created."""

    script: Path
    cwd: Path
    stdout: str
    stderr: str
    client: MlflowClient
    runs: list[Run] = field(default_factory=list)

    @property
    def run(self) -> Run:
        assert len(self.runs) == 1, f"expected one new run, got {[r.info.run_name for r in self.runs]}"
        return self.runs[0]

    def history(self, key: str, run: Run | None = None) -> list[tuple[int, float, int]]:
        """(step, value, timestamp ms) of every stored point of ``key``, by step then time."""
        run_id = (run or self.run).info.run_id
        points = self.client.get_metric_history(run_id, key)
        return sorted((p.step, p.value, p.timestamp) for p in points)

    def keys(self, run: Run | None = None) -> set[str]:
        return set((run or self.run).data.metrics)

    def tensorboard(self, log_root: str = "runs") -> dict[tuple[str, str], list[tuple[int, float, float]]]:
        """What the script wrote to its event files: (writer dir, tag) -> [(step, value, wall time)]."""

        frame = SummaryReader(str(self.cwd / log_root), pivot=False, extra_columns={"dir_name", "wall_time"}).scalars
        written: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
        for row in frame.itertuples():
            written.setdefault((row.dir_name, row.tag), []).append((int(row.step), float(row.value), row.wall_time))
        return {key: sorted(points) for key, points in written.items()}

    def calls(self, function: str) -> list[ast.Call]:
        """The calls of ``function`` (a name or attribute) in the example's own source."""
        tree = ast.parse(self.script.read_text())
        return [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) == function or getattr(node.func, "id", None) == function)
        ]


def literal_arguments(call: ast.Call, names: list[str]) -> dict[str, Any]:
    """A call's literal arguments by parameter name (positional ones named by ``names``)."""
    values = {name: ast.literal_eval(arg) for name, arg in zip(names, call.args, strict=False)}
    values.update({kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg})
    return values


def assert_same_points(
    stored: list[tuple[int, float, int]], written: list[tuple[int, float, float]], exact: bool = False
) -> None:
    """Every point TensorBoard wrote is in MLflow once, same step, same value, same wall time (ms)."""
    assert [step for step, _, _ in stored] == [step for step, _, _ in written]
    for (step, value, timestamp), (_, tb_value, wall_time) in zip(stored, written, strict=True):
        # TensorBoard keeps float32; MLflow gets the Python float that was passed to add_scalar.
        assert value == tb_value if exact else math.isclose(value, tb_value, rel_tol=2**-23, abs_tol=1e-30), (
            step,
            value,
            tb_value,
        )
        # The double TensorBoard wrote, floored to the ms exactly (``wall_time * 1000`` in floats can round up).
        assert timestamp == math.floor(Fraction(wall_time) * 1000), (step, timestamp, wall_time)
