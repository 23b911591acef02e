"""The compare page's per-layer comparison over time, in a real headless Chromium against the real
server: the plotted values are the ones the seeder logged (``sv.weight.cond/<layer>`` =
(10 + layer index) · (1 + 0.001 · step) for every step of every run), for one layer and for the
median / max over layers; grouped runs get a mean with a band."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from playwright.sync_api import Error as PlaywrightError

from dashboard.colors import run_color
from dashboard.pages.compare import layers as CL

from .test_browser import TIMEOUT_MS, graphs_with_data
from .test_compare_colors import console_errors as _console_errors
from .test_compare_groups import groups  # noqa: F401  (module fixture: 2 recipes × 3 seeds)

NAMES = {"baseline": "muon-baseline", "fast": "normuon-fast", "slow": "fop-kfac"}
STEPS = 200
GRAPH = "document.querySelector('#cmp-lt-graph .js-plotly-plot')"



def _logged(layer_index: float, steps: np.ndarray) -> np.ndarray:
    return (10.0 + layer_index) * (1.0 + 0.001 * steps)


def _traces(page) -> list[dict]:  # noqa: ANN001
    return page.evaluate(f"{GRAPH}.data.map(t => ({{name: t.name, x: Array.from(t.x), y: Array.from(t.y), "
                         "color: t.line.color}))")


def _check(page, seeded, layer_index: float) -> None:  # noqa: ANN001
    traces = _traces(page)
    assert {t["name"] for t in traces} == set(NAMES.values()), [t["name"] for t in traces]
    for t in traces:
        role = next(r for r, n in NAMES.items() if n == t["name"])
        assert t["color"] == run_color(seeded[role])
        x = np.asarray(t["x"])
        assert len(x) == STEPS and x[0] == 0 and x[-1] == STEPS - 1
        np.testing.assert_allclose(t["y"], _logged(layer_index, x), rtol=1e-6)


def _wait_title(page, start: str) -> None:  # noqa: ANN001
    page.wait_for_function(f"(s) => (((({GRAPH} || {{}}).layout || {{}}).title || {{}}).text || '').startsWith(s)",
                           arg=start, timeout=TIMEOUT_MS)


def _scroll_graph_into_view(page, attempts: int = 10) -> None:  # noqa: ANN001
    """The graph is re-mounted while the page's callbacks fill the section, so the element Playwright
    found can be detached mid-scroll: find it again and retry."""
    for attempt in range(attempts):
        try:
            page.locator("#cmp-lt-graph").scroll_into_view_if_needed(timeout=TIMEOUT_MS)
            return
        except PlaywrightError as exc:
            if "not attached" not in str(exc) or attempt == attempts - 1:
                raise


@pytest.mark.browser
def test_per_layer_diagnostic_over_time_plots_the_logged_values(server, seeded, page) -> None:  # noqa: ANN001
    console = _console_errors(page)
    run_ids = ",".join(seeded[r] for r in NAMES)
    page.set_viewport_size({"width": 1400, "height": 500})
    page.goto(server.url + f"/compare?runs={run_ids}&keys=loss&lt_q=sv.weight.cond&lt_layer=~max")
    # below the fold the section reads nothing (its aggregate reads every layer of every run) ...
    graphs_with_data(page, "#cmp-scalars", 1)
    page.wait_for_timeout(1500)
    assert page.evaluate("document.querySelector('#cmp-lt-section').getBoundingClientRect().top") > 500
    assert page.evaluate(f"(({GRAPH} || {{}}).data || []).length") == 0
    # ... and is drawn once it scrolls into view
    _scroll_graph_into_view(page)
    graphs_with_data(page, "#cmp-lt-graph", 1)
    _wait_title(page, "sv.weight.cond: max over layers")
    _check(page, seeded, 1.0)  # max of fc1 (10·…) and fc2 (11·…)

    # the controls: the median over layers, then one layer
    page.locator("#cmp-lt-layer").click()
    page.get_by_role("option", name="median over layers", exact=True).first.click()
    _wait_title(page, "sv.weight.cond: median over layers")
    _check(page, seeded, 0.5)
    page.wait_for_function("new URLSearchParams(location.search).get('lt_layer') === '~median'", timeout=TIMEOUT_MS)
    page.locator("#cmp-lt-layer").click()
    page.get_by_role("option", name="fc1.weight", exact=True).first.click()
    _wait_title(page, "sv.weight.cond — fc1.weight")
    _check(page, seeded, 0.0)

    # another diagnostic, through its dropdown; the URL keeps it across a reload
    page.locator("#cmp-lt-quantity").click()
    page.get_by_role("option", name="sv.weight.spectral_norm", exact=True).first.click()
    _wait_title(page, "sv.weight.spectral_norm — fc1.weight")
    page.wait_for_function("new URLSearchParams(location.search).get('lt_q') === 'sv.weight.spectral_norm'",
                           timeout=TIMEOUT_MS)
    page.reload()
    _scroll_graph_into_view(page)
    _wait_title(page, "sv.weight.spectral_norm — fc1.weight")
    for t in _traces(page):
        np.testing.assert_allclose(t["y"], 1.0, rtol=1e-6)  # 1 + 0.01 · 0 · drift for layer 0
    assert page.errors == [] and console == [], console


def test_aggregates_and_scopes() -> None:
    steps, vals = CL.aggregate([([0, 10, 20], [1.0, 2.0, 3.0]), ([0, 20], [5.0, float("nan")])], CL.AGG_MAX)
    assert steps == [0, 10, 20] and vals == [5.0, 2.0, 3.0]  # a NaN or a missing step never blanks the others
    _, med = CL.aggregate([([0], [1.0]), ([0], [2.0]), ([0], [10.0])], CL.AGG_MEDIAN)
    assert med == [2.0]
    layers = ["embed.weight", "blocks.0.fc.weight", "blocks.0.attn.weight", "blocks.1.fc.weight"]
    assert CL.role_of("blocks.12.fc.weight") == "blocks.*.fc.weight"
    assert CL.layers_in_scope(layers, "role:blocks.*.fc.weight") == ["blocks.0.fc.weight", "blocks.1.fc.weight"]
    assert CL.layers_in_scope(layers, "block:blocks.0") == ["blocks.0.fc.weight", "blocks.0.attn.weight"]
    values = [o["value"] for o in CL.scope_options(layers)]
    assert values[0] == CL.ALL_LAYERS and "role:blocks.*.fc.weight" in values and "block:blocks.1" in values
    assert CL.quantity_options({"grad_norm": [], "update_ratio": [], "neuron.cv": []}) == \
        ["neuron.cv", "update_ratio", "grad_norm"]


def test_grouped_runs_get_a_mean_and_band_per_group(server, groups, request_ctx) -> None:  # noqa: ANN001, F811
    cmp = sys.modules["dashboard.pages.compare"]
    run_ids = groups["normuon"] + groups["adamw"]
    meta, catalog, _ = cmp.load_runs(run_ids)
    grouped, _, _ = cmp.update_groups([cmp.CG.ALL_BUT_SEED], meta)
    fig = CL.draw_layer_over_time("neuron.cv", CL.AGG_MEDIAN, CL.ALL_LAYERS, "step", meta, grouped, "minmax", catalog)
    kinds = [t.meta for t in fig.data]
    assert kinds.count("band") == 2 and "median over layers" in fig.layout.title.text
    means = {t.name: np.asarray(t.y) for t in fig.data if t.meta is None and t.name}
    normuon = next(v for k, v in means.items() if k.startswith("grp-normuon"))
    adamw = next(v for k, v in means.items() if k.startswith("grp-adamw"))
    # logged: cv · (1 + 0.1 · layer) · (1 ± 3 % noise), cv = 0.05 vs 0.2; the median of 2 layers is their mean
    assert np.nanmean(normuon) == pytest.approx(0.05 * 1.05, rel=0.05)
    assert np.nanmean(adamw) == pytest.approx(0.2 * 1.05, rel=0.05)


def test_per_layer_against_samples_seen_and_a_missing_layer(server, seeded, request_ctx) -> None:  # noqa: ANN001
    cmp = sys.modules["dashboard.pages.compare"]
    run_ids = [seeded[r] for r in NAMES]
    meta, catalog, _ = cmp.load_runs(run_ids)
    assert catalog["layer_quantities"]["sv.weight.cond"] == ["fc1.weight", "fc2.weight"]
    fig = CL.draw_layer_over_time("sv.weight.cond", "fc2.weight", CL.ALL_LAYERS, "samples", meta, None, "minmax",
                                   catalog)
    assert fig.layout.xaxis.title.text == "samples seen" and len(fig.data) == 3
    for t in fig.data:
        x = np.asarray(t.x)
        np.testing.assert_allclose(x, 128 * np.arange(STEPS))  # samples_seen = 128 · step
        np.testing.assert_allclose(t.y, _logged(1.0, x / 128), rtol=1e-6)
    missing = CL.draw_layer_over_time("sv.weight.cond", "no.such.layer", CL.ALL_LAYERS, "step", meta, None,
                                       "minmax", catalog)
    assert "no picked run logged sv.weight.cond for no.such.layer" in str(missing.layout.annotations[0].text)


def test_aggregate_over_downsampled_series_bins_the_steps() -> None:
    # 48 layers keeping different 208 of 2,000 steps (as the server's downsampling leaves them): the
    # median / max over step ranges still follows the logged values (exact would need every point)
    rng = np.random.default_rng(0)
    per = []
    for i in range(48):
        st = np.sort(rng.choice(2000, 208, replace=False))
        per.append((st.tolist(), ((10.0 + i) * (1.0 + 0.001 * st)).tolist()))
    steps, med = CL.aggregate(per, CL.AGG_MEDIAN, max_steps=208)
    assert 50 <= len(steps) <= 104 and steps == sorted(steps)
    np.testing.assert_allclose(med, 33.5 * (1.0 + 0.001 * np.asarray(steps)), rtol=0.03)
    steps, top = CL.aggregate(per, CL.AGG_MAX, max_steps=208)
    np.testing.assert_allclose(top, 57.0 * (1.0 + 0.001 * np.asarray(steps)), rtol=0.03)
    # at or under the cap the exact per-step path is kept
    exact_steps, _ = CL.aggregate([(list(range(100)), [1.0] * 100)], CL.AGG_MEDIAN, max_steps=208)
    assert exact_steps == list(range(100))


def test_many_runs_and_layers_read_a_bounded_number_of_points(server, seeded, request_ctx,  # noqa: ANN001
                                                              monkeypatch) -> None:
    """20 runs x 48 layers x 2,000 steps read 1.9M points for one chart (17 s, the server busy for all
    of it); the section now asks each series for at most LAYER_POINT_BUDGET / (runs x layers) points
    and bins the aggregate. Here a small budget forces that path on the real server's downsampling."""
    cmp = sys.modules["dashboard.pages.compare"]
    run_ids = [seeded[r] for r in NAMES]
    meta, catalog, _ = cmp.load_runs(run_ids)
    monkeypatch.setattr(CL, "LAYER_POINT_BUDGET", 300)  # 6 series -> 50, raised to MIN_LAYER_POINTS (100) each
    assert CL.points_per_series(6) == CL.MIN_LAYER_POINTS < STEPS
    fig = CL.draw_layer_over_time("sv.weight.cond", CL.AGG_MEDIAN, CL.ALL_LAYERS, "step", meta, None, "minmax",
                                   catalog)
    assert len(fig.data) == 3
    for t in fig.data:
        x = np.asarray(t.x)
        # ~100 of the 200 logged steps (the downsampling keeps each range's min and max), first and last kept
        assert 25 <= len(x) <= CL.MIN_LAYER_POINTS + 2 and x[0] == 0 and x[-1] == STEPS - 1
        np.testing.assert_allclose(t.y, _logged(0.5, x), rtol=0.01)  # the median of fc1 and fc2
