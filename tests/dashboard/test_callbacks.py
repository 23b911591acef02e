"""Page layouts and callbacks called as plain functions against a real, seeded server.

The Dash app is created in-process (reading the server over HTTP like in production); callbacks
run inside a Flask request context, which is all they need from Dash.
"""

from __future__ import annotations

import math
import sys
import time

import pytest
from dash import no_update

from dashboard import figures as F
from dashboard.api import ApiClient, NotFound
from dashboard.config import DashboardConfig
from dashboard.queries import Catalog

from .seed import TARGET_LOSS, Seeder, first_step_below

pytestmark = pytest.mark.usefixtures("request_ctx")


def tab(name: str):
    """One tab module of the run page (the page is a package of one module per tab)."""
    return sys.modules[f"dashboard.pages.run.tabs.{name}"]


def page(name: str):
    """The page module the app registered (the app re-executes page modules to own their callbacks)."""
    return sys.modules[f"dashboard.pages.{name}"]


def _catalog(server, run_id: str) -> dict:
    api = ApiClient(DashboardConfig(api_url=server.url)).as_user(server.token)
    return Catalog.from_keys(api.keys(run_id)).to_store()


def _text(component) -> str:
    """All text in a component tree (what a user would read)."""
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None))


def test_api_client_reads_runs_and_rejects_unknown_ids(server, seeded) -> None:
    api = ApiClient(DashboardConfig(api_url=server.api)).as_user(server.token)  # /api/v1 suffix is accepted too
    runs, count = api.list_runs(project="dash-tests")
    assert {r["id"] for r in runs} >= set(seeded.values()) and count >= len(seeded)
    with pytest.raises(NotFound):
        api.get_run("no-such-run")
    last = api.series([seeded["baseline"]], ["loss"], after_step=197)[0]
    assert last["steps"] == [198, 199] and not last["downsampled"]


def test_runs_table_escapes_names_and_picks_varying_config(server, seeded) -> None:
    runs = page("runs")
    columns, rows, selected, count, projects, tags, hint, *_ = runs.load_runs(None, None, "dash-tests", None, None, None, 0,
                                                                         [seeded["fast"]], [])
    by_id = {r["id"]: r for r in rows}
    assert set(seeded.values()) <= set(by_id)
    assert by_id[seeded["xss"]]["name"] == "[" + r"\<script\>alert\(1\)\</script\>" + f"](/runs/{seeded['xss']})"
    assert "<script>" not in by_id[seeded["xss"]]["name"]
    assert by_id[seeded["live"]]["status"] == "● live"
    assert by_id[seeded["baseline"]]["alerts"] == 1
    assert {c["id"] for c in columns} >= {"cfg:lr", "sum:loss"}
    assert [rows[i]["id"] for i in selected] == [seeded["fast"]]  # selection kept by id
    assert "dash-tests" in projects and "muon" in tags and hint is None


def test_runs_compare_link_and_delete_confirmation() -> None:
    runs = page("runs")
    href, label, disabled, stored, nav = runs.selection_changed(["a", "b"])
    assert href == nav == "/compare?runs=a,b" and label == "compare 2 selected" and not disabled
    assert stored == ["a", "b"]
    displayed, text = runs.ask_delete(1, ["a", "b"])
    assert displayed and "Delete 2 runs" in text


def test_run_layout_unknown_id_is_a_message_not_a_traceback(seeded) -> None:
    layout = page("run").layout(run_id="does-not-exist")
    assert "Run not found" in _text(layout) and "does-not-exist" in _text(layout)
    layout = page("run").layout(run_id="../../etc")
    assert "Run not found" in _text(layout)


def test_run_layout_reads_view_options_from_the_query_string(seeded) -> None:
    layout = page("run").layout(run_id=seeded["baseline"], tab="spectra", layer="fc2.weight", x="samples",
                                smooth="0.6", keys="loss,acc")
    found = {}

    def walk(c):
        cid = getattr(c, "id", None)
        if isinstance(cid, str):
            found[cid] = c
        kids = getattr(c, "children", None)
        for k in kids if isinstance(kids, list) else [kids]:
            if k is not None and not isinstance(k, str):
                walk(k)

    walk(layout)
    assert found["run-tabs"].value == "spectra" and found["run-layer"].value == "fc2.weight"
    assert found["run-x"].value == "samples" and found["run-smooth"].value == 0.6
    assert found["run-keys-select"].value == ["loss", "acc"]
    assert found["run-tab-spectra"].style["display"] == "block" and found["run-tab-scalars"].style["display"] == "none"


