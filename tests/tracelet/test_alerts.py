"""The alerting rules in ``prometheus/``: promtool's own unit tests, and a NaN loss firing in a real Prometheus."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support.env import subprocess_env
from support.prometheus import Prometheus, prometheus_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "tracelet-alerts.yml"
RULE_TESTS = ROOT / "prometheus" / "tracelet-alerts.test.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = prometheus_binary().with_name("promtool")
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_are_valid_and_pass_their_promtool_unit_tests() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    tested = _promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


TRAIN = """
import math, sys, time
from pathlib import Path
import tracelet
from torch.utils.tensorboard import SummaryWriter

exp = tracelet.start_logging(exp_name="diverges", backend="prometheus", prometheus_port=0)
print(exp.prometheus_url, flush=True)
writer = SummaryWriter("runs/train")
step = 0
go, stop = Path("go"), Path("stop")
while not stop.exists():
    loss = math.nan if go.exists() else 1.0 / (step + 1)  # the loss turns NaN once the test says so
    writer.add_scalar("train/Loss", loss, step)
    writer.add_scalar("accuracy", math.nan, step)  # not a loss: never alerts
    step += 1
    time.sleep(0.05)
tracelet.stop_logging()
"""


def _alerts(prometheus: Prometheus) -> list[dict]:
    return prometheus.query('ALERTS{alertname="TrainingLossNotFinite"}')


def _evaluated_after(prometheus: Prometheus, moment: float) -> bool:
    """Whether every rule group has been evaluated since ``moment`` (unix seconds)."""
    stamps = prometheus.last_evaluations()
    return bool(stamps) and min(stamps) > moment


def test_a_loss_turning_nan_fires_the_alert_in_prometheus_scraping_the_prometheus_backend(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN))
    training = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    prometheus = None
    try:
        url = training.stdout.readline().strip()  # http://127.0.0.1:<port>/metrics
        assert url.endswith("/metrics"), url
        target = url.removeprefix("http://").removesuffix("/metrics")
        prometheus = Prometheus(tmp_path / "prometheus", [target], job_name="train", rule_files=[RULES]).start()
        prometheus.wait_ready()
        loss = 'tensorboard_scalar{tensorboard_tag="train/Loss"}'
        prometheus.wait_for(loss)
        seen = time.time()
        deadline = time.monotonic() + 60
        while not _evaluated_after(prometheus, seen):  # the rules saw the finite loss
            assert time.monotonic() < deadline, "the rules were never evaluated"
            time.sleep(0.2)
        assert _alerts(prometheus) == []

        (tmp_path / "go").touch()
        firing = prometheus.wait_for('ALERTS{alertname="TrainingLossNotFinite",alertstate="firing"}', timeout=60)
        assert [alert["metric"]["tensorboard_tag"] for alert in firing] == ["train/Loss"]
        assert firing[0]["metric"]["job"] == "train" and firing[0]["metric"]["severity"] == "critical"
        assert firing[0]["metric"]["mlflow_run_name"] == "diverges"  # the run, from the resource
        (alert,) = [a for a in prometheus.alerts() if a["labels"]["alertname"] == "TrainingLossNotFinite"]
        assert alert["annotations"]["summary"] == "train/Loss is NaN in run diverges"
        (value,) = prometheus.query(loss)
        assert value["value"][1] == "NaN"  # Prometheus holds the NaN itself, as the script logged it
    finally:
        (tmp_path / "stop").touch()
        if prometheus is not None:
            prometheus.stop()
        training.wait(timeout=60)
    assert training.returncode == 0
