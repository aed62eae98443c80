"""What a user sees of a tracelet run in MLflow's own web UI, rendered by Debian's headless Chromium.

``examples/train.py`` runs against the session's ``mlflow server``; the browser then opens the
link the script printed, the run's page and its model-metrics page, and the assertions read the
rendered page (the DOM after MLflow's JavaScript ran), never MLflow's REST API. What is expected
comes from the script's own TensorBoard event files. Screenshots of the three pages stay in the
test's temporary directory (``ui/`` under it; the path is printed and kept in the test report's
user properties).
"""

from __future__ import annotations

import getpass
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from example_runs import ExampleRun
from support.chromium import Chromium, missing

import tracelet

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no browser: {missing()}")

# The check-circle MLflow's runs table draws for a FINISHED run (a cross for FAILED/KILLED, a clock for RUNNING).
FINISHED_ICON = "M11.53 6.53 7 11.06 4.47 8.53l1.06-1.06L7 8.94l3.47-3.47z"


def test_the_experiment_opens_on_its_runs_and_every_key_has_a_chart(
    run_example: Callable[..., ExampleRun], tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    example = run_example("train", experiment, "--steps", "30", "--project", experiment)
    run_id, experiment_id = example.run.info.run_id, example.run.info.experiment_id
    written = {tag: points for (_directory, tag), points in example.tensorboard().items()}
    (link,) = re.findall(r"look at it in the MLflow UI at (\S+)", example.stdout)
    base = example.client.tracking_uri
    artifacts = tmp_path / "ui"
    artifacts.mkdir()
    record_property("screenshots", str(artifacts))
    print(f"MLflow UI screenshots: {artifacts}")

    with Chromium(artifacts, width=1600, height=2400) as browser:
        # The link the script printed: the experiment, on its training runs, with the run listed.
        browser.open(link)
        # The table draws each row in pieces (pinned columns, the rest): one element per piece.
        row = f"Array.from(document.querySelectorAll('[role=row][row-id=\"{run_id}\"]'))"
        browser.wait_for(f"{row}.map(part => part.innerText).join(' ').includes('train.py')", what="the run's row")
        page = browser.evaluate(
            f"""({{
                route: location.hash,
                title: document.title,
                name: document.querySelector('[row-id="{run_id}"] a[href$="/runs/{run_id}"]')?.innerText,
                source: document.querySelector('[row-id="{run_id}"] [col-id="attributes.`Source`"]')?.innerText,
                status: Array.from(document.querySelectorAll('[row-id="{run_id}"] [col-id=runDateAndNestInfo] path'))
                    .map(path => path.getAttribute('d')),
                genai: document.body.innerText.includes('Token Usage'),
            }})"""
        )
        browser.screenshot(artifacts / "experiment.png")
        assert page["route"].startswith(f"#/experiments/{experiment_id}/runs"), page
        assert page["title"].startswith("Runs - Experiment"), page
        assert not page["genai"], "the experiment opened on MLflow's GenAI view"
        assert page["name"] == example.run.info.run_name == "train"
        assert page["source"].strip() == "train.py"
        assert FINISHED_ICON in page["status"], f"the run is not shown as finished: {page['status']}"

        # The run's page: its status, source, user and tracelet's description, as MLflow shows them.
        browser.open(f"{base}/#/experiments/{experiment_id}/runs/{run_id}")
        text = browser.wait_for(
            "document.body.innerText.includes('About this run') && document.body.innerText.includes('Status')"
            " && document.body.innerText",
            what="the run's overview",
        )
        browser.screenshot(artifacts / "run.png")
        assert re.search(r"Status\s+Finished", text), text
        assert re.search(rf"Created by\s+{re.escape(getpass.getuser())}", text), text
        assert re.search(r"Source\s+train\.py", text), text
        assert f"TensorBoard scalars of train.py, captured by tracelet {tracelet.__version__}." in text
        assert f"Log dirs: {example.run.data.tags['tensorboard.log_dir']}" in text

        # The model metrics: one chart per key, titled with the key, drawing every step TensorBoard wrote.
        browser.open(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
        cards = "Array.from(document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]'))"
        charts = browser.wait_for(
            f"""(() => {{
                const charts = {cards}.map(card => ({{
                    key: card.querySelector('[title]')?.getAttribute('title'),
                    points: card.querySelectorAll('.js-plotly-plot .scatterlayer .trace .points path').length,
                    line: card.querySelector('.js-plotly-plot .scatterlayer .trace path.js-line')?.getAttribute('d'),
                }}));
                return charts.length >= {len(written)} && charts.every(chart => chart.line) && charts;
            }})()""",
            what=f"{len(written)} drawn charts",
        )
        browser.screenshot(artifacts / "metrics.png")
    drawn = {chart["key"]: chart["points"] for chart in charts}
    assert drawn == {tag: len(points) for tag, points in written.items()}, json.dumps(charts, indent=1)