def test_scalar_charts_then_live_append_with_patch(server, seeded) -> None:
    run = tab("scalars")
    rid = seeded["live"]
    api = ApiClient(DashboardConfig(api_url=server.url)).as_user(server.token)
    last = api.latest(rid, ["loss"])["loss"]["step"]  # other tests may have appended to this run
    graphs, cursor = run.draw_scalars(["loss", "acc"], "step", 0.5, [], "scalars", rid, {"created_at": None})
    assert len(graphs) == 2 and graphs[0].figure.layout.title.text == "loss"
    assert cursor["last"]["loss"] == last and cursor["last"]["acc"] == 49
    seeder = Seeder(server.api, server.token)
    try:
        seeder.post(rid, scalars=[{"key": "loss", "steps": [last + 1, last + 2], "times": [time.time()] * 2,
                                   "values": [0.123, "NaN"]}])
    finally:
        seeder.close()
    patches, new_cursor = run.append_live(1, rid, cursor, [{"type": "run-scalar-graph", "key": k} for k in ("loss", "acc")])
    assert new_cursor["last"]["loss"] == last + 2 and new_cursor["last"]["acc"] == 49
    ops = patches[0].to_plotly_json()["operations"]
    extended = {tuple(op["location"]): op["params"]["value"] for op in ops if op["operation"] == "Extend"}
    assert extended[("data", 0, "x")] == [last + 1.0, last + 2.0]
    assert extended[("data", 0, "y")][0] == 0.123 and math.isnan(extended[("data", 0, "y")][1])
    assert extended[("data", 2, "x")] == [last + 2.0]  # the NaN is marked
    assert len(extended[("data", 1, "y")]) == 2  # EMA continued
    assert patches[1] is run.no_update


def test_spectra_panels_for_a_muon_run(server, seeded) -> None:
    run = tab("spectra")
    rid = seeded["baseline"]
    keys = _catalog(server, rid)
    heat = run.heatmap("fc1.weight", "weight", {}, "spectra", rid)
    assert not F.is_empty(heat) and len(heat.data[0].x) == 20 and len(heat.data[0].y) == 16
    at = run.at_step("fc1.weight", "post_orth", 55, "spectra", rid, keys)
    assert [t.name for t in at.data] == ["momentum before orthogonalization @ step 50",
                                                "orthogonalized update @ step 50"]
    summary = run.summary("cond", "weight", {}, "spectra", None, rid, keys)
    assert list(summary.data[0].y) == ["fc1.weight", "fc2.weight"]
    ortho = run.summary("orth_err", "weight", {}, "spectra", None, rid, keys)
    assert not F.is_empty(ortho)
    lifted = run.summary("not_lifted", "weight", {}, "spectra", None, rid, keys)  # U's, whatever the source
    assert list(lifted.data[0].y) == ["fc1.weight", "fc2.weight"] and "Newton–Schulz" in lifted.layout.title.text


def test_tabs_without_data_show_how_to_enable_them(server, seeded) -> None:
    run = page("run")
    rid = seeded["infobatch"]
    keys = _catalog(server, rid)
    assert run.controls.layer_choices(Catalog.from_store(keys), "spectra") == []
    fig = tab("spectra").heatmap(None, None, {}, "spectra", rid)
    assert F.is_empty(fig) and "no spectra logged yet" in fig.layout.annotations[0].text
    parts, _, _ = tab("gdiff").panels(None, "step", 0, [], {}, "gdiff", rid, keys)
    assert F.is_empty(parts) and "FOP" in parts.layout.annotations[0].text


def test_neuron_gdiff_kfac_and_infobatch_panels(server, seeded) -> None:
    fast, slow, ib = seeded["fast"], seeded["slow"], seeded["infobatch"]
    dist, v = tab("neurons").distribution("fc1.weight", 100, "neurons", fast, _catalog(server, fast))
    assert not F.is_empty(dist) and len(dist.data[0].x) == 32 and not F.is_empty(v)
    cv, frozen = tab("neurons").summary({}, "neurons", None, fast, _catalog(server, fast))
    assert list(cv.data[0].y) == ["fc1.weight", "fc2.weight"] and not F.is_empty(frozen)
    rows = tab("neurons").row_rms("fc1.weight", {}, "neurons", fast)
    assert [t.name for t in rows.data if t.name and len(t.y)] == ["row_rms_cv_before", "row_rms_cv_after"]
    assert F.is_empty(tab("neurons").row_rms("fc1.weight", {}, "neurons", seeded["baseline"]))  # Muon: no rows spread
    keys = _catalog(server, slow)
    parts, sproj, beta = tab("gdiff").panels("fc2.weight", "samples", 0.0, ["log"], {}, "gdiff", slow, keys)
    assert [t.name for t in parts.data[:6:2]] == ["parallel", "orthogonal", "gdiff_norm"]
    assert parts.layout.yaxis.type == "log" and parts.layout.xaxis.title.text == "samples seen"
    assert max(parts.data[0].x) == 199 * 128  # x mapped through samples_seen
    assert not F.is_empty(beta)
    noise, kl = tab("gdiff").noise_and_kl("fc2.weight", "step", 0.0, {}, "gdiff", slow, keys)
    assert [t.name for t in noise.data if t.name and len(t.y)] == ["tr(Σ)/‖G‖²"]
    assert [t.name for t in kl.data if t.name and len(t.y)] == ["kl_base", "kl_cross", "kl_orth"]
    noise, kl = tab("gdiff").noise_and_kl("fc1.weight", "step", 0.0, {}, "gdiff", fast, _catalog(server, fast))
    assert F.is_empty(noise) and F.is_empty(kl)  # a NorMuon run: neither exists
    assert [t.name for t in beta.data if t.name and len(t.y)] == ["beta", "eta", "share of layers with negative β* (global)"]
    eigs, damping, spec = tab("kfac").panels("fc1.weight", "step", 100, {}, "kfac", slow, keys)
    assert len([t for t in eigs.data if t.name and len(t.y)]) == 4 and not F.is_empty(spec)
    assert [t.name for t in damping.data if t.name and len(t.y)][:2] == ["damping_rel", "damping_rel_mean"]
    pruned, saved, threshold, per_class = tab("infobatch").panels(3, {}, "infobatch", ib)
    assert list(pruned.data[0].x) == list(range(10)) and per_class.layout.title.text == "pruned fraction per class (epoch 3)"


