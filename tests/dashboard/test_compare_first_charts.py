"""The compare page's scalar charts arrive in the page's own response (no callback round trip on
load) and still redraw when a control changes; real Chromium against the real server."""

from __future__ import annotations

import httpx
import pytest

from .test_browser import TIMEOUT_MS, graphs_with_data

pytestmark = pytest.mark.browser

# the last point of every line of the first scalar chart: {trace name: last y}. ``_fullData``: the
# traces as plotly drew them (``data`` keeps base64 typed-array specs as they arrived)
LAST_Y_JS = """() => { const g = document.querySelector('#cmp-scalars .js-plotly-plot');
    return Object.fromEntries(g._fullData.filter(t => t.y && t.y.length).map(t => [t.name, Number(t.y[t.y.length - 1])])) }"""


def test_compare_scalars_come_with_the_page_and_redraw_when_a_control_changes(server, seeded, page) -> None:
    roles = {"baseline": "muon-baseline", "fast": "normuon-fast", "slow": "fop-kfac"}
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.post_data or "") if "_dash-update-component" in r.url else None)
    page.goto(server.url + "/compare?keys=loss,acc&runs=" + ",".join(seeded[r] for r in roles))
    charts = graphs_with_data(page, "#cmp-scalars", 2)
    assert [c["title"].split(" — ")[0] for c in charts] == ["loss", "acc"]
    page.wait_for_load_state("networkidle")
    assert asked and not [a for a in asked if "cmp-scalars.children" in a], "the scalars took a round trip on load"
    # the numbers drawn are the runs' own: each line ends at the run's last logged loss
    last = page.evaluate(LAST_Y_JS)
    for role, name in roles.items():
        want = httpx.get(f"{server.api}/runs/{seeded[role]}/latest", params={"key": "loss"},
                         headers=server.headers).json()["loss"]["value"]
        assert last.get(name) == pytest.approx(want, rel=1e-6), (name, last, want)
    asked.clear()
    page.locator("#cmp-log input").check()
    page.wait_for_function("() => document.querySelector('#cmp-scalars .js-plotly-plot').layout.yaxis.type === 'log'",
                           timeout=TIMEOUT_MS)
    assert [a for a in asked if "cmp-scalars.children" in a]
    assert page.errors == []


def test_plotly_starts_loading_with_the_compare_and_run_pages_once_and_not_with_the_runs_table(
    server, seeded, page,  # noqa: ANN001
) -> None:
    """``assets/plotly_early.js``: on the chart pages plotly.js is requested before the page's own
    layout response is back (dcc.Graph would ask only after it), once; the runs table never loads it."""
    events: list[tuple[str, str]] = []
    page.on("request", lambda r: events.append(("ask", r.url)))
    page.on("requestfinished", lambda r: events.append(("done", r.url + " " + (r.post_data or ""))))

    def plotly_asks() -> list[int]:
        return [i for i, (kind, url) in enumerate(events) if kind == "ask" and url.endswith("/plotly.min.js")]

    page.goto(server.url + "/?project=dash-tests")
    page.locator("#runs-table td[data-dash-column=name]").first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_load_state("networkidle")
    assert plotly_asks() == [] and page.evaluate("typeof window.Plotly") == "undefined"
    for url in (f"/compare?keys=loss&runs={seeded['baseline']},{seeded['fast']}", f"/runs/{seeded['slow']}"):
        events.clear()
        page.goto(server.url + url)
        graphs_with_data(page, "#cmp-scalars" if "compare" in url else "#run-tab-scalars", 1)
        page.wait_for_load_state("networkidle")
        asks = plotly_asks()
        layout_back = next(i for i, (kind, what) in enumerate(events)
                           if kind == "done" and "_pages_content" in what)
        assert len(asks) == 1 and asks[0] < layout_back, (url, asks, layout_back)
    assert page.errors == []
