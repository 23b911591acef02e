"""Seed groups on the compare page, in a real headless Chromium against the real server.

Two recipes × three seeds are sent through the ingest API: NorMuon reaches the loss target in about
half the steps of AdamW, and its ``fc1``/``fc2`` neuron update norms are four times more even (the
planted "why"). The page must group them by everything but the seed on its own, draw each group's
band, show the group time-to-target table with its interval columns, and list the why sentences,
each linking to the run-page panel that shows it.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import numpy as np
import pytest

from dashboard import figures as F
from dashboard import group_figures as GF

from .seed import Seeder, _scalar

TIMEOUT_MS = 30_000
LAYERS = ("fc1.weight", "fc2.weight")
STEPS = 200
TARGET = 0.5


def _group_run(seeder: Seeder, project: str, opt: str, seed: int, tau: float, cv: float) -> str:
    run_id = f"grp-{opt}-{seed}-{uuid.uuid4().hex[:6]}"
    seeder.create_run(run_id, name=f"grp-{opt}", project=project, optimizer=opt,
                      config={"optimizer": opt, "seed": seed, "lr": 0.02, "model": {"width": 32}})
    rng = np.random.default_rng(100 * seed + len(opt))
    st = np.arange(STEPS, dtype=np.int64)
    ti = time.time() + 0.05 * st
    loss = 2.0 * np.exp(-st / tau) + 0.1 + 0.01 * rng.standard_normal(STEPS)
    ev = st[9::10]
    scalars = [_scalar("loss", st, ti, loss), _scalar("samples_seen", st, ti, (32 * (st + 1)).astype(float)),
               _scalar("val_loss", ev, ti[ev], 2.0 * np.exp(-ev / tau) + 0.1)]
    arrays: list[dict[str, Any]] = []
    diag = st[::10]
    for li, layer in enumerate(LAYERS):
        noise = 1 + 0.03 * rng.standard_normal((3, len(diag)))
        scalars += [_scalar(f"neuron.cv/{layer}", diag, ti[diag], cv * (1 + 0.1 * li) * noise[0]),
                    _scalar(f"sv.weight.cond/{layer}", diag, ti[diag], (10.0 + li) * noise[1]),
                    _scalar(f"update_ratio/{layer}", diag, ti[diag], 0.01 * noise[2])]
        for s in diag:
            arrays.append({"key": "neuron.update_norm", "layer": layer, "step": int(s), "time": float(ti[s]),
                           "shape": [16], "values": np.abs(rng.normal(0.01, 0.01 * cv, 16)).round(7).tolist()})
            sv = np.sort(np.exp(-np.arange(16) / (4.0 if opt == "adamw" else 12.0)) * rng.uniform(0.9, 1.1, 16))
            arrays.append({"key": "sv.weight", "layer": layer, "step": int(s), "time": float(ti[s]),
                           "shape": [16], "values": sv[::-1].round(6).tolist()})
    seeder.post(run_id, scalars=scalars)
    seeder.post(run_id, arrays=arrays)
    seeder.finish(run_id)
    return run_id


@pytest.fixture(scope="module")
def groups(server) -> dict[str, list[str]]:  # noqa: ANN001
    seeder = Seeder(server.api, server.token)
    project = f"dash-groups-{uuid.uuid4().hex[:6]}"
    try:
        return {"normuon": [_group_run(seeder, project, "normuon", s, 25.0 + 2 * s, 0.05) for s in range(3)],
                "adamw": [_group_run(seeder, project, "adamw", s, 50.0 + 3 * s, 0.2) for s in range(3)]}
    finally:
        seeder.close()


def test_group_curve_mean_and_bands_on_a_common_grid() -> None:
    a = F.Line("s0", [0, 10, 20], [1.0, 2.0, 3.0])
    b = F.Line("s1", [0, 10, 20, 30], [3.0, 4.0, 5.0, 6.0])
    c = GF.group_curve("g", [a, b], band="minmax", color="#1f77b4")
    assert c.x == [0, 10, 20, 30] and c.mean == [2.0, 3.0, 4.0, 6.0]
    assert c.low == [1.0, 2.0, 3.0, 6.0] and c.high == [3.0, 4.0, 5.0, 6.0]  # 30: only s1 has data
    ci = GF.group_curve("g", [a, b], band="ci", color="#1f77b4")
    half = 12.706 * math.sqrt(2.0) / math.sqrt(2)  # t(0.975, 1) · sd / √n with sd = √2
    assert ci.low[0] == pytest.approx(2.0 - half, rel=1e-3) and ci.high[3] == 6.0
    fig = GF.band_figure([c], title="loss", x_title="step", y_title="loss", band="minmax", show_members=True)
    kinds = [t.meta for t in fig.data]
    assert kinds.count("band") == 1 and kinds.count("member") == 2 and fig.data[0].fill == "toself"


@pytest.mark.browser
def test_compare_page_groups_bands_table_and_why_links(server, groups, page) -> None:  # noqa: ANN001
    runs = ",".join(groups["normuon"] + groups["adamw"])
    base = groups["adamw"][0]
    page.goto(server.url + f"/compare?runs={runs}&keys=loss&metric=loss&target={TARGET}&baseline={base}")
    summary = page.locator("#cmp-groups-list")
    summary.wait_for(timeout=TIMEOUT_MS)
    assert "grp-normuon (n=3)" in summary.inner_text() and "grp-adamw (n=3)" in summary.inner_text()
    assert "everything but the seed" in page.locator("#cmp-group-by").inner_text()

    # group bands: one filled polygon per group under the mean lines
    page.wait_for_function("document.querySelectorAll('#cmp-scalars .js-plotly-plot .js-fill').length >= 2",
                           timeout=TIMEOUT_MS)
    traces = page.evaluate("document.querySelector('#cmp-scalars .js-plotly-plot').data.map(t => t.meta || 'line')")
    assert traces.count("band") == 2 and "member" not in traces
    page.locator("#cmp-members label", has_text="show each seed").click()
    page.wait_for_function("document.querySelector('#cmp-scalars .js-plotly-plot').data"
                           ".filter(t => t.meta === 'member').length === 6", timeout=TIMEOUT_MS)

    # the group time-to-target table: n, spreads, resolution and interval columns
    table = page.locator("#cmp-ttt-groups-table")
    table.wait_for(timeout=TIMEOUT_MS)
    heads = table.locator("th").all_inner_texts()
    for col in ("n", "steps (mean ± sd)", "resolution", "95 % CI (steps)", "95 % CI (time)", "verdict (steps)"):
        assert col in heads, heads
    row = table.locator("tr[data-group='grp-normuon'] td").all_inner_texts()
    assert row[1] == "3" and "±" in row[2]
    speedup, interval = float(row[6].lstrip("×")), row[7]
    low, high = (float(v) for v in interval.split("–"))
    assert 1.5 < low <= speedup <= high and row[-1] == "faster"
    assert "baseline" in table.locator("tr[data-group='grp-adamw'] td").first.inner_text()

    # the why panel: the planted difference first, as a sentence with a link to its panel
    items = page.locator("#cmp-why-list li")
    items.first.wait_for(timeout=TIMEOUT_MS)
    assert 1 <= items.count() <= 10
    first = items.first.inner_text()
    assert first.startswith("grp-normuon: neuron update norms") and "more even" in first and "3 seeds" in first
    link = items.first.locator("a.why-link")
    href = link.get_attribute("href")
    assert href.startswith(f"/runs/{groups['normuon'][0]}?tab=neurons&layer=fc")
    assert page.locator("#cmp-why-list li.why-noise").count() >= 1  # the equal diagnostics are marked
    link.click()
    page.wait_for_url(f"**/runs/{groups['normuon'][0]}?tab=neurons*", timeout=TIMEOUT_MS)
    page.locator(".tab--selected", has_text="Neuron norms").wait_for(timeout=TIMEOUT_MS)
    assert page.errors == []


@pytest.mark.browser
def test_why_link_opens_the_named_layer_and_step(server, groups, page) -> None:  # noqa: ANN001
    runs = ",".join(groups["normuon"] + groups["adamw"])
    page.goto(server.url + f"/compare?runs={runs}&keys=loss&metric=loss&target={TARGET}&baseline={groups['adamw'][0]}")
    link = page.locator("#cmp-why-list li a.why-link").first
    link.wait_for(timeout=TIMEOUT_MS)
    href = link.get_attribute("href")
    layer, step = href.split("layer=")[1].split("&")[0], href.split("step=")[1].split("&")[0]
    link.click()
    page.wait_for_url("**/runs/**", timeout=TIMEOUT_MS)
    # the named panel: that layer's neuron update norms, drawn at the step the diagnostic was read
    page.wait_for_function(
        "(want) => Array.from(document.querySelectorAll('#run-tab-neurons .js-plotly-plot'))"
        ".some(g => (((g.layout || {}).title || {}).text || '').startsWith(want))",
        arg=f"neuron update norms — {layer} (step {step})", timeout=TIMEOUT_MS)


def test_callbacks_per_run_why_and_group_bands(server, groups, request_ctx) -> None:  # noqa: ANN001
    """Without grouping every run is its own group and the why compares two single runs (one seed: the
    difference is scaled by its spread across layers); with grouping the scalar charts carry bands."""
    import sys

    cmp = sys.modules["dashboard.pages.compare"]
    run_ids = groups["normuon"] + groups["adamw"]
    meta, _, _ = cmp.load_runs(run_ids)
    single, _, _ = cmp.update_groups([], meta)
    assert not single["grouped"] and [g["n"] for g in single["groups"]] == [1] * 6
    a, base = single["groups"][0]["group"], single["groups"][3]["group"]
    panel = cmp.why(a, base, "step", 100, single, "loss", None, None, meta)
    text = str(panel)
    assert "cmp-why-list" in text and "1 seed" in text and "one seed on a side" in text

    grouped, summary, _ = cmp.update_groups([cmp.CG.ALL_BUT_SEED], meta)
    assert grouped["grouped"] and [g["n"] for g in grouped["groups"]] == [3, 3]
    charts = cmp.draw_scalars(["loss"], "step", 0, [], meta, grouped, "ci", ["show"])
    fig = charts[0].figure
    metas = [t.meta for t in fig.data]
    assert metas.count("band") == 2 and metas.count("member") == 6
    assert "95 % interval" in fig.layout.title.text
    table = cmp.group_time_to_target("loss", TARGET, "below", groups["adamw"][0], grouped, meta)
    assert "cmp-ttt-groups-table" in str(table) and "95 % CI (steps)" in str(table)

    # matched-step spectra and neuron norms work on groups too: a mean spectrum with a band per group,
    # neuron norms pooled over the seeds
    _, catalog, _ = cmp.load_runs(run_ids)
    spec, _, norms, _ = cmp.matched_panels("fc1.weight", "weight", "step", 100, meta, catalog, grouped, "minmax")
    assert [t.meta for t in spec.data].count("band") == 2 and "mean spectrum" in spec.layout.title.text
    names = {t.name for t in norms.data if t.name}
    assert {"grp-normuon (3 runs)", "grp-adamw (3 runs)"} <= names, names
    assert sum(len(t.x) for t in norms.data if t.name == "grp-normuon (3 runs)") == 3 * 16
