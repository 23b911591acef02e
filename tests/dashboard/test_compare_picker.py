"""The compare page's run picker reaches every run: it opens with the newest runs and typing searches
all of them by name on the server (it used to list the newest 1,000 and nothing else)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from dashboard.pages.compare import PICKER_RECENT
from tests.server.test_run_query import seed_sweep

from .test_browser import TIMEOUT_MS
from .test_compare_colors import console_errors

pytestmark = pytest.mark.browser

N_RUNS = PICKER_RECENT + 100


@pytest.fixture(scope="module")
def old_runs(server) -> str:  # noqa: ANN001
    engine = create_engine(f"sqlite:///{server.home / 'optiscope.db'}")
    try:
        project, _ = seed_sweep(sessionmaker(engine), n=N_RUNS)
    finally:
        engine.dispose()
    return project


def test_the_run_picker_finds_a_run_older_than_the_newest_listed(server, seeded, old_runs, page) -> None:  # noqa: ANN001
    newest = httpx.get(f"{server.api}/runs", params={"limit": PICKER_RECENT},
                       headers={"Authorization": f"Bearer {server.token}"}).json()["data"]
    oldest_id = f"{old_runs[-12:]}-00000"  # seed_sweep's id of "run 0", its oldest run
    assert oldest_id not in {r["id"] for r in newest}  # not among what the page opens with
    errors = console_errors(page)
    page.goto(server.url + f"/compare?runs={seeded['baseline']}")
    picker = page.locator("#cmp-runs")
    picker.wait_for(timeout=TIMEOUT_MS)
    picker.click()
    page.keyboard.type("run 0")
    page.get_by_role("option", name=f"run 0 ({old_runs})", exact=True).click(timeout=TIMEOUT_MS)
    page.wait_for_function("(id) => window.location.search.includes(id)", arg=oldest_id, timeout=TIMEOUT_MS)
    assert seeded["baseline"] in page.url  # the run picked before the search is still picked
    assert errors == [] and page.errors == []


def test_a_compare_url_naming_old_runs_and_a_typo_opens_with_the_old_runs(server, old_runs, page) -> None:  # noqa: ANN001
    """The URL's runs older than the picker's newest are read (one ``GET /runs?id=``) and compared;
    an id that is no run is named as ignored."""
    old = [f"{old_runs[-12:]}-{i:05d}" for i in (0, 1)]  # seed_sweep's "run 0" and "run 1"
    page.goto(server.url + f"/compare?runs={old[0]},no-such-run,{old[1]}")
    page.get_by_text("Unknown runs ignored").wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("no-such-run", exact=True).wait_for(timeout=TIMEOUT_MS)  # the warning names it
    page.wait_for_function(
        "(names) => { const el = document.querySelector('#cmp-runs');"
        " return !!el && names.every(n => el.innerText.includes(n)) }",
        arg=[f"run 0 ({old_runs})", f"run 1 ({old_runs})"], timeout=TIMEOUT_MS)
    # the page compares them: both are columns of the config diff
    for name in ("run 0", "run 1"):
        page.locator("#cmp-config-table th", has_text=name).first.wait_for(timeout=TIMEOUT_MS)
    assert page.errors == []
