"""``optiscope import --from mlflow``: stores written by MLflow's own client, imported and read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.api import Api
from probe.cli import main
from tests.conftest import LiveServer

pytest.importorskip("pandas")
MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient


def _write_store(uri: str) -> dict[str, str]:
    """Experiment 'baselines' (an AdamW run, a failed run) and experiment 'other' (one run)."""
    client = MlflowClient(tracking_uri=uri)
    ids = {}
    base = client.create_experiment("baselines")
    run = client.create_run(base, run_name="adamw-lr1e-3", tags={"team": "opt"})
    client.log_param(run.info.run_id, "lr", "0.001")
    client.log_param(run.info.run_id, "optimizer", "adamw")
    for step in range(20):
        client.log_metric(run.info.run_id, "val/loss", 2.0 / (1 + step), timestamp=1_600_000_000_000 + 1000 * step,
                          step=step)
    client.set_terminated(run.info.run_id)
    ids["adamw"] = run.info.run_id
    failed = client.create_run(base, run_name="diverged")
    client.log_metric(failed.info.run_id, "val/loss", float("nan"), step=0)
    client.set_terminated(failed.info.run_id, status="FAILED")
    other = client.create_experiment("other")
    client.set_terminated(client.create_run(other, run_name="elsewhere").info.run_id)
    return ids


@pytest.fixture
def file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mlruns"
    with monkeypatch.context() as env:  # MLflow 3 writes a file store only when told it may
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        _write_store(root.as_uri())
    return root


def test_a_file_store_experiment_comes_in_with_params_metrics_and_times(
        cli_env: LiveServer, file_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "--from", "mlflow", f"{file_store.as_uri()}/baselines", "--project", "ml-old"]) == 0
    assert capsys.readouterr().out.count("new:") == 2  # only the named experiment
    with Api() as api:
        runs = api.runs(project="ml-old").set_index("name")
        assert set(runs.index) == {"adamw-lr1e-3", "diverged"}
        assert runs.loc["adamw-lr1e-3", "config.lr"] == 0.001
        assert runs.loc["adamw-lr1e-3", "config.optimizer"] == "adamw"
        assert "team=opt" in runs.loc["adamw-lr1e-3", "tags"]
        assert runs.loc["diverged", "status"] == "crashed" and runs.loc["adamw-lr1e-3", "status"] == "finished"
        history = api.run("adamw-lr1e-3", project="ml-old").history("val/loss", x="time")
        assert list(history["val/loss"]) == [2.0 / (1 + s) for s in range(20)]
        assert list(history["time"]) == [1_600_000_000.0 + s for s in range(20)]
        assert api.compare(["adamw-lr1e-3"], "val/loss", 0.5)["step"].iloc[0] == 3


def test_a_store_without_experiment_imports_all_and_twice_adds_nothing(
        cli_env: LiveServer, file_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["import", "--from", "mlflow", str(file_store), "--project", "ml-all"]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("new:") == 3
    assert main(argv) == 0
    assert capsys.readouterr().out.count("unchanged: 0 points") == 3
    with Api() as api:
        assert len(api.runs(project="ml-all")) == 3


def test_a_sqlite_store_by_experiment_name(cli_env: LiveServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _write_store(uri)
    assert main(["import", "--from", "mlflow", f"{uri}/other", "--project", "ml-sql-one"]) == 0
    assert main(["import", "--from", "mlflow", uri, "--project", "ml-sql"]) == 0
    with Api() as api:
        assert set(api.runs(project="ml-sql-one")["name"]) == {"elsewhere"}
        assert set(api.runs(project="ml-sql")["name"]) == {"adamw-lr1e-3", "diverged", "elsewhere"}
        history = api.run("adamw-lr1e-3", project="ml-sql").history("val/loss")
        assert list(history["val/loss"]) == [2.0 / (1 + s) for s in range(20)]


def test_unknown_experiment_or_store_is_one_line(cli_env: LiveServer, file_store: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "--from", "mlflow", f"{file_store.as_uri()}/nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no experiment 'nope'" in err
    assert main(["import", "--from", "mlflow", str(tmp_path / "no" / "store")]) == 1
    assert "no MLflow file store there" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()  # reading never creates a store
