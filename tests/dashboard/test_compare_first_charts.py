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
