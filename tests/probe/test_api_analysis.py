"""probe.api.analysis against a real ``optiscope serve`` subprocess over SQLite, with a plain httpx.Client."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from probe.api import analysis
from tests.conftest import LiveServer
from tests.server.analysis_runs import two_groups


@pytest.fixture
def http(live_server: Callable[..., LiveServer]) -> Iterator[httpx.Client]:
    server = live_server()
    with httpx.Client(base_url=server.api, headers=server.headers, timeout=30.0) as client:
        yield client


def test_time_to_target_and_why_as_dataframes(http: httpx.Client) -> None:
    project, adamw, normuon = two_groups(http.post)

    groups = analysis.groups(http, project=project)
    assert groups["group"].tolist() == ["gpt-adamw", "gpt-normuon"] and groups["n"].tolist() == [3, 3]

    ttt = analysis.time_to_target(http, "val_loss", 2.4, project=project, baseline={"optimizer": "adamw"})
    assert ttt.attrs["baseline"] == "gpt-adamw" and ttt.attrs["target"] == 2.4
    fast = ttt.set_index("group").loc["gpt-normuon"]
    assert fast["steps_mean"] == pytest.approx((49 + 74 + 74) / 3) and fast["n"] == 3
    assert fast["steps_ci_low"] > 1.0 and fast["steps_verdict"] == "faster" and fast["eval_interval"] == 25

    df = analysis.why(http, a={"optimizer": "normuon"}, baseline={"optimizer": "adamw"}, project=project,
                      at=100, top=5)
    assert len(df) == 5 and df.attrs["compared"] == 6 and df.attrs["a_run_ids"] == normuon
    first = df.iloc[0]
    assert (first["diagnostic"], first["layer"]) == ("neuron.cv", "blocks.*.mlp.fc.weight")
    assert bool(first["significant"]) and not bool(first["within_noise"])
    assert first["link"].startswith(f"/runs/{normuon[0]}?tab=neurons")
    assert df["within_noise"].iloc[1:].all()

    by_runs = analysis.why(http, a_runs=normuon[:1], baseline_runs=adamw[:1], run_ids=adamw + normuon,
                           match="loss", at=2.4)
    assert by_runs.attrs["matched_steps"] == {normuon[0]: 49, adamw[0]: 124}


def test_bad_parameter_raises_with_the_servers_reason(http: httpx.Client) -> None:
    project, _, _ = two_groups(http.post, seeds=1)
    with pytest.raises(httpx.HTTPStatusError, match="baseline") as info:
        analysis.time_to_target(http, "val_loss", 2.4, project=project, baseline={"optimizer": "sgd"})
    assert info.value.response.status_code == 422


def test_the_notebook_api_offers_the_same_analysis(live_server: Callable[..., LiveServer]) -> None:
    import probe

    server = live_server()
    with httpx.Client(base_url=server.api, headers=server.headers, timeout=30.0) as client:
        project, _adamw, normuon = two_groups(client.post)
    with probe.Api(url=server.url, token=server.token) as api:
        assert api.groups(project=project)["n"].tolist() == [3, 3]
        ttt = api.group_time_to_target("val_loss", 2.4, project=project, baseline={"optimizer": "adamw"})
        assert ttt.set_index("group").loc["gpt-normuon", "steps_verdict"] == "faster"
        df = api.why(a={"optimizer": "normuon"}, baseline={"optimizer": "adamw"}, project=project, at=100, top=3)
        assert len(df) == 3 and df.attrs["a_run_ids"] == normuon