def test_alerts_link_to_layer_and_step(seeded) -> None:
    table = tab("alerts").show_alerts("alerts", {}, seeded["baseline"])
    text = _text(table)
    assert "cond_explode" in text and "fc1.weight" in text
    link = table.children[1].children[0].children[-1].children
    assert link.href == f"/runs/{seeded['baseline']}?tab=spectra&layer=fc1.weight&step=120"


def test_compare_time_to_target_speedups(server, seeded) -> None:
    cmp = page("compare")
    ids_ = [seeded["baseline"], seeded["fast"], seeded["slow"]]
    meta, catalog, note = cmp.load_runs(ids_)
    assert note is None and list(meta) == ids_
    table, _, direction = cmp.time_to_target("loss", TARGET_LOSS, None, seeded["baseline"], meta)
    assert direction == "below"
    rows = {getattr(r, "data-run"): [_text(td) for td in r.children] for r in table.children[1].children[1].children}
    base, fast, slow = (first_step_below(TARGET_LOSS, tau) for tau in (50, 25, 100))
    assert rows[seeded["fast"]][2] == str(fast)
    assert rows[seeded["fast"]][5] == f"{base / fast:.2f}×"  # 81/41 = 1.98×
    assert rows[seeded["slow"]][6] == f"{base / slow:.2f}×"  # time speedup equals step speedup here
    assert rows[seeded["baseline"]][5] == "1.00×" and "(baseline)" in rows[seeded["baseline"]][0]


def test_compare_config_diff_and_matched_spectra(server, seeded) -> None:
    cmp = page("compare")
    ids_ = [seeded["baseline"], seeded["fast"], seeded["slow"]]
    meta, catalog, _ = cmp.load_runs(ids_)
    names, rows = cmp.config_diff(meta)
    keys = [k for k, _ in rows]
    assert keys == ["damping", "lr", "optimizer"]  # batch_size and model.width are equal: hidden
    overlay, grid, n_overlay, n_box = cmp.matched_panels("fc1.weight", "weight", "samples", 128 * 60, meta, catalog)
    assert len(overlay.data) == 3 and all("@ 60" in t.name for t in overlay.data)
    assert len(grid.data) == 3 and len(n_box.data) == 3 and n_overlay.data[0].name.endswith("@ 60")


def _signed_in_request(dash_app, token: str | None, *, origin: str | None = "http://127.0.0.1:8050"):
    """A callback request context as a browser on the dashboard's own page sends it; signed in with
    ``token`` (None: nobody), and the session's CSRF value is ``"csrf-1"``."""
    import flask

    server = dash_app.server
    headers = {"Host": "127.0.0.1:8050", **({"Origin": origin} if origin else {})}
    ctx = server.test_request_context("/_dash-update-component", method="POST", headers=headers)
    ctx.push()
    flask.session["csrf"] = "csrf-1"
    if token:
        flask.session["sid"] = server.extensions["optiscope-auth"].sessions.create(token, token_id=None, project=None)
    return ctx


def test_delete_after_confirmation_removes_the_run(server, dash_app) -> None:
    runs = page("runs")
    seeder = Seeder(server.api, server.token)
    try:
        seeder.create_run("run-to-delete", name="delete me")
    finally:
        seeder.close()
    api = ApiClient(DashboardConfig(api_url=server.url)).as_user(server.token)
    # refused, with the reason shown, and the run still there: nobody signed in / wrong CSRF / other origin
    for token, csrf, origin, reason in [(None, "csrf-1", "http://127.0.0.1:8050", "sign in with an API token to delete"),
                                        (server.token, "stale", "http://127.0.0.1:8050", "security token"),
                                        (server.token, "csrf-1", "http://evil.example", "did not come from"),
                                        (server.token, "csrf-1", None, "did not come from")]:
        ctx = _signed_in_request(dash_app, token, origin=origin)
        try:
            version, note = runs.delete_selected(1, ["run-to-delete"], 3, csrf)
        finally:
            ctx.pop()
        assert version is no_update and reason in _text(note), (token, csrf, origin, _text(note))
        assert api.get_run("run-to-delete")["name"] == "delete me"
    ctx = _signed_in_request(dash_app, server.token)
    try:
        version, note = runs.delete_selected(1, ["run-to-delete"], 3, "csrf-1")
    finally:
        ctx.pop()
    assert version == 4 and note is None
    with pytest.raises(NotFound):
        api.get_run("run-to-delete")