"""``optiscope import --from tensorboard``: event files written by the real SummaryWriter, read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from probe.api import Api
from probe.cli import main
from tests.conftest import LiveServer

pytest.importorskip("tensorboard")
pytest.importorskip("pandas")
SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter


def _write_logdir(root: Path) -> dict[str, list[float]]:
    """Two runs as people write them: scalars, a histogram, and hparams through add_hparams."""
    walls: dict[str, list[float]] = {}
    for name, lr, scale in (("adamw", 0.001, 1.0), ("sgd", 0.1, 2.0)):
        writer = SummaryWriter(str(root / name))
        walls[name] = []
        for step in range(0, 50, 5):
            wall = 1_700_000_000.0 + step * 3.0
            writer.add_scalar("train/loss", scale / (1 + step), step, walltime=wall)
            walls[name].append(wall)
            writer.add_scalar("lr", lr, step, walltime=wall)
        writer.add_histogram("fc1.weight", np.arange(100.0) * scale, 10, bins=4, walltime=1_700_000_100.0)
        writer.add_hparams({"lr": lr, "optimizer": name, "width": 256}, {"hparam/final": 0.5})
        writer.close()
    return walls


def test_scalars_histograms_hparams_and_wall_times_come_in(cli_env: LiveServer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    logdir = tmp_path / "logs"
    walls = _write_logdir(logdir)
    assert main(["import", "--from", "tensorboard", str(logdir), "--project", "tb-old"]) == 0
    out = capsys.readouterr().out
    assert out.count("new:") == 2
    with Api() as api:
        runs = api.runs(project="tb-old").set_index("name")
        assert set(runs.index) == {"adamw", "sgd"}
        assert runs.loc["sgd", "config.lr"] == 0.1 and runs.loc["sgd", "config.optimizer"] == "sgd"
        assert runs.loc["adamw", "config.width"] == 256
        assert runs.loc["adamw", "status"] == "finished"
        run = api.run("adamw", project="tb-old")
        history = run.history(["train/loss", "lr"], x="time")
        assert list(history["step"]) == list(range(0, 50, 5))
        # TensorBoard stores scalars as float32: they come back as TensorBoard reads them
        assert list(history["train/loss"]) == [float(np.float32(1.0 / (1 + s))) for s in range(0, 50, 5)]
        assert list(history["time"]) == pytest.approx(walls["adamw"], abs=1e-3)
        hist = run.arrays("histogram", layer="fc1.weight")
        assert list(hist.index) == [10]
        edges = hist.loc[10].to_numpy().reshape(-1, 3)
        assert edges[:, 2].sum() == 100  # every value counted in some bucket
        table = api.compare([run, api.run("sgd", project="tb-old")], "train/loss", 0.1)
        assert table.set_index("name").loc["adamw", "step"] == 10


def test_importing_twice_creates_nothing_new_and_a_grown_logdir_adds_only_new_steps(
        cli_env: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logdir = tmp_path / "logs"
    _write_logdir(logdir)
    argv = ["import", "--from", "tensorboard", str(logdir), "--project", "tb-twice"]
    assert main(argv) == 0
    with Api() as api:
        before = api.runs(project="tb-twice")
        counts = {k["key"]: k["count"] for k in api.run("adamw", project="tb-twice").keys()["scalars"]}
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("unchanged: 0 points, 0 arrays") == 2
    writer = SummaryWriter(str(logdir / "adamw"))  # training went on: a new event file
    writer.add_scalar("train/loss", 0.01, 100)
    writer.close()
    assert main(argv) == 0
    with Api() as api:
        after = api.runs(project="tb-twice")
        assert sorted(after["id"]) == sorted(before["id"])
        run = api.run("adamw", project="tb-twice")
        new_counts = {k["key"]: k["count"] for k in run.keys()["scalars"]}
        assert new_counts == {**counts, "train/loss": counts["train/loss"] + 1}
        assert run.history("train/loss")["step"].iloc[-1] == 100


def test_a_damaged_file_is_named_and_the_rest_imported(cli_env: LiveServer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    logdir = tmp_path / "logs"
    _write_logdir(logdir)
    event_file = next((logdir / "sgd").glob("events.out.tfevents.*"))
    data = event_file.read_bytes()
    event_file.write_bytes(data[: len(data) - 7])  # a run killed mid-write: last record cut short
    assert main(["import", "--from", "tensorboard", str(logdir), "--project", "tb-bad"]) == 1
    captured = capsys.readouterr()
    assert str(event_file) in captured.err and "truncated" in captured.err
    with Api() as api:
        runs = api.runs(project="tb-bad").set_index("name")
        assert set(runs.index) == {"adamw", "sgd"}
        sgd = api.run("sgd", project="tb-bad").history("train/loss")
        assert len(sgd) >= 9  # every record before the cut came in


def test_not_a_logdir_is_one_line(cli_env: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "--from", "tensorboard", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["import", "--from", "tensorboard", str(tmp_path / "empty")]) == 1
    assert "no TensorBoard event files" in capsys.readouterr().err
