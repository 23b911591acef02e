"""The run page split into one module per tab: tabs without data are left out of the strip with the
option that turns them on, and the step slider stays where the user put it unless asked to follow."""

from __future__ import annotations

import sys

import pytest

from dashboard.queries import Catalog

from .test_browser import TIMEOUT_MS, graphs_with_data


def controls():
    return sys.modules["dashboard.pages.run.controls"]


@pytest.mark.browser
def test_tabs_without_data_are_left_out_and_named_with_their_option(server, seeded, page) -> None:
    page.goto(server.url + f"/runs/{seeded['infobatch']}")
    graphs_with_data(page, "#run-tab-scalars", 1)
    labels = page.locator("#run-tabs .tab").all_inner_texts()
    assert "InfoBatch" in labels and "Scalars" in labels and "Config" in labels
    assert "Spectra" not in labels and "Gradient difference" not in labels and "KFAC" not in labels
    note = page.locator("#run-tab-note").inner_text()
    assert "gdiff_every=" in note and "spectra_every=" in note
    # a run that logged everything shows every tab and no note
    page.goto(server.url + f"/runs/{seeded['slow']}")
    graphs_with_data(page, "#run-tab-scalars", 1)
    labels = page.locator("#run-tabs .tab").all_inner_texts()
    assert {"Gradient difference", "KFAC"} <= set(labels)
    assert "gdiff_every=" not in page.locator("#run-tab-note").inner_text()
    assert page.errors == []


@pytest.mark.usefixtures("request_ctx")
def test_step_slider_follows_the_newest_step_only_when_asked(server, seeded) -> None:
    from .test_callbacks import _catalog

    keys = _catalog(server, seeded["baseline"])
    lo, hi = Catalog.from_store(keys).array_range("sv.weight", "fc1.weight")
    # nothing chosen yet: open on the newest step
    assert controls().step_slider("spectra", "fc1.weight", "weight", keys, [], None, 0, 1)[2] == hi
    # the user reads step lo+10 while the range grew: the value stays
    got = controls().step_slider("spectra", "fc1.weight", "weight", keys, [], lo + 10, lo, hi - 10)
    assert got[2] == lo + 10 and got[1] == hi
    # "follow newest" ticked: it moves
    assert controls().step_slider("spectra", "fc1.weight", "weight", keys, ["follow"], lo + 10, lo, hi - 10)[2] == hi
    # a slider that sat at the newest step shown so far follows the new newest step
    marks = {str(lo): str(lo), str(hi - 10): str(hi - 10)}
    at_newest = controls().step_slider("spectra", "fc1.weight", "weight", keys, [], hi - 10, lo, hi - 10, marks)
    reading = controls().step_slider("spectra", "fc1.weight", "weight", keys, [], hi - 20, lo, hi - 10, marks)
    assert at_newest[2] == hi and reading[2] == hi - 20


def _title_starting(page, selector: str, want: str) -> str:
    """Wait for a graph under ``selector`` whose title starts with ``want``; return that title."""
    page.wait_for_function(
        "([sel, want]) => Array.from(document.querySelectorAll(sel + ' .js-plotly-plot'))"
        ".some(g => (((g.layout || {}).title || {}).text || '').startsWith(want))",
        arg=[selector, want], timeout=TIMEOUT_MS)
    return page.evaluate(
        "([sel, want]) => Array.from(document.querySelectorAll(sel + ' .js-plotly-plot'))"
        ".map(g => (((g.layout || {}).title || {}).text || '')).find(t => t.startsWith(want))", [selector, want])


@pytest.mark.browser
def test_url_layer_and_step_open_that_view_and_unknown_ones_fall_back_visibly(server, seeded, page) -> None:
    run = seeded["baseline"]  # sv.weight logged every 10 steps, 0..190, for fc1.weight and fc2.weight
    page.goto(server.url + f"/runs/{run}?tab=spectra&layer=fc2.weight&step=120")
    _title_starting(page, "#run-tab-spectra", "spectrum of W — fc2.weight (step 120)")
    assert "fc2.weight" in page.locator("#run-layer").inner_text()
    assert page.locator("#run-view-note").inner_text() == ""
    page.wait_for_function("() => location.search.includes('layer=fc2.weight')"
                           " && location.search.includes('step=120')",
                           timeout=TIMEOUT_MS)  # the URL keeps them (shareable)
    # between two logged steps: the spectrum at or before it
    page.goto(server.url + f"/runs/{run}?tab=neurons&layer=fc2.weight&step=125")
    _title_starting(page, "#run-tab-neurons", "neuron update norms — fc2.weight (step 120)")
    # a layer and a step this run does not have: first layer, newest step, and a note that says so
    page.goto(server.url + f"/runs/{run}?tab=spectra&layer=blocks.9.nope&step=5000")
    _title_starting(page, "#run-tab-spectra", "spectrum of W — fc1.weight (step 190)")
    note = page.locator("#run-view-note").inner_text()
    assert "blocks.9.nope" in note and "fc1.weight" in note and "5000" in note and "190" in note
    page.locator("#run-layer").click()  # the user picks a layer: the note about the link goes
    page.get_by_role("option", name="fc2.weight", exact=True).click()
    _title_starting(page, "#run-tab-spectra", "spectrum of W — fc2.weight")
    page.wait_for_function("() => document.querySelector('#run-view-note').innerText === ''",
                           timeout=TIMEOUT_MS)
    assert page.errors == []


@pytest.mark.browser
def test_a_tab_body_enters_the_page_when_first_opened_and_stays(server, seeded, page) -> None:
    """Hidden tabs cost nothing on load: no graphs drawn for them and no callback round trips
    (a run that logs everything had 23 hidden graphs and 15 empty round trips); opening a tab mounts
    its panels once, with data, and switching back does not mount them again."""
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.post_data or "") if "_dash-update-component" in r.url else None)
    page.goto(server.url + f"/runs/{seeded['slow']}")
    scalars = graphs_with_data(page, "#run-tab-scalars", 1)
    page.wait_for_load_state("networkidle")
    assert page.locator(".js-plotly-plot").count() == len(scalars)  # only the visible tab's graphs exist
    assert page.locator("#run-tab-spectra .js-plotly-plot").count() == 0
    assert not [a for a in asked if "-fresh" in a], "a hidden tab's panel callback fired on load"
    page.locator("#run-tabs .tab", has_text="Spectra").click()
    graphs_with_data(page, "#run-tab-spectra", 2)
    heatmap = page.locator("#run-tab-spectra .js-plotly-plot").first.element_handle()
    page.locator("#run-tabs .tab", has_text="Scalars").click()
    page.locator("#run-tab-spectra").wait_for(state="hidden", timeout=TIMEOUT_MS)
    page.locator("#run-tabs .tab", has_text="Spectra").click()
    page.locator("#run-tab-spectra").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert heatmap.evaluate("(g) => g.isConnected && g.data.length > 0")  # the same graph, not re-mounted
    # a link that opens on a tab holds that tab's body from the start
    page.goto(server.url + f"/runs/{seeded['slow']}?tab=neurons")
    graphs_with_data(page, "#run-tab-neurons", 1)
    assert page.locator("#run-tab-spectra .js-plotly-plot").count() == 0
    assert page.errors == []
