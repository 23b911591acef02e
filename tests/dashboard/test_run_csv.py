"""CSV export from the run page: a scalar panel's "CSV" button downloads every logged point of its
key (real Chromium, real server), and the download acts with the user's own read rights."""

from __future__ import annotations

import csv
import io
import math
import sys
import uuid

import pytest

from dashboard.api import ApiClient, NotFound
from dashboard.config import DashboardConfig

from .seed import Seeder
from .test_browser import TIMEOUT_MS, graphs_with_data

STEPS = list(range(0, 3000, 3))  # more points than a chart draws (downsampled), all in the CSV


def _values() -> list[float]:
    return [1.0 / (1.0 + 0.01 * s) for s in STEPS]


@pytest.fixture(scope="module")
def csv_run(server) -> str:  # noqa: ANN001
    rid = f"run-csv-{uuid.uuid4().hex[:6]}"
    seeder = Seeder(server.api, server.token)
    try:
        seeder.create_run(rid, name="csv-export", project="dash-csv")
        t0 = 1_700_000_000.0
        values = _values()
        values[7] = math.nan  # a non-finite point is exported too, readable as nan
        seeder.post(rid, scalars=[
            {"key": "loss", "steps": STEPS, "times": [t0 + s for s in STEPS],
             "values": ["NaN" if math.isnan(v) else v for v in values]},
            {"key": "acc", "steps": STEPS, "times": [t0 + s for s in STEPS], "values": [0.5] * len(STEPS)}])
        seeder.finish(rid)
    finally:
        seeder.close()
    return rid


@pytest.mark.browser
def test_csv_button_downloads_every_logged_point_of_the_panel(server, csv_run, page) -> None:  # noqa: ANN001
    page.goto(server.url + f"/runs/{csv_run}?keys=loss,acc")
    graphs_with_data(page, "#run-tab-scalars", 2)
    drawn = page.evaluate("document.querySelector('#run-scalars .js-plotly-plot').data[0].x.length")
    button = page.locator("#run-csv-bar button", has_text="loss")
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        button.click()
    download = info.value
    assert download.suggested_filename == f"{csv_run}-loss.csv"
    rows = list(csv.reader(io.StringIO(open(download.path(), encoding="utf-8").read())))
    assert rows[0] == ["run_id", "key", "step", "time", "value"]
    body = rows[1:]
    assert len(body) == len(STEPS) >= drawn  # every point, not only the drawn ones
    assert {r[0] for r in body} == {csv_run} and {r[1] for r in body} == {"loss"}
    assert [int(r[2]) for r in body] == STEPS
    assert [float(r[3]) for r in body] == [1_700_000_000.0 + s for s in STEPS]
    want = _values()
    got = [float(r[4]) for r in body]
    assert math.isnan(got[7]) and got[:7] == want[:7] and got[8:] == want[8:]
    # picking another key gives it a button too
    assert page.locator("#run-csv-bar button").all_inner_texts() == ["loss", "acc"]
    assert page.errors == []


@pytest.mark.usefixtures("request_ctx")
def test_csv_download_reads_with_the_users_rights(server, csv_run) -> None:  # noqa: ANN001
    api = ApiClient(DashboardConfig(api_url=server.url))
    own = api.as_user(server.token).series_csv(csv_run, ["acc"]).splitlines()
    assert own[0] == "run_id,key,step,time,value" and len(own) == 1 + len(STEPS)
    with pytest.raises(NotFound):  # a token scoped to another project: as if the run did not exist
        api.as_user(_scoped_token(server, project="elsewhere")).series_csv(csv_run, ["acc"])
    # the callback's work: a file for a readable run, a note (not a traceback) for a refused read
    scalars = sys.modules["dashboard.pages.run.tabs.scalars"]
    data, note = scalars.csv_download(csv_run, "acc")
    assert note == "" and data["filename"] == f"{csv_run}-acc.csv"
    assert data["content"].startswith("run_id,key")
    data, note = scalars.csv_download("no-such-" + csv_run, "loss")
    assert data is scalars.no_update and note.startswith("Cannot export loss:")


def _scoped_token(server, *, project: str) -> str:  # noqa: ANN001
    """A token that may read only ``project``, minted in the live server's own database."""
    from server.auth import create_token
    from server.db import make_engine, make_sessionmaker

    engine = make_engine(f"sqlite:///{server.home / 'optiscope.db'}")
    try:
        session = make_sessionmaker(engine)()
        try:
            return create_token(session=session, name="csv-scoped", project=project)[1]
        finally:
            session.close()
    finally:
        engine.dispose()
