"""Every chart's toolbar has "Download data as CSV": the panel's data as drawn (dashboard/assets/
panel_csv.js), in a real Chromium — the compare page's overlay lists every run's points with the values
the test logged, and a heatmap exports its cells."""

from __future__ import annotations

import csv
import io
import math
import uuid

import pytest

from .seed import Seeder
from .test_browser import TIMEOUT_MS, graphs_with_data
from .test_compare_colors import console_errors

pytestmark = pytest.mark.browser

STEPS = list(range(50))
SCALE = {"csv-a": 1.0, "csv-b": 2.0}  # run name -> loss = scale / (1 + step)


@pytest.fixture(scope="module")
def two_runs(server) -> dict[str, str]:  # noqa: ANN001
    ids: dict[str, str] = {}
    seeder = Seeder(server.api, server.token)
    try:
        for name, scale in SCALE.items():
            rid = f"run-{name}-{uuid.uuid4().hex[:6]}"
            seeder.create_run(rid, name=name, project="dash-panel-csv", config={"lr": scale})  # two recipes
            seeder.post(rid, scalars=[{"key": "loss", "steps": STEPS, "times": [1_700_000_000.0 + s for s in STEPS],
                                       "values": [scale / (1 + s) for s in STEPS]}])
            seeder.finish(rid)
            ids[name] = rid
    finally:
        seeder.close()
    return ids


def _download_csv(page, chart) -> list[list[str]]:  # noqa: ANN001
    chart.hover()  # plotly shows its toolbar on hover
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        chart.locator(".modebar-btn.optiscope-csv").click()
    with open(info.value.path(), encoding="utf-8") as f:
        return list(csv.reader(io.StringIO(f.read())))


def test_compare_overlay_csv_lists_every_run_with_the_logged_values(server, two_runs, page) -> None:  # noqa: ANN001
    errors = console_errors(page)
    page.goto(server.url + f"/compare?runs={two_runs['csv-a']},{two_runs['csv-b']}&keys=loss")
    graphs_with_data(page, "#cmp-scalars", 1)
    rows = _download_csv(page, page.locator("#cmp-scalars .js-plotly-plot").first)
    assert rows[0] == ["trace", "x", "y", "z"]
    by_trace: dict[str, dict[int, float]] = {}
    for trace, x, y, _ in rows[1:]:
        by_trace.setdefault(trace, {})[int(float(x))] = float(y)
    for name, scale in SCALE.items():
        assert name in by_trace, sorted(by_trace)
        assert set(by_trace[name]) == set(STEPS), (name, sorted(by_trace))
        for step, value in by_trace[name].items():
            assert math.isclose(value, scale / (1 + step), rel_tol=1e-6), (name, step, value)
    assert errors == [] and page.errors == []


def test_a_heatmap_exports_its_cells(server, seeded, page) -> None:  # noqa: ANN001
    page.goto(server.url + f"/runs/{seeded['baseline']}?tab=spectra")
    graphs_with_data(page, "#run-tab-spectra", 2)
    heatmap = page.locator("#run-tab-spectra .js-plotly-plot").first
    shape = heatmap.evaluate("g => { const t = g._fullData.find(d => d.type === 'heatmap');"
                             " return [t.z.length, t.z[0].length]; }")
    rows = _download_csv(page, heatmap)
    cells = [r for r in rows[1:] if r[3] != ""]
    assert len(cells) == shape[0] * shape[1] > 0
    assert len({r[1] for r in cells}) == shape[1] and len({r[2] for r in cells}) == shape[0]
    assert all(math.isfinite(float(r[3])) for r in cells)
