"""The three packages install like any package: wheels, a clean virtualenv, used outside the repository.

``pip wheel`` builds the three wheels from this checkout; ``pip install`` of the three wheel files
goes into a new virtualenv; from a directory outside the repository, that venv's Python runs a
``SummaryWriter`` script under ``opentelemetry-instrument`` with the MLflow exporter, the
``tracelet`` command, and the main job (``examples/train.py``), against the session's
``mlflow server``.

Where the third-party dependencies come from (torch with CUDA alone is several GB, and nothing is
downloaded while the tests run): the new venv reads them from the test venv's site-packages
through a ``.pth`` line naming a folder of links to every entry there *except* the three project
distributions and their editable hooks. A ``.pth`` path entry does not run the ``.pth`` files
inside it, so the editable installs of this checkout stay invisible; the test asserts that every
project module and distribution the new venv imports comes from its own site-packages, i.e. from
the wheels. ``pip install --no-index`` still checks every requirement the wheels declare (it fails
on one the folder does not satisfy), and pip never uninstalls outside its venv. The console
script ``opentelemetry-instrument`` belongs to a dependency, so it is not in the new venv's
``bin``: the test calls its entry point exactly as pip's generated script does, in the new venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = {
    "opentelemetry_instrumentation_tensorboard": ROOT / "instrumentation" / "opentelemetry-instrumentation-tensorboard",
    "opentelemetry_exporter_mlflow": ROOT / "exporters" / "opentelemetry-exporter-mlflow",
    "tracelet": ROOT,
}
MODULES = ("tracelet", "opentelemetry.exporter.mlflow", "opentelemetry.instrumentation.tensorboard")

CAPTURE = """\
from torch.utils.tensorboard import SummaryWriter

writer = SummaryWriter("runs/capture")
for step in range(5):
    writer.add_scalar("loss", 1.0 / (step + 1), step)
writer.close()
"""

WHERE = """\
import importlib, importlib.metadata, json, sys
modules = {name: importlib.import_module(name).__file__ for name in sys.argv[1:]}
dists = {d: str(importlib.metadata.distribution(d).locate_file("")) for d in
         ("tracelet", "opentelemetry-exporter-mlflow", "opentelemetry-instrumentation-tensorboard")}
print(json.dumps({"modules": modules, "dists": dists}))
"""

# What pip's generated console script does, for a script of a dependency (see the module docstring).
INSTRUMENT = (
    "import sys; from importlib.metadata import entry_points; "
    "(script,) = entry_points(group='console_scripts', name='opentelemetry-instrument'); "
    "sys.argv[0] = 'opentelemetry-instrument'; sys.exit(script.load()())"
)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def dependencies_without_the_project(folder: Path) -> Path:
    """A folder of links to the test venv's site-packages entries, less the project's distributions and hooks."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in site.iterdir():
        name = entry.name
        project = any(name.startswith(f"{dist}-") and name.endswith(".dist-info") for dist in PROJECTS)
        if project or name.endswith(".pth") or name.startswith(("__editable__", "_editable_impl_")):
            continue
        (folder / name).symlink_to(entry)
    # The namespace folders hold no project code (the editable installs point at the checkout).
    assert not (folder / "opentelemetry" / "exporter" / "mlflow").exists()
    assert not (folder / "opentelemetry" / "instrumentation" / "tensorboard").exists()
    return folder


def test_wheels_install_into_a_clean_venv_and_work_outside_the_repository(mlflow_server, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
        + [str(path) for path in PROJECTS.values()],
        cwd=tmp_path,
    )
    built = sorted(wheels.glob("*.whl"))
    assert sorted(path.name.split("-")[0] for path in built) == sorted(PROJECTS)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    venv_site = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    deps = dependencies_without_the_project(tmp_path / "deps")
    (venv_site / "dependencies-of-the-test-venv.pth").write_text(f"{deps}\n")
    run([str(python), "-m", "pip", "install", "--no-index", "--quiet", *map(str, built)], cwd=tmp_path)

    outside = tmp_path / "outside"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_", "MLFLOW_", "PYTHON"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_TRACKING_URI=mlflow_server.uri,
        TRACELET_SPOOL_DIR=str(tmp_path / "spool"),
        OMP_NUM_THREADS="1",
    )

    where = json.loads(run([str(python), "-c", WHERE, *MODULES], outside, env).stdout)
    for name, path in {**where["modules"], **where["dists"]}.items():
        assert Path(path).resolve().is_relative_to(venv_site.resolve()), f"{name} comes from {path}, not the wheel"

    client = MlflowClient(mlflow_server.uri)

    # Zero code: the capture, the tensorboard distro and the MLflow exporter, from the wheels.
    experiment = f"wheels-{uuid.uuid4().hex[:8]}"
    (outside / "capture.py").write_text(CAPTURE)
    capture_env = {**env, "OTEL_METRICS_EXPORTER": "mlflow", "MLFLOW_EXPERIMENT_NAME": experiment}
    run([str(python), "-c", INSTRUMENT, "python", "capture.py"], outside, capture_env)
    (captured,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert captured.info.run_name == "capture" and captured.info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(captured.info.run_id, "capture/loss"))
    assert history == [(step, 1.0 / (step + 1)) for step in range(5)]

    # The tracelet command, from the wheel's console script.
    helped = run([str(venv / "bin" / "tracelet"), "--help"], outside, env).stdout
    assert "upload" in helped and "receive" in helped

    # The main job.
    experiment = f"wheels-main-{uuid.uuid4().hex[:8]}"
    trained = run(
        [str(python), str(ROOT / "examples" / "train.py"), "--steps", "20", "--project", experiment], outside, env
    )
    assert "look at it in the MLflow UI at" in trained.stdout
    (main,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert main.info.status == "FINISHED"
    assert len(client.get_metric_history(main.info.run_id, "train/loss")) == 20
    assert main.data.tags["mlflow.source.name"] == str(ROOT / "examples" / "train.py")
