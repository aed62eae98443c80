"""Each wheel carries the license text and a ``py.typed`` marker for its package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# project folder -> the typed package inside its wheel
PACKAGES = {
    ROOT / "instrumentation" / "opentelemetry-instrumentation-tensorboard": "opentelemetry/instrumentation/tensorboard",
    ROOT / "exporters" / "opentelemetry-exporter-mlflow": "opentelemetry/exporter/mlflow",
    ROOT: "tracelet",
}


@pytest.mark.parametrize("project", sorted(PACKAGES), ids=lambda path: path.name)
def test_the_wheel_has_the_license_and_py_typed(project: Path, tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert f"{PACKAGES[project]}/py.typed" in names
        (license_file,) = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes()
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        assert "License-Expression: Apache-2.0" in archive.read(metadata).decode()
