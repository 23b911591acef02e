"""Heatmaps that show the data: columns follow the logged steps (no barcode), constant fields get a
sensible colour range, a single logged step is a spectrum, tall grids group by block, and a zoomed
all-layer heatmap keeps its zoom while the live run adds columns (real Chromium)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from dashboard import figures as F
from dashboard.series import block_of, group_rows, layer_grid

from .seed import Seeder
from .test_browser import TIMEOUT_MS


def test_columns_follow_the_logged_steps_not_a_fixed_split() -> None:
    steps = np.arange(0, 400, 25)  # cond every 25 steps: 16 distinct steps
    grid = layer_grid({"a": (steps, steps * 1.0), "b": (steps, steps * 2.0)}, bins=200)
    assert grid.steps == [float(s) for s in steps]  # one column per logged step, none blank
    assert all(v is not None for row in grid.z for v in row)
    many = np.arange(0, 10_000)
    grid = layer_grid({"a": (many, np.ones(many.size))}, bins=200)
    assert len(grid.steps) == 200 and all(v == 1.0 for v in grid.z[0])
    # a layer the server downsampled to fewer points is forward-filled inside its range, not blank
    grid = layer_grid({"a": (steps, np.ones(steps.size)), "b": (steps[::2], np.full(steps[::2].size, 5.0))}, bins=200)
    assert grid.z[1][1] == 5.0 and grid.z[1][-1] in (5.0, None)


def test_constant_field_gets_a_range_from_zero_and_fractions_0_to_1() -> None:
    fig = F.heatmap_figure([0, 1, 2], ["a", "b"], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], title="frozen",
                           x_title="step", y_title="layer", colorbar_title="fraction")
    assert (fig.data[0].zmin, fig.data[0].zmax) == (0.0, 1.0)  # not plotly's -0.5..0.5
    fig = F.heatmap_figure([0, 1], ["a"], [[3.0, 3.0]], title="c", x_title="step", y_title="layer",
                           colorbar_title="c")
    assert (fig.data[0].zmin, fig.data[0].zmax) == (0.0, 3.0)


def test_two_hundred_layers_group_by_block_and_stay_under_the_height_cap() -> None:
    layers = [f"blocks.{b}.{m}.weight" for b in range(25) for m in ("q", "k", "v", "o", "up", "down", "gate", "n")]
    grid = layer_grid({name: ([0, 10], [1.0, float(i)]) for i, name in enumerate(layers)}, bins=200)
    grouped = group_rows(grid)
    assert len(grouped.layers) == 25 and grouped.layers[0] == "blocks.0 (8)"
    assert grouped.z[0][1] == 7.0  # max over the block's layers
    assert block_of("embed.weight") == "embed" and F.rows_height(len(layers)) <= F.MAX_HEATMAP_HEIGHT


@pytest.mark.browser
def test_zoomed_heatmap_keeps_its_zoom_while_live_columns_arrive(server, page) -> None:
    rid = "run-heat-live"
    seeder = Seeder(server.api, server.token)

    def cond(steps):
        return [{"key": f"sv.weight.cond/{layer}", "steps": list(steps), "times": [time.time()] * len(steps),
                 "values": [10.0 + i + s / 100 for s in steps]} for i, layer in enumerate(("fc1.weight", "fc2.weight"))]

    try:
        seeder.create_run(rid, name="heat-live", project="dash-heat")
        seeder.post(rid, scalars=[{"key": "loss", "steps": list(range(200)), "times": [time.time()] * 200,
                                   "values": [1.0 / (1 + s) for s in range(200)]}, *cond(range(0, 200, 25))])
        page.goto(server.url + f"/runs/{rid}?tab=spectra")
        graph = "document.querySelector('#run-spec-summary .js-plotly-plot')"
        page.wait_for_function(f"{graph} && {graph}.data && {graph}.data[0] && {graph}.data[0].x.length === 8",
                               timeout=TIMEOUT_MS)
        # a mouse zoom (a GUI edit: what uirevision keeps; a scripted relayout is not one)
        box = page.locator("#run-spec-summary .nsewdrag").first.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.3, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
        page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
        page.mouse.up()
        page.wait_for_function(f"{graph}.layout.xaxis.autorange === false", timeout=TIMEOUT_MS)
        zoomed = page.evaluate(f"{graph}.layout.xaxis.range")
        seeder.post(rid, scalars=[{"key": "loss", "steps": list(range(200, 230)), "times": [time.time()] * 30,
                                   "values": [0.001] * 30}, *cond([200, 225])])
        page.wait_for_function(f"{graph}.data[0].x.length === 10", timeout=TIMEOUT_MS)  # live refresh drew
        assert page.evaluate(f"{graph}.layout.xaxis.range") == zoomed  # the zoom survived it
        z = page.evaluate(f"{graph}.data[0].z")
        assert not isinstance(z, list) or all(v is not None and not (isinstance(v, float) and math.isnan(v))
                                              for row in z for v in row)
        assert page.errors == []
    finally:
        seeder.close()


@pytest.mark.browser
def test_spectrum_at_step_stays_on_the_read_step_and_follows_only_from_the_newest(server, page) -> None:
    rid = "run-spec-live"
    seeder = Seeder(server.api, server.token)

    def spectra(steps):
        return [{"key": "sv.weight", "layer": "fc1.weight", "step": s, "time": time.time(), "shape": [8],
                 "values": [float(8 - i) * (1 + s / 1000) for i in range(8)]} for s in steps]

    def loss(steps):
        return [{"key": "loss", "steps": list(steps), "times": [time.time()] * len(steps),
                 "values": [1.0 / (1 + s) for s in steps]}]

    at_step = "document.querySelector('#run-spec-at-step .js-plotly-plot')"
    heat = "document.querySelector('#run-spec-heatmap .js-plotly-plot')"

    def title_is(want: str) -> None:
        page.wait_for_function(f"(want) => {at_step} && (({at_step}.layout || {{}}).title || {{}}).text"
                               " === want",
                               arg=want, timeout=TIMEOUT_MS)

    try:
        seeder.create_run(rid, name="spec-live", project="dash-heat")
        seeder.post(rid, scalars=loss(range(101)), arrays=spectra(range(0, 101, 10)))
        # reading an older step (as a shared link or the slider sets it) while the run logs on
        page.goto(server.url + f"/runs/{rid}?tab=spectra&step=50")
        title_is("spectrum of W — fc1.weight (step 50)")
        seeder.post(rid, scalars=loss(range(101, 131)), arrays=spectra([110, 120, 130]))
        page.wait_for_function(f"{heat} && {heat}.data[0] && {heat}.data[0].x.length === 14",
                               timeout=TIMEOUT_MS)  # the live refresh reached the heavy panels
        page.wait_for_function("() => document.querySelector('#run-step').innerText.includes('130')",
                               timeout=TIMEOUT_MS)  # the slider's range grew to the new newest step
        assert page.evaluate(f"{at_step}.layout.title.text") == "spectrum of W — fc1.weight (step 50)"
        assert "step=50" in page.evaluate("location.search")
        # a slider at the newest step follows the run
        page.goto(server.url + f"/runs/{rid}?tab=spectra")
        title_is("spectrum of W — fc1.weight (step 130)")
        seeder.post(rid, scalars=loss(range(131, 161)), arrays=spectra([140, 150, 160]))
        title_is("spectrum of W — fc1.weight (step 160)")
        assert page.errors == []
    finally:
        seeder.close()
