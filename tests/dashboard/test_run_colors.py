"""One colour per run: a pure function of the id, at least 20 distinguishable colours, the same on
the runs table, the run page's header and its charts (in a real Chromium)."""

from __future__ import annotations

import hashlib
import re

import pytest

from dashboard.colors import RUN_PALETTE, run_color, run_dash

from .test_browser import TIMEOUT_MS, graphs_with_data


def _rgb(hex_color: str) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_run_color_is_stable_and_spread_over_at_least_20_colours() -> None:
    assert len(set(RUN_PALETTE)) >= 20 and all(re.fullmatch(r"#[0-9A-Fa-f]{6}", c) for c in RUN_PALETTE)
    assert run_color("run-muon") == run_color("run-muon") and run_dash("a") == run_dash("a")
    # the mapping is fixed by the id's bytes (blake2b), not by Python's per-process salted hash()
    digest = hashlib.blake2b(b"run-muon", digest_size=8).digest()
    assert run_color("run-muon") == RUN_PALETTE[int.from_bytes(digest, "big") % len(RUN_PALETTE)]
    used = {run_color(f"run-{i}") for i in range(200)}
    assert len(used) >= 20  # 200 ids reach (nearly) the whole palette: colours do not repeat from the 11th


@pytest.mark.browser
def test_a_run_has_one_colour_on_the_table_header_and_charts(server, seeded, page) -> None:
    rid = seeded["baseline"]
    want = run_color(rid)
    page.goto(server.url + "/?project=dash-tests")
    cell = page.locator("#runs-table td[data-dash-column=name]", has_text="muon-baseline").first
    cell.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "([sel, rgb]) => Array.from(document.querySelectorAll(sel)).some("
        "td => getComputedStyle(td).borderLeftColor === rgb)",
        arg=["#runs-table td[data-dash-column=name]", _rgb(want)], timeout=TIMEOUT_MS)
    page.goto(server.url + f"/runs/{rid}")
    graphs_with_data(page, "#run-tab-scalars", 2)
    assert page.evaluate("getComputedStyle(document.querySelector('#run-color')).color") == _rgb(want)
    colors = page.evaluate("Array.from(document.querySelectorAll('#run-scalars .js-plotly-plot'))"
                           ".map(g => g.data[0].line.color)")
    assert colors and all(c == want for c in colors), colors
    page.reload()
    graphs_with_data(page, "#run-tab-scalars", 2)
    assert page.evaluate("document.querySelector('#run-scalars .js-plotly-plot').data[0].line.color") == want
    assert page.errors == []
