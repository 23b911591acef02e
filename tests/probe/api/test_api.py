"""``probe.Api`` against a real server: what the probe logged comes back, exactly."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import probe
from probe.api import Api, ApiError
from tests.conftest import LiveServer

pd = pytest.importorskip("pandas")

N_LONG = 30_000


def _log_runs(server: LiveServer, home: Path) -> dict[str, str]:
    """Three runs: two AdamW seeds (same name) and a NorMuon run that reaches the target sooner."""
    ids = {}
    for label, name, lr, speed in (("adam0", "adamw", 0.001, 1.0), ("adam1", "adamw", 0.001, 1.0),
                                   ("normuon", "normuon-lr0.02", 0.02, 2.0)):
        run = probe.init(project="api-test", name=name, config={"lr": lr, "model": {"width": 256}},
                         tags=["api", label], url=server.url, token=server.token, home=home)
        for step in range(100):
            run.log({"loss": 1.0 / (1 + speed * step), "samples_seen": 32 * step}, step=step)
        run.log_array("sv.weight", np.array([3.0, 2.0, 0.5]), step=10, layer="fc1")
        run.log_array("sv.weight", np.array([4.0, 1.0, 0.25]), step=20, layer="fc1")
        run.log_array("sv.weight", np.array([9.0, 8.0]), step=10, layer="fc2")
        if label == "normuon":
            for step in range(N_LONG):
                run.log({"long": math.sin(step / 50.0) + (10.0 if step == 12_345 else 0.0)}, step=step)
        run.finish()
        ids[label] = run.id
    return ids


@pytest.fixture(scope="module")
def logged(served: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _log_runs(served, tmp_path_factory.mktemp("probe-home"))


@pytest.fixture
def api(served: LiveServer) -> Api:
    with Api(url=served.url, token=served.token) as client:
        yield client


def test_runs_frame_has_config_and_summary(api: Api, logged: dict[str, str]) -> None:
    frame = api.runs(project="api-test")
    assert set(frame["id"]) == set(logged.values())
    row = frame.set_index("id").loc[logged["normuon"]]
    assert row["name"] == "normuon-lr0.02"
    assert row["config.lr"] == 0.02 and row["config.model.width"] == 256
    assert row["summary.loss"] == 1.0 / (1 + 2.0 * 99)
    assert row["status"] == "finished" and row["last_step"] == N_LONG - 1
    assert isinstance(frame["created_at"].dtype, pd.DatetimeTZDtype)
    assert list(api.runs(project="api-test", filters={"lr": 0.02})["id"]) == [logged["normuon"]]
    assert set(api.runs(project="api-test", tags=["adam1"])["id"]) == {logged["adam1"]}
    assert api.runs(project="no-such-project").empty


def test_history_returns_the_logged_values(api: Api, logged: dict[str, str]) -> None:
    run = api.run(logged["adam0"])
    frame = run.history(["loss", "samples_seen"])
    assert list(frame["step"]) == list(range(100))
    assert list(frame["loss"]) == [1.0 / (1 + step) for step in range(100)]
    assert list(frame["samples_seen"]) == [32.0 * step for step in range(100)]
    by_samples = run.history("loss", x="samples")
    assert list(by_samples["samples"]) == [32.0 * step for step in range(100)]
    by_time = run.history("loss", x="time")
    times = by_time["time"].to_numpy()
    assert np.all(np.diff(times) >= 0) and abs(times[-1] - time.time()) < 600


def test_history_is_downsampled_by_the_server_keeping_the_spike(api: Api, logged: dict[str, str]) -> None:
    frame = api.run(logged["normuon"]).history("long", points=500)
    assert 2 <= len(frame) <= 500
    assert frame["long"].max() == math.sin(12_345 / 50.0) + 10.0  # min/max buckets keep the spike
    assert frame["step"].iloc[0] == 0 and frame["step"].iloc[-1] == N_LONG - 1


def test_arrays_are_steps_by_values(api: Api, logged: dict[str, str]) -> None:
    run = api.run(logged["adam0"])
    one = run.arrays("sv.weight", layer="fc1")
    assert list(one.index) == [10, 20]
    assert one.loc[10].tolist() == [3.0, 2.0, 0.5] and one.loc[20].tolist() == [4.0, 1.0, 0.25]
    every = run.arrays("sv.weight")
    assert every.loc[("fc2", 10)].tolist()[:2] == [9.0, 8.0]


def test_compare_is_the_time_to_target_table(api: Api, logged: dict[str, str]) -> None:
    table = api.compare([logged["adam0"], logged["normuon"]], "loss", 0.1)
    rows = table.set_index("run_id")
    assert rows.loc[logged["adam0"], "step"] == 9  # 1/(1+9) = 0.1
    assert rows.loc[logged["normuon"], "step"] == 5  # 1/(1+2*5) < 0.1 first at step 5
    assert rows.loc[logged["normuon"], "speedup_steps"] == pytest.approx(9 / 5)
    assert rows.loc[logged["adam0"], "samples_seen"] == 32 * 9


def test_names_resolve_or_say_why_not(api: Api, logged: dict[str, str]) -> None:
    assert api.run("normuon-lr0.02").id == logged["normuon"]
    with pytest.raises(ApiError, match="2 runs are named 'adamw'"):
        api.run("adamw")
    with pytest.raises(ApiError, match="no run named or with id 'nope'"):
        api.run("nope")


def test_http_attribute_is_the_configured_client(api: Api, served: LiveServer, logged: dict[str, str]) -> None:
    assert isinstance(api.http, httpx.Client)
    assert str(api.http.base_url).rstrip("/") == served.api
    answer = api.http.get(f"/runs/{logged['adam0']}")
    assert answer.status_code == 200 and answer.json()["name"] == "adamw"


def test_bad_token_and_down_server_are_one_line_errors(served: LiveServer, logged: dict[str, str]) -> None:
    with Api(url=served.url, token="not-a-token") as bad, pytest.raises(ApiError) as refused:
        bad.runs()
    assert refused.value.status == 401 and "401" in str(refused.value)
    from tests.pg_cluster import free_port

    with Api(url=f"http://127.0.0.1:{free_port()}", token="x") as down, pytest.raises(ApiError, match="cannot reach"):
        down.runs()


def test_missing_pandas_says_which_extra(monkeypatch: pytest.MonkeyPatch, api: Api) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match=r"optiscope\[notebook\]"):
        api.runs()


def test_reading_needs_neither_the_server_nor_the_dashboard() -> None:
    import subprocess
    import sys

    code = ("import sys, probe; probe.Api; import probe.api.client; "
            "print(sorted(m for m in ('fastapi', 'dash', 'sqlalchemy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # pandas too is imported only when a DataFrame is asked for
