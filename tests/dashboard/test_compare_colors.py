"""One colour per run on the compare page and the runs table, and the x-unified hover label, in a real
headless Chromium against the real server (the seeded runs of ``seed.seed_suite``)."""

from __future__ import annotations

import pytest

from dashboard.colors import run_color

from .test_browser import TIMEOUT_MS, graphs_with_data
from .test_compare_groups import groups  # noqa: F401  (module fixture: 2 recipes × 3 seeds)

pytestmark = pytest.mark.browser

NAMES = {"baseline": "muon-baseline", "fast": "normuon-fast", "slow": "fop-kfac"}
PANELS = ("cmp-spec-overlay", "cmp-spec-grid", "cmp-neuron-overlay", "cmp-neuron-box")

# every named trace of every chart on the page: (chart id, trace name, colour of its line or marker)
TRACES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(g => (g.data || []).map(t => ({
    chart: g.closest('[id]') ? g.closest('[id]').id : '', name: t.name || '',
    color: (t.line && t.line.color) || (t.marker && t.marker.color) || ''})))"""


def console_errors(page) -> list[str]:  # noqa: ANN001
    """Console errors (a failed request, a callback error) collected from now on."""
    out: list[str] = []
    page.on("console", lambda m: out.append(m.text) if m.type == "error" else None)
    return out



def _rgb(hex_color: str) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def _check_colours(page, seeded) -> None:  # noqa: ANN001
    graphs_with_data(page, "#cmp-scalars", 2)
    for panel in PANELS:
        graphs_with_data(page, f"#{panel}", 1)
    traces = page.evaluate(TRACES_JS)
    for role, name in NAMES.items():
        want = run_color(seeded[role])
        mine = [t for t in traces if t["name"].startswith(name)]
        charts = {t["chart"] for t in mine}
        # two scalar charts and the four matched-point panels each draw this run
        assert len(charts) >= 6 and set(PANELS) <= charts, (name, charts)
        assert all(t["color"] == want for t in mine), (name, want, mine)
        row = page.locator("#cmp-ttt-result tr.ttt-row", has_text=name)
        row.wait_for(timeout=TIMEOUT_MS)
        assert row.locator(".run-swatch").get_attribute("data-color") == want
        assert page.locator("#cmp-config-table th", has_text=name).locator(".run-swatch").get_attribute(
            "data-color") == want


def test_a_run_has_one_colour_in_every_compare_panel_and_on_the_runs_table(server, seeded, page) -> None:
    console = console_errors(page)
    run_ids = [seeded[r] for r in NAMES]
    assert len({run_color(r) for r in run_ids}) == 3  # the test would prove nothing if two shared a colour
    url = server.url + "/compare?keys=loss,acc&layer=fc1.weight&metric=loss&runs="
    page.goto(url + ",".join(run_ids))
    _check_colours(page, seeded)
    page.reload()
    _check_colours(page, seeded)
    page.goto(url + ",".join(reversed(run_ids)))  # the selection reordered: colours stay with the runs
    _check_colours(page, seeded)
    page.goto(server.url + "/?project=dash-tests")
    for role, name in NAMES.items():
        cell = page.locator("#runs-table td[data-dash-column=name]", has_text=name).first
        cell.wait_for(timeout=TIMEOUT_MS)
        page.wait_for_function(
            "([name, rgb]) => Array.from(document.querySelectorAll('#runs-table td[data-dash-column=name]'))"
            ".some(td => td.innerText.trim() === name && getComputedStyle(td).borderLeftColor === rgb)",
            arg=[name, _rgb(run_color(seeded[role]))], timeout=TIMEOUT_MS)
    assert page.errors == [] and console == [], console


def test_hovering_a_compare_chart_lists_every_selected_run_by_name(server, seeded, page) -> None:
    run_ids = [seeded[r] for r in NAMES]
    page.goto(server.url + "/compare?keys=loss&runs=" + ",".join(run_ids))
    graphs_with_data(page, "#cmp-scalars", 1)
    chart = "#cmp-scalars .js-plotly-plot"
    assert page.evaluate(f"document.querySelector('{chart}').layout.hovermode") == "x unified"
    box = page.locator(f"{chart} .nsewdrag").first.bounding_box()
    # a real mouse over the middle of the plot area (x ≈ step 100, where every run has a point)
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_function(f"document.querySelector('{chart} .hoverlayer').textContent.length > 0",
                           timeout=TIMEOUT_MS)
    label = page.evaluate(f"document.querySelector('{chart} .hoverlayer').textContent")
    for name in NAMES.values():
        assert f"{name}: " in label, label
    assert "x=" not in label
    assert page.errors == []


@pytest.mark.browser
def test_the_many_run_spectra_heatmap_marks_each_row_in_its_runs_colour(server, seeded, groups, request_ctx) -> None:  # noqa: ANN001, F811
    """Past 8 runs the side-by-side spectra are one run × index heatmap: its row labels carry the colours."""
    import sys

    cmp = sys.modules["dashboard.pages.compare"]
    run_ids = [seeded[r] for r in NAMES] + groups["normuon"] + groups["adamw"]
    meta, catalog, _ = cmp.load_runs(run_ids)
    _, grid, _, _ = cmp.matched_panels("fc1.weight", "weight", "step", 100, meta, catalog)
    assert grid.data[0].type == "heatmap" and len(grid.layout.yaxis.tickvals) == len(run_ids)
    # rows in the selection's order (every run has a spectrum at step 100); seeds of a recipe share a name
    for rid, value, label in zip(run_ids, grid.layout.yaxis.tickvals, grid.layout.yaxis.ticktext):
        assert value.startswith(meta[rid]["name"] + " @")
        assert label.startswith(f"<span style='color:{run_color(rid)}'>■</span> ")


def test_a_group_has_one_colour_in_its_band_and_its_time_to_target_row(server, groups, request_ctx) -> None:  # noqa: ANN001, F811
    import sys

    cmp = sys.modules["dashboard.pages.compare"]
    run_ids = groups["normuon"] + groups["adamw"]
    meta, _, _ = cmp.load_runs(run_ids)
    grouped, _, _ = cmp.update_groups([cmp.CG.ALL_BUT_SEED], meta)
    want = {g["group"]: cmp.group_color(g) for g in grouped["groups"]}
    assert len(set(want.values())) == 2
    fig = cmp.draw_scalars(["loss"], "step", 0, [], meta, grouped, "minmax", [])[0].figure
    for t in fig.data:
        label = next((g for g in want if t.name and t.name.startswith(g)), None)
        if label and t.meta != "band":
            assert t.line.color == want[label]
    panel = cmp.group_time_to_target("loss", 0.5, "below", groups["adamw"][0], grouped, meta)
    body = panel.children[1].children[1]  # Div([caption, Table([Thead, Tbody])])
    dots = {getattr(tr, "data-group"): tr.children[0].children[0] for tr in body.children}
    assert set(dots) == set(want)
    for label, dot in dots.items():
        assert dot.className == "run-swatch" and dot.style["color"] == want[label]
