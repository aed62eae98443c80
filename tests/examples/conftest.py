"""The ``run_example`` fixture: an example script run as a user runs it, against the session's MLflow server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from example_runs import EXAMPLES, ExampleRun, clean_environment
from mlflow.tracking import MlflowClient


@pytest.fixture
def run_example(mlflow_env: Any, tmp_path: Path) -> Callable[..., ExampleRun]:
    """Runs ``examples/<name>.py`` to completion; returns it with the MLflow runs it created in ``experiment``."""
    client = MlflowClient(tracking_uri=mlflow_env.uri)

    def run_ids(experiment: str) -> set[str]:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return set()
        return {r.info.run_id for r in client.search_runs([found.experiment_id], max_results=1000)}

    def run(name: str, experiment: str, *args: str, timeout: float = 600, then: str = "", **env: str) -> ExampleRun:
        script = EXAMPLES / f"{name}.py"
        if then:  # the example as written, followed by what a user would do next
            script = tmp_path / script.name
            script.write_text((EXAMPLES / script.name).read_text() + "\n" + textwrap.dedent(then))
        spool = tmp_path / "spool"
        before = run_ids(experiment)
        completed = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            env={**clean_environment(), "OMP_NUM_THREADS": "1", "TRACELET_SPOOL_DIR": str(spool), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert completed.returncode == 0, f"{name} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
        assert not list(spool.rglob("*.jsonl")), "points were left undelivered in the spool"
        new = run_ids(experiment) - before
        runs = sorted((client.get_run(run_id) for run_id in new), key=lambda r: r.info.start_time)
        return ExampleRun(script, tmp_path, completed.stdout, completed.stderr, client, runs)

    return run
