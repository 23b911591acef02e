"""A run's series as CSV (``GET /runs/{id}/series?format=csv`` or ``Accept: text/csv``): every stored
point with its step and time, non-finite values readable, the same read scoping as JSON."""

from __future__ import annotations

import csv
import io
import math

import pytest

from tests.server.conftest import Api, uid


def _run_with_loss(api: Api, project: str | None = None) -> str:
    run = api.create_run(project=project)
    r = api.post(f"/runs/{run['id']}/batches", json={"scalars": [
        {"key": "loss", "steps": [0, 1, 2, 3, 4], "times": [100.0, 100.5, 101.0, 101.5, 102.0],
         "values": [2.5, 1.25, "NaN", 0.625, 0.3125]},
        {"key": "acc", "steps": [0, 2, 4], "times": [100.0, 101.0, 102.0], "values": [0.1, 0.2, 0.3]}]})
    assert r.status_code == 200, r.text
    return run["id"]


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_series_csv_has_every_point_with_step_time_and_value(api: Api) -> None:
    rid = _run_with_loss(api)
    r = api.get(f"/runs/{rid}/series", params={"key": ["loss", "acc", "never-logged"], "format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="{rid}-loss-acc-never-logged.csv"'
    rows = _rows(r.text)
    assert rows[0] == ["run_id", "key", "step", "time", "value"]
    loss = [row for row in rows[1:] if row[1] == "loss"]
    assert [int(row[2]) for row in loss] == [0, 1, 2, 3, 4]
    assert [float(row[3]) for row in loss] == [100.0, 100.5, 101.0, 101.5, 102.0]
    values = [float(row[4]) for row in loss]
    assert values[:2] == [2.5, 1.25] and math.isnan(values[2]) and values[3:] == [0.625, 0.3125]
    assert [(row[0], row[2], row[4]) for row in rows[1:] if row[1] == "acc"] == \
        [(rid, "0", "0.1"), (rid, "2", "0.2"), (rid, "4", "0.3")]
    assert len(rows) == 1 + 5 + 3  # an unknown key adds no rows


def test_series_csv_by_accept_header_step_range_and_json_default(api: Api) -> None:
    rid = _run_with_loss(api)
    r = api.get(f"/runs/{rid}/series", params={"key": "loss", "step_min": 1, "step_max": 3},
                headers={"Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert [row[2] for row in _rows(r.text)[1:]] == ["1", "2", "3"]
    js = api.get(f"/runs/{rid}/series", params={"key": "loss"})
    assert js.status_code == 200 and js.headers["content-type"].startswith("application/json")
    s = js.json()["series"][0]
    assert s["steps"] == [0, 1, 2, 3, 4] and s["y"][2] == "NaN"
    # ?format= wins over Accept; bad values name the field
    assert api.get(f"/runs/{rid}/series", params={"key": "loss", "format": "json"},
                   headers={"Accept": "text/csv"}).headers["content-type"].startswith("application/json")
    bad = api.get(f"/runs/{rid}/series", params={"key": "loss", "format": "xlsx"})
    assert bad.status_code == 422 and "format" in bad.text
    missing = api.get(f"/runs/{rid}/series", params={"format": "csv"})
    assert missing.status_code == 422 and "key" in missing.text
    assert api.get(f"/runs/{uid()}/series", params={"key": "loss", "format": "csv"}).status_code == 404


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_series_csv_reads_follow_the_runs_read_policy(make_api) -> None:  # noqa: ANN001
    api = make_api(host="0.0.0.0")  # not loopback: reads need a token
    project = uid()
    rid = _run_with_loss(api, project=project)
    params = {"key": "loss", "format": "csv"}
    assert api.get(f"/runs/{rid}/series", params=params).status_code == 401
    other = {"Authorization": f"Bearer {api.new_token(project='elsewhere')}"}
    r = api.get(f"/runs/{rid}/series", params=params, headers=other)
    assert r.status_code == 404 and "loss" not in r.text  # another project's run: as if unknown
    own = {"Authorization": f"Bearer {api.new_token(project=project)}"}
    r = api.get(f"/runs/{rid}/series", params=params, headers=own)
    assert r.status_code == 200 and len(_rows(r.text)) == 6
