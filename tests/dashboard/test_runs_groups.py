"""Groups on the runs table, in a real headless Chromium against the real server: two recipes × three
seeds grouped by "everything but the seed" give two rows with n and the loss mean ± sd, the URL keeps
the grouping, and a group (or two picked groups) opens on the compare page as groups."""

from __future__ import annotations

import statistics
import uuid

import httpx
import pytest

from dashboard.components import fmt_value
from dashboard.pages import runs_groups as RG

from .seed import Seeder
from .test_browser import TIMEOUT_MS
from .test_compare_colors import console_errors as _console_errors
from .test_compare_groups import _group_run

pytestmark = pytest.mark.browser

SEEDS = 3



@pytest.fixture(scope="module")
def sweep(server) -> tuple[str, dict[str, list[str]]]:  # noqa: ANN001
    seeder = Seeder(server.api, server.token)
    project = f"dash-rgroups-{uuid.uuid4().hex[:6]}"
    try:
        runs = {opt: [_group_run(seeder, project, opt, s, tau, cv) for s in range(SEEDS)]
                for opt, tau, cv in (("normuon", 25.0, 0.05), ("adamw", 50.0, 0.2))}
    finally:
        seeder.close()
    return project, runs


def _expected(server, project: str, run_ids: list[str]) -> str:  # noqa: ANN001
    """Mean ± sd of the runs' latest loss as the server reports it (GET /runs)."""
    body = httpx.get(f"{server.api}/runs", params={"project": project, "limit": 100},
                     headers={"Authorization": f"Bearer {server.token}"}).json()
    losses = [r["summary"]["loss"] for r in body["data"] if r["id"] in run_ids]
    assert len(losses) == SEEDS
    return f"{fmt_value(statistics.fmean(losses))} ± {fmt_value(statistics.stdev(losses), 2)}"


def _group_rows(page) -> dict[str, list[str]]:  # noqa: ANN001
    rows = {}
    for tr in page.locator("#runs-groups-table tr").all():
        cells = tr.locator("td[data-dash-column]").all_inner_texts()
        if cells:
            rows[cells[0]] = cells
    return rows


def test_group_rows_on_the_runs_table_open_as_groups_on_the_compare_page(server, sweep, page) -> None:  # noqa: ANN001
    console = _console_errors(page)
    project, runs = sweep
    page.goto(server.url + f"/?project={project}")
    page.locator("#runs-count", has_text=f"{2 * SEEDS} runs").wait_for(timeout=TIMEOUT_MS)
    assert page.locator("#runs-groups").is_hidden()  # no grouping by default
    # the control: pick "everything but the seed"
    page.locator("#runs-group-by").click()
    page.get_by_text("everything but the seed", exact=True).first.click()
    page.locator("#runs-groups-table td[data-dash-column=group]", has_text="optimizer=normuon").wait_for(
        timeout=TIMEOUT_MS)
    page.wait_for_function("new URLSearchParams(location.search).get('group_by') === '~all-but-seed'",
                           timeout=TIMEOUT_MS)
    rows = _group_rows(page)
    assert set(rows) == {"optimizer=normuon", "optimizer=adamw"}, rows
    for opt in ("normuon", "adamw"):
        label, n, metric = rows[f"optimizer={opt}"][:3]
        assert n == str(SEEDS) and metric == _expected(server, project, runs[opt]), rows
    note = page.locator("#runs-groups-note").inner_text()
    assert note.startswith(f"2 groups of {2 * SEEDS} runs") and "loss" in note

    # the URL keeps the grouping
    page.reload()
    page.locator("#runs-groups-table td[data-dash-column=group]", has_text="optimizer=adamw").wait_for(
        timeout=TIMEOUT_MS)
    assert set(_group_rows(page)) == {"optimizer=normuon", "optimizer=adamw"}

    # one group opens on the compare page as one group of its three seeds
    page.locator("#runs-groups-table a", has_text="optimizer=normuon").click()
    page.wait_for_url("**/compare?**", timeout=TIMEOUT_MS)
    summary = page.locator("#cmp-groups-list")
    summary.wait_for(timeout=TIMEOUT_MS)
    assert f"(n={SEEDS})" in summary.inner_text() and summary.inner_text().startswith("1 group:")
    assert set(page.evaluate("new URLSearchParams(location.search).get('runs')").split(",")) == set(runs["normuon"])
    page.wait_for_function("document.querySelectorAll('#cmp-scalars .js-plotly-plot .js-fill').length >= 1",
                           timeout=TIMEOUT_MS)

    # two picked groups open together, grouped the same way
    page.goto(server.url + f"/?project={project}&group_by=optimizer")
    page.locator("#runs-groups-table td[data-dash-column=group]", has_text="optimizer=adamw").wait_for(
        timeout=TIMEOUT_MS)
    for box in page.locator("#runs-groups-table input[type=checkbox]").all():
        box.check()
    link = page.locator("#runs-groups-compare", has_text="compare 2 selected groups")
    link.wait_for(timeout=TIMEOUT_MS)
    link.click()
    page.wait_for_url("**/compare?**", timeout=TIMEOUT_MS)
    summary = page.locator("#cmp-groups-list")
    summary.wait_for(timeout=TIMEOUT_MS)
    text = summary.inner_text()
    assert text.startswith("2 groups") and text.count(f"(n={SEEDS})") == 2, text
    assert "group_by=optimizer" in page.url
    assert page.errors == [] and console == [], console


def test_grouping_follows_the_chosen_keys() -> None:
    runs = [{"id": f"{o}{s}", "config": {"optimizer": o, "seed": s, "lr": lr, "model": {"w": 8}},
             "summary": {"loss": 1.0 + s}, "tags": [o]}
            for o, lr in (("a", 0.1), ("b", 0.1), ("c", 0.2)) for s in range(3)]
    by_all = RG.group_runs(runs, [RG.ALL_BUT_SEED], "loss")
    assert [(g.label, g.n) for g in by_all] == [("lr=0.1, optimizer=a", 3), ("lr=0.1, optimizer=b", 3),
                                                ("lr=0.2, optimizer=c", 3)]
    by_lr = RG.group_runs(runs, ["lr"], "loss")
    assert [(g.label, g.n, g.metric) for g in by_lr] == [("lr=0.1", 6, [1.0, 2.0, 3.0] * 2), ("lr=0.2", 3, [1.0, 2.0, 3.0])]
    assert [g.label for g in RG.group_runs(runs, ["tags"], "loss")] == ["tags=a", "tags=b", "tags=c"]
    row = RG.group_table_rows(by_lr[1:], ["lr"], "loss")[0]
    assert row["n"] == 3 and row["metric"] == "2 ± 1" and row["range"] == "1–3"
    assert row["group"] == "[lr=0\\.2](/compare?runs=c0,c1,c2&group_by=lr&keys=loss&metric=loss)"
