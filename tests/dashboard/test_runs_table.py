"""The runs table over 10,000 runs in a real Chromium: the true count, the pager reaching the
oldest run, sorting by a summary metric finding the best run, a config filter evaluated by the
server, and the URL keeping sort, filter and columns."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from tests.server.test_run_query import BEST, N, seed_sweep

from .test_browser import TIMEOUT_MS

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def sweep(server) -> str:
    """10,000 runs written straight into the live server's SQLite file (10,000 POSTs would time the
    HTTP layer, not the table)."""
    engine = create_engine(f"sqlite:///{server.home / 'optiscope.db'}")
    try:
        project, _ = seed_sweep(sessionmaker(engine))
    finally:
        engine.dispose()
    return project


def _first_names(page, n: int = 1) -> list[str]:
    return page.locator("#runs-table td[data-dash-column=name]").all_inner_texts()[:n]


def test_ten_thousand_runs_count_page_to_oldest_and_sort_by_final_loss(server, sweep, page) -> None:
    page.goto(server.url + f"/?project={sweep}")
    page.locator("#runs-count", has_text=f"{N:,} runs").wait_for(timeout=TIMEOUT_MS)
    assert _first_names(page) == [f"run {N - 1}"]
    page.locator("#runs-table button.last-page").click()
    page.locator("#runs-table td[data-dash-column=name]", has_text="run 0").first.wait_for(timeout=TIMEOUT_MS)
    assert _first_names(page, 50)[-1] == "run 0"  # the oldest run is reachable
    # sort by a summary metric over all runs (the URL keeps it and the chosen column)
    page.goto(server.url + f"/?project={sweep}&cols=sum:loss,cfg:lr&sort=sum:loss")
    page.locator("#runs-table td[data-dash-column=name]", has_text=f"run {BEST}").first.wait_for(timeout=TIMEOUT_MS)
    assert _first_names(page) == [f"run {BEST}"]
    headers = page.locator("#runs-table th.dash-header").all_inner_texts()
    assert any("latest loss" in h for h in headers) and any("cfg: lr" in h for h in headers)
    assert "sort=sum%3Aloss" in page.url or "sort=sum:loss" in page.url
    assert page.errors == []


def test_config_filter_is_evaluated_by_the_server_and_kept_in_the_url(server, sweep, page) -> None:
    page.goto(server.url + f"/?project={sweep}")
    page.locator("#runs-count", has_text=f"{N:,} runs").wait_for(timeout=TIMEOUT_MS)
    page.locator("#runs-filter").fill("optimizer = normuon, lr >= 0.01")
    page.locator("#runs-filter").press("Enter")
    expected = sum(1 for i in range(N) if i % 4 == 2 and i % 200 >= 99)
    page.locator("#runs-count", has_text=f"{expected:,} runs").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("window.location.search.includes('filter=')", timeout=TIMEOUT_MS)
    assert "optimizer" in page.url and "normuon" in page.url
    page.locator("#runs-filter").fill("lr >> 1")
    page.locator("#runs-filter").press("Enter")
    page.locator("#runs-message", has_text="Cannot apply this filter").wait_for(timeout=TIMEOUT_MS)
    assert page.errors == []


def _cell_styles(page, row: int) -> dict[str, str]:
    return page.evaluate(
        "(row) => { const td = (c) => document.querySelector(`#runs-table td[data-dash-column=${c}][data-dash-row=\"${row}\"]`);"
        " return {name: td('name').innerText.trim(), bar: getComputedStyle(td('name')).borderLeftColor,"
        " status: td('status').innerText.trim(), statusColor: getComputedStyle(td('status')).color}; }", row)


def _rgb(hex_color: str) -> str:
    h = hex_color.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"


def test_row_colours_follow_the_runs_across_a_page_turn(server, sweep, page) -> None:
    """Colours are stylesheet rules by row position: a page turn must repaint every row for the run
    now in it (the run's colour bar; a live run's status green, a finished one's not)."""
    from dashboard.colors import run_color

    green = "rgb(44, 160, 44)"
    run_id = lambda i: f"{sweep[-12:]}-{i:05d}"  # noqa: E731 (seed_sweep's ids)
    page.goto(server.url + f"/?project={sweep}")
    page.locator("#runs-count", has_text=f"{N:,} runs").wait_for(timeout=TIMEOUT_MS)
    # newest first: rows 0..2 are runs 9999 (finished), 9998 and 9997 (running)
    first = [_cell_styles(page, r) for r in range(3)]
    assert [s["name"] for s in first] == [f"run {N - 1 - r}" for r in range(3)]
    assert [s["status"] for s in first] == ["finished", "● live", "● live"]
    assert [s["statusColor"] == green for s in first] == [False, True, True]
    assert [s["bar"] for s in first] == [_rgb(run_color(run_id(N - 1 - r))) for r in range(3)]
    size = page.locator("#runs-table td[data-dash-column=name]").count()  # rows a page
    page.locator("#runs-table button.next-page").click()
    page.locator("#runs-table td[data-dash-column=name]", has_text=f"run {N - 1 - size}").first.wait_for(
        timeout=TIMEOUT_MS)
    # page 2 (25 a page): the same row positions now hold runs 9974 (running), 9973 (running), 9972 (finished)
    second = [_cell_styles(page, r) for r in range(3)]
    assert [s["name"] for s in second] == [f"run {N - 1 - size - r}" for r in range(3)]
    runs = [N - 1 - size - r for r in range(3)]
    assert [s["status"] for s in second] == ["finished" if i % 3 == 0 else "● live" for i in runs]  # seed_sweep's rule
    assert [s["statusColor"] == green for s in second] == [i % 3 != 0 for i in runs]
    assert [s["status"] for s in second] != [s["status"] for s in first]  # the positions changed status
    assert [s["bar"] for s in second] == [_rgb(run_color(run_id(N - 1 - size - r))) for r in range(3)]
    assert page.errors == []
