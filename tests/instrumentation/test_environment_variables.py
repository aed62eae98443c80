"""The ``OTEL_PYTHON_TENSORBOARD_*`` settings: named in one module, read when used, a bad value a warning."""

from __future__ import annotations

import ast
import itertools
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opentelemetry.instrumentation.tensorboard import export_process, reservoir
from opentelemetry.instrumentation.tensorboard.capture import warn_once
from opentelemetry.instrumentation.tensorboard.environment_variables import (
    OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS,
    OTEL_PYTHON_TENSORBOARD_MAX_POINTS,
    read_flag,
    read_positive_float,
    read_positive_int,
    read_text,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "OTEL_PYTHON_TENSORBOARD_": ROOT / "instrumentation/opentelemetry-instrumentation-tensorboard/src/opentelemetry",
    "OTEL_EXPORTER_MLFLOW_": ROOT / "exporters/opentelemetry-exporter-mlflow/src/opentelemetry",
}


def _forget_warnings() -> None:
    """Lets a test see the once-only warning of a variable an earlier test may have warned about."""
    seen: set[str] = warn_once.__self__._seen  # type: ignore[attr-defined]
    seen.difference_update({key for key in seen if key.startswith("env:")})


@pytest.mark.parametrize("prefix", sorted(PACKAGES))
def test_each_variable_is_spelled_out_only_in_its_environment_variables_module(prefix: str) -> None:
    spelled: dict[str, set[str]] = {}
    for path in sorted(PACKAGES[prefix].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and re.fullmatch(f"{prefix}[A-Z_]+", text):
                spelled.setdefault(path.name, set()).add(text)
    names = spelled.pop("environment_variables.py", set())
    assert names, f"no {prefix}* variable is defined"
    assert not spelled, f"{prefix}* spelled out outside environment_variables.py: {spelled}"


@pytest.mark.parametrize("prefix", sorted(PACKAGES))
def test_every_variable_has_a_docstring(prefix: str) -> None:
    (module,) = PACKAGES[prefix].rglob("environment_variables.py")
    body = ast.parse(module.read_text()).body
    assigned = {
        node.targets[0].id
        for node in body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.startswith(prefix)
    }
    documented = {
        node.targets[0].id
        for node, following in itertools.pairwise(body)
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and f".. envvar:: {node.targets[0].id}" in str(following.value.value)
    }
    assert assigned and assigned <= documented, f"undocumented: {assigned - documented}"


def test_a_bad_max_points_does_not_break_the_import_and_warns_once_naming_the_variable() -> None:
    code = (
        "import opentelemetry.instrumentation.tensorboard\n"
        "from opentelemetry.instrumentation.tensorboard import reservoir\n"
        "print(reservoir.max_points(), reservoir.max_points())\n"
    )
    env = {**os.environ, OTEL_PYTHON_TENSORBOARD_MAX_POINTS: "a million"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(reservoir.DEFAULT_MAX_POINTS)] * 2
    warnings = [line for line in done.stderr.splitlines() if OTEL_PYTHON_TENSORBOARD_MAX_POINTS in line]
    assert len(warnings) == 1 and "'a million'" in warnings[0], done.stderr


def test_max_points_is_read_when_a_series_first_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OTEL_PYTHON_TENSORBOARD_MAX_POINTS, "50")
    assert reservoir.KeepAllExemplarReservoir()._max == 50
    monkeypatch.setattr(reservoir, "MAX_POINTS", 7)  # set in code: wins over the variable
    assert reservoir.KeepAllExemplarReservoir()._max == 7


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", True), ("false", False), ("0", False), (" OFF ", False), ("no", False), ("true", True), ("1", True)],
)
def test_export_process_reads_the_flag(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv(OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS, raw)
    assert export_process.enabled() is expected


def test_readers_fall_back_to_the_default_and_say_which_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _forget_warnings()
    for name, raw in (("FLAG", "maybe"), ("INT", "-3"), ("INT2", "2.5"), ("FLOAT", "nan"), ("FLOAT2", "0")):
        monkeypatch.setenv(f"TEST_SETTING_{name}", raw)
    with caplog.at_level(logging.WARNING):
        assert read_flag("TEST_SETTING_FLAG", False) is False
        assert read_positive_int("TEST_SETTING_INT", 4) == 4
        assert read_positive_int("TEST_SETTING_INT2", 4) == 4
        assert read_positive_float("TEST_SETTING_FLOAT", 1.5) == 1.5
        assert read_positive_float("TEST_SETTING_FLOAT2", 1.5) == 1.5
        assert read_flag("TEST_SETTING_FLAG", False) is False  # said once
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 5, said
    for name in ("FLAG", "INT", "INT2", "FLOAT", "FLOAT2"):
        assert any(message.startswith(f"TEST_SETTING_{name}=") for message in said), said


def test_readers_take_good_values_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SETTING_INT", " 12 ")
    monkeypatch.setenv("TEST_SETTING_FLOAT", "2.5")
    assert read_positive_int("TEST_SETTING_INT", 4) == 12
    assert read_positive_float("TEST_SETTING_FLOAT", 1.0) == 2.5
    monkeypatch.delenv("TEST_SETTING_NEW", raising=False)
    monkeypatch.setenv("TEST_SETTING_OLD", "/old")
    assert read_text("TEST_SETTING_NEW", "TEST_SETTING_OLD") == "/old"
    monkeypatch.setenv("TEST_SETTING_NEW", "/new")
    assert read_text("TEST_SETTING_NEW", "TEST_SETTING_OLD") == "/new"
    monkeypatch.setenv("TEST_SETTING_NEW", "  ")
    assert read_text("TEST_SETTING_NEW") is None
