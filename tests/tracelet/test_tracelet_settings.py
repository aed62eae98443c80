"""TraceletSettings and start_logging's argument precedence (no pipeline is built here)."""

from __future__ import annotations

import pytest

from tracelet.settings import BACKENDS, TraceletSettings, resolve


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TraceletSettings.model_fields:
        monkeypatch.delenv(f"TRACELET_{name.upper()}", raising=False)


def test_environment_variables_fill_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_PROJECT", "env-project")
    monkeypatch.setenv("TRACELET_EXP_NAME", "env-run")
    monkeypatch.setenv("TRACELET_BACKEND", "mlflow, Prometheus")
    monkeypatch.setenv("TRACELET_EXPORT_INTERVAL", "0.5")
    monkeypatch.setenv("TRACELET_PROMETHEUS_PORT", "9999")
    monkeypatch.setenv("TRACELET_PATCH_TENSORBOARD", "false")
    settings = TraceletSettings()
    assert (settings.project, settings.exp_name) == ("env-project", "env-run")
    assert settings.backend == ["mlflow", "prometheus"]
    assert (settings.export_interval, settings.prometheus_port, settings.patch_tensorboard) == (0.5, 9999, False)


def test_unknown_backend_in_the_environment_names_the_valid_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACELET_BACKEND", "wandb")
    with pytest.raises(
        ValueError, match=r"TRACELET_\* environment variable.*'wandb'.*mlflow, otlp, prometheus, console"
    ):
        resolve(None)


def test_precedence_explicit_over_overrides_over_config_over_settings_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_PROJECT", "from-env")
    monkeypatch.setenv("TRACELET_EXP_NAME", "from-env")
    monkeypatch.setenv("TRACELET_TRACKING_URI", "sqlite:///from-env.db")
    monkeypatch.setenv("TRACELET_EXPORT_INTERVAL", "7")
    settings = TraceletSettings(
        project="from-settings", exp_name="from-settings", tracking_uri="sqlite:///from-settings.db"
    )
    config = {"project": "from-config", "exp_name": "from-config"}
    overrides = {"exp_name": "from-overrides"}
    resolved = resolve(settings, config, overrides, {"backend": "console"})
    assert resolved.exp_name == "from-overrides"
    assert resolved.project == "from-config"
    assert resolved.tracking_uri == "sqlite:///from-settings.db"
    assert resolved.export_interval == 7  # the settings object read it from the environment when it was made
    assert resolved.backend == ["console"]
    assert resolve(None, {"exp_name": "x"}).project == "from-env"


def test_explicit_arguments_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_BACKEND", "prometheus")
    assert resolve(None, {"backend": ["mlflow", "console", "mlflow"]}).backend == ["mlflow", "console"]


@pytest.mark.parametrize("backend", ["wandb", ["mlflow", "aim"], ""])
def test_unknown_or_missing_backend_names_the_valid_ones(backend: object) -> None:
    with pytest.raises(ValueError) as caught:
        resolve(None, {"backend": backend})
    message = str(caught.value)
    assert message.startswith("invalid tracelet settings: backend:")
    for name in BACKENDS:
        assert name in message


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ValueError, match="unknown tracelet setting 'exporter'; known settings: project, exp_name"):
        resolve(None, {"exporter": "mlflow"})


def test_out_of_range_values_are_named() -> None:
    with pytest.raises(ValueError, match="export_interval"):
        resolve(None, {"export_interval": 0})
    with pytest.raises(ValueError, match="prometheus_port"):
        resolve(None, {"prometheus_port": 70000})


def test_a_bad_tracking_uri_is_refused_before_the_running_experiment_is_stopped(tmp_path, monkeypatch) -> None:
    import tracelet  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    running = tracelet.start_logging(exp_name="keeps-running", backend="console", export_interval=60)
    try:
        with pytest.raises(ValueError, match="tracking_uri: tracking_uri 'not a uri' is a file store"):
            tracelet.start_logging(exp_name="refused", backend="mlflow", tracking_uri="not a uri")
        assert tracelet.get_active_experiment() is running
        assert running.is_running
    finally:
        tracelet.stop_logging()
