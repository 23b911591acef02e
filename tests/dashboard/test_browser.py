"""The dashboard in a real headless Chromium, served by ``optiscope serve`` (mounted via the
``optiscope.mounts`` entry point) and reading the seeded data over the HTTP query API."""

from __future__ import annotations

import time

import httpx
import pytest

from .seed import TARGET_LOSS, XSS_NAME, Seeder, first_step_below

pytestmark = pytest.mark.browser

TIMEOUT_MS = 20_000  # generous: the CI box is shared; the benchmark measures the real latencies

# [graphs with points, graphs showing an empty state] inside a tab body
GRAPH_STATE_JS = """(sel) => Array.from(document.querySelectorAll(sel + ' .js-plotly-plot')).map(g => {
    // typed arrays from numpy arrive as {dtype, bdata, shape}: count their elements from the shape
    const len = (v) => !v ? 0 : (v.length !== undefined ? v.length
        : (v.shape ? String(v.shape).split(',').reduce((a, b) => a * Number(b), 1)
        : (v.bdata ? Math.floor(atob(v.bdata).length / ({f4: 4, f8: 8}[v.dtype] || 1)) : 0)));
    const n = (g.data || []).reduce((a, t) => a + len(t.z || t.y || t.x), 0);
    const empty = !!(g.layout && g.layout.meta && g.layout.meta.empty);
    return {n: n, empty: empty, title: ((g.layout || {}).title || {}).text || ''};
})"""


def graphs_with_data(page, selector: str, expected: int) -> list[dict]:
    """Wait until ``expected`` graphs under ``selector`` have points, then return their states."""
    page.wait_for_function(
        f"(sel) => ({GRAPH_STATE_JS})(sel).filter(g => g.n > 0 && !g.empty).length >= {expected}",
        arg=selector, timeout=TIMEOUT_MS,
    )
    return page.evaluate(GRAPH_STATE_JS, selector)


def test_runs_page_lists_seeded_runs_and_renders_names_as_text(server, seeded, page) -> None:
    page.goto(server.url + "/")
    for name in ("muon-baseline", "normuon-fast", "fop-kfac", "infobatch-sgd", "live-run"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=TIMEOUT_MS)
    xss = page.get_by_text(XSS_NAME, exact=True)
    xss.first.wait_for(timeout=TIMEOUT_MS)
    assert page.get_by_text("● live").count() >= 1
    # the run named <script>alert(1)</script> is text on the runs page and on its own page
    page.goto(server.url + f"/runs/{seeded['xss']}")
    page.locator("#run-name").wait_for(timeout=TIMEOUT_MS)
    assert page.locator("#run-name").inner_text() == XSS_NAME
    graphs_with_data(page, "#run-tab-scalars", 1)
    injected = page.evaluate("Array.from(document.querySelectorAll('script')).some(s => s.textContent.includes('alert(1)'))")
    assert not injected and page.dialogs == [] and page.errors == []


def test_run_page_shows_every_panel_with_data(server, seeded, page) -> None:
    cases = [
        (seeded["baseline"], [("Scalars", "scalars", 4), ("Spectra", "spectra", 3), ("Neuron norms", "neurons", 3)]),
        (seeded["fast"], [("Neuron norms", "neurons", 5)]),
        (seeded["slow"], [("Gradient difference", "gdiff", 6), ("KFAC", "kfac", 3)]),
        (seeded["infobatch"], [("InfoBatch", "infobatch", 4)]),
    ]
    for run_id, tabs in cases:
        page.goto(server.url + f"/runs/{run_id}")
        graphs_with_data(page, "#run-tab-scalars", 1)
        for label, tab, expected in tabs:
            page.locator(".tab", has_text=label).first.click()
            states = graphs_with_data(page, f"#run-tab-{tab}", expected)
            assert all(s["title"] for s in states), states  # every figure is titled
            if tab != "scalars":  # the view is shareable: the URL follows the controls
                page.wait_for_function(f"window.location.search.includes('tab={tab}')", timeout=TIMEOUT_MS)
    page.goto(server.url + f"/runs/{seeded['baseline']}?tab=alerts")
    link = page.locator("#run-alerts-table a", has_text="open")
    link.wait_for(timeout=TIMEOUT_MS)
    assert link.get_attribute("href").endswith("?tab=spectra&layer=fc1.weight&step=120")
    page.locator(".tab", has_text="Config").first.click()
    page.locator("#run-config-table", has_text="model.width").wait_for(timeout=TIMEOUT_MS)
    assert page.errors == []


def test_point_logged_after_page_opened_appears_without_reload_and_keeps_zoom(server, seeded, page) -> None:
    rid = seeded["live"]
    last = httpx.get(f"{server.api}/runs/{rid}/latest", params={"key": "loss"}).json()["loss"]["step"]
    page.goto(server.url + f"/runs/{rid}")
    graphs_with_data(page, "#run-tab-scalars", 1)
    page.evaluate("window.__not_reloaded = true")
    graph = "document.querySelector('#run-scalars .js-plotly-plot')"
    page.evaluate(f"Plotly.relayout({graph}, {{'xaxis.range': [10, {last + 5}]}})")
    new_step = last + 3
    seeder = Seeder(server.api, server.token)
    try:
        t0 = time.monotonic()
        seeder.post(rid, scalars=[{"key": "loss", "steps": [new_step], "times": [time.time()], "values": [0.0421]}])
        page.wait_for_function(f"{graph}.data[0].x.includes({new_step})", timeout=TIMEOUT_MS)
        latency = time.monotonic() - t0
    finally:
        seeder.close()
    print(f"live latency (logged -> in the browser's figure): {latency:.2f} s")
    assert page.evaluate("window.__not_reloaded === true")
    assert page.evaluate(f"{graph}.layout.xaxis.range") == [10, last + 5]  # zoom kept (uirevision + Patch)
    assert page.errors == []


def test_compare_page_time_to_target_table(server, seeded, page) -> None:
    runs = ",".join([seeded["baseline"], seeded["fast"], seeded["slow"]])
    page.goto(server.url + f"/compare?runs={runs}&metric=loss&target={TARGET_LOSS}")
    table = page.locator("#cmp-ttt-result")
    table.wait_for(timeout=TIMEOUT_MS)
    rows = {r.get_attribute("data-run"): r.locator("td").all_inner_texts() for r in table.locator("tr.ttt-row").all()}
    base, fast, slow = (first_step_below(TARGET_LOSS, tau) for tau in (50, 25, 100))
    assert rows[seeded["fast"]][2] == str(fast) and rows[seeded["fast"]][5] == f"{base / fast:.2f}×"
    assert rows[seeded["slow"]][5] == f"{base / slow:.2f}×" and rows[seeded["baseline"]][5] == "1.00×"
    graphs_with_data(page, "#cmp-scalars", 2)
    assert page.locator("#cmp-config-table").inner_text().count("optimizer") == 1
    assert page.errors == []


def test_unknown_run_id_shows_a_clear_message(server, page) -> None:
    page.goto(server.url + "/runs/no-such-run")
    page.locator("#run-not-found").wait_for(timeout=TIMEOUT_MS)
    assert "Run not found" in page.locator("#run-not-found").inner_text()
    assert "Traceback" not in page.content() and page.errors == []
    assert httpx.get(server.url + "/api/v1/no-such-endpoint").status_code == 404  # the mount leaves /api alone
