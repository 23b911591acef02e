"""server.analysis against known answers: interval coverage, identical groups, constructed "why" runs."""

from __future__ import annotations

import numpy as np
import pytest

from server.analysis import (
    RunData,
    bootstrap_speedup,
    group_runs,
    group_time_to_target,
    parse_filters,
    run_crossing,
    why,
)
from server.analysis.groups import Trace
from server.analysis.layers import layer_role
from server.analysis.speedup import NO_DIFFERENCE, TOO_FEW


def test_bootstrap_interval_covers_a_known_ratio_in_about_95_percent_of_repetitions() -> None:
    """Lognormal steps-to-target, true ratio of means exactly 1.6; 200 independent synthetic groups of
    5 seeds each (the demo's count, where percentile and BCa intervals cover only 80–88 %)."""
    rng = np.random.default_rng(12345)
    true_ratio, n, sigma = 1.6, 5, 0.15
    covered = 0
    for rep in range(200):
        base = 300 * rng.lognormal(0, sigma, n)
        run = 300 / true_ratio * rng.lognormal(0, sigma, n)
        ci = bootstrap_speedup(dict(enumerate(base)), {100 + i: v for i, v in enumerate(run)},
                               rng=np.random.default_rng(rep), n_resamples=999)
        assert not ci.paired and ci.low is not None and ci.high is not None
        covered += ci.low <= true_ratio <= ci.high
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_paired_interval_covers_a_known_ratio_and_is_narrower_than_unpaired() -> None:
    """Seeds shared by both groups (a hard seed is hard for both): the paired interval still covers the
    true ratio about 95 % of the time, and pairing removes the shared part of the spread."""
    rng = np.random.default_rng(54321)
    true_ratio, n = 2.0, 5
    covered, widths_paired, widths_apart = 0, [], []
    for rep in range(200):
        seed_effect = rng.lognormal(0, 0.3, n)  # shared by both groups
        base = 300 * seed_effect * rng.lognormal(0, 0.05, n)
        run = 150 * seed_effect * rng.lognormal(0, 0.05, n)
        ci = bootstrap_speedup(dict(enumerate(base)), dict(enumerate(run)), rng=np.random.default_rng(rep),
                               n_resamples=999)
        apart = bootstrap_speedup(dict(enumerate(base)), {100 + i: v for i, v in enumerate(run)},
                                  rng=np.random.default_rng(rep), n_resamples=999)
        assert ci.paired and not apart.paired
        covered += ci.low <= true_ratio <= ci.high
        widths_paired.append(ci.high - ci.low)
        widths_apart.append(apart.high - apart.low)
    assert 0.90 <= covered / 200 <= 0.99, covered
    assert np.median(widths_paired) < 0.5 * np.median(widths_apart)


def test_identical_groups_give_no_difference() -> None:
    steps = {0: 150.0, 1: 175.0, 2: 149.0, 3: 160.0}
    ci = bootstrap_speedup(steps, dict(steps), rng=np.random.default_rng(0))
    assert ci.ratio == pytest.approx(1.0) and ci.paired
    assert ci.verdict == NO_DIFFERENCE and ci.low <= 1.0 <= ci.high


def test_clear_speedup_is_faster_and_one_seed_has_no_interval() -> None:
    ci = bootstrap_speedup({0: 329, 1: 310, 2: 350}, {0: 154, 1: 150, 2: 165}, rng=np.random.default_rng(0))
    assert ci.verdict == "faster" and ci.low > 1.5 and ci.paired
    one = bootstrap_speedup({0: 300}, {0: 150}, rng=np.random.default_rng(0))
    assert one.ratio == 2.0 and one.low is None and one.verdict == TOO_FEW
    two = bootstrap_speedup({0: 300, 1: 320}, {0: 150, 1: 170}, rng=np.random.default_rng(0))
    assert two.low is None and two.verdict == TOO_FEW  # 2 seeds: 3 distinct resamples, no interval
    assert bootstrap_speedup({0: 300}, {0: None}, rng=np.random.default_rng(0)).verdict == "not reached"


def test_same_request_same_interval_and_no_global_rng() -> None:
    np.random.seed(1)
    before = np.random.random()
    np.random.seed(1)
    a = bootstrap_speedup({0: 3, 1: 4, 2: 5}, {0: 2, 1: 2.5, 2: 2.2}, rng=np.random.default_rng(7))
    b = bootstrap_speedup({0: 3, 1: 4, 2: 5}, {0: 2, 1: 2.5, 2: 2.2}, rng=np.random.default_rng(7))
    assert a == b
    assert np.random.random() == before  # the global stream was not advanced


def _loss_run(rid: str, opt: str, seed: int, evals: list[float]) -> RunData:
    steps = [25 * (i + 1) - 1 for i in range(len(evals))]
    return RunData(id=rid, name=f"gpt-{opt}", config={"optimizer": opt, "seed": seed, "lr": 0.02},
                   series={"val_loss": Trace.of(steps, evals, [100.0 + 10 * i for i in range(len(evals))]),
                           "samples_seen": Trace.of(range(200), [32 * (s + 1) for s in range(200)])},
                   first_time=100.0)


def test_crossing_resolution_is_the_evaluation_interval() -> None:
    c = run_crossing(_loss_run("r", "adamw", 0, [3.0, 2.9, 2.8, 2.7, 2.6, 2.39]), "val_loss", 2.4, "below")
    assert c.reached and c.step == 149 and c.step_lo == 125 and c.resolution == "125–149"
    assert c.interval == 25 and c.samples == 32 * 150 and c.time_s == pytest.approx(50.0)
    missed = run_crossing(_loss_run("m", "adamw", 0, [3.0, 2.9]), "val_loss", 2.4, "below")
    assert not missed.reached and missed.final == 2.9
    exact = run_crossing(_loss_run("e", "adamw", 0, [3.0, 2.4]), "val_loss", 2.4, "below")
    assert exact.reached and exact.step == 49  # at the target counts as reached (≤, not <)


def test_groups_by_everything_but_the_seed_and_table_pairs_seeds() -> None:
    runs = [_loss_run(f"a{s}", "adamw", s, [3.0, 2.8, 2.6, 2.5 - 0.01 * s, 2.39]) for s in range(3)]
    # seed 0 crosses at the second evaluation (step 49), seeds 1 and 2 (2.41, 2.43) at the third (74)
    runs += [_loss_run(f"n{s}", "normuon", s, [2.9, 2.39 + 0.02 * s, 2.2]) for s in range(3)]
    runs += [_loss_run("x0", "muon", 0, [2.9, 2.7, 2.6, 2.3])]
    groups = group_runs(runs)
    assert [(g.label, g.n) for g in groups] == [("gpt-adamw", 3), ("gpt-normuon", 3), ("gpt-muon", 1)]
    by_opt = group_runs(runs, ["optimizer"])
    assert [g.label for g in by_opt] == ["adamw", "normuon", "muon"]
    base = next(g for g in groups if g.matches({"optimizer": "adamw"}))
    rows = {r.group.label: r.as_dict() for r in group_time_to_target(
        groups, base, key="val_loss", target=2.4, direction="below", rng=np.random.default_rng(0))}
    assert rows["gpt-adamw"]["baseline"] and rows["gpt-adamw"]["steps_verdict"] == "baseline"
    normuon = rows["gpt-normuon"]
    assert normuon["n"] == 3 and normuon["n_reached"] == 3 and normuon["paired"]
    assert normuon["steps_mean"] == pytest.approx((49 + 74 + 74) / 3)
    assert normuon["speedup_steps"] == pytest.approx(124 / normuon["steps_mean"])
    assert normuon["steps_ci_low"] <= normuon["speedup_steps"] <= normuon["steps_ci_high"]
    assert normuon["eval_interval"] == 25
    assert [r["resolution"] for r in normuon["runs"]] == ["25–49", "50–74", "50–74"]
    assert rows["gpt-muon"]["steps_verdict"] == TOO_FEW


def test_parse_filters_reads_json_and_names_the_field() -> None:
    assert parse_filters(["optimizer=normuon", "lr=0.02"], field_name="a") == {"optimizer": "normuon", "lr": 0.02}
    with pytest.raises(ValueError, match="baseline"):
        parse_filters(["optimizer"], field_name="baseline")


def test_layer_roles_replace_indices() -> None:
    assert layer_role("blocks.11.mlp.fc.weight") == "blocks.*.mlp.fc.weight"
    assert layer_role("0.weight") == "*.weight"
    assert layer_role("head.weight") == "head.weight"


N_BLOCKS = 4
QUANTITIES = ("neuron.cv", "update_ratio", "sv.weight.eff_rank", "sv.update.cond", "neuron.frozen_frac")


def _diag_run(rid: str, opt: str, seed: int, *, bump: dict[tuple[str, str], float] | None = None) -> RunData:
    """Per-layer diagnostics at steps 10 and 20; seed noise of ~2 %; ``bump`` scales one (quantity, layer)."""
    rng = np.random.default_rng(seed)
    series = {}
    for q_i, q in enumerate(QUANTITIES):
        for b in range(N_BLOCKS):
            for part in ("attn.qkv", "mlp.fc"):
                layer = f"blocks.{b}.{part}.weight"
                level = 0.0 if q == "neuron.frozen_frac" else (q_i + 1) * (1 + 0.1 * b)
                v = level * (1 + 0.02 * rng.standard_normal(2))
                v = v * (bump or {}).get((q, layer), 1.0)
                series[f"{q}/{layer}"] = Trace.of([10, 20], v)
    series["nonfinite/blocks.0.mlp.fc.weight"] = Trace.of([10, 20], [0, 5 if opt == "a" else 0])
    return RunData(id=rid, name=opt, config={"optimizer": opt, "seed": seed}, series=series)


@pytest.mark.parametrize("seeds", [1, 4])
def test_why_ranks_the_one_diagnostic_made_different_first(seeds: int) -> None:
    fc = [f"blocks.{b}.mlp.fc.weight" for b in range(N_BLOCKS)]
    bump = {("neuron.cv", layer): 0.25 for layer in fc}
    a = [_diag_run(f"a{s}", "a", 100 + s, bump=bump) for s in range(seeds)]
    base = [_diag_run(f"b{s}", "b", 200 + s) for s in range(seeds)]
    result = why(a, base, a_label="NorMuon", baseline_label="AdamW", match="step", at=20)
    first = result.rows[0]
    assert (first.quantity, first.role) == ("neuron.cv", "blocks.*.mlp.fc.weight")
    assert first.significant and first.ratio == pytest.approx(0.25, rel=0.05)
    assert first.layers == tuple(fc) and first.effect < 0
    assert "NorMuon: neuron update norms" in first.sentence and "more even" in first.sentence
    assert first.link == f"/runs/a0?tab=neurons&layer={fc[0]}&step=20"
    assert first.baseline_link == f"/runs/b0?tab=neurons&layer={fc[0]}&step=20"
    assert first.panel.startswith("run page › Neurons")
    assert [r for r in result.rows if r.significant] == [first]  # nothing else flagged
    assert all(r.quantity != "nonfinite" for r in result.rows)
    assert len(result.lines) == 10 and result.within_noise == len(result.rows) - 1


@pytest.mark.parametrize("seeds", [1, 3])
def test_why_with_all_diagnostics_equal_flags_nothing(seeds: int) -> None:
    a = [_diag_run(f"a{s}", "a", s) for s in range(seeds)]
    base = [_diag_run(f"b{s}", "b", s) for s in range(seeds)]  # same seeds: identical values
    result = why(a, base, a_label="A", baseline_label="B")
    assert result.rows and not any(r.significant for r in result.rows)
    assert all(r.effect == 0 for r in result.rows)
    assert all(line.endswith("within noise") for line in result.lines)


@pytest.mark.parametrize("seeds", [1, 4])
def test_why_with_equal_diagnostics_and_only_seed_noise_flags_nothing(seeds: int) -> None:
    """Same diagnostics up to seed-to-seed noise (different seeds on the two sides): nothing flagged."""
    a = [_diag_run(f"a{s}", "a", 10 + s) for s in range(seeds)]
    base = [_diag_run(f"b{s}", "b", 20 + s) for s in range(seeds)]
    result = why(a, base, a_label="A", baseline_label="B", at=20)
    assert len(result.rows) == len(QUANTITIES) * 2
    assert not any(r.significant for r in result.rows), [r.sentence for r in result.rows if r.significant]


def test_why_links_each_diagnostic_to_the_panel_that_shows_it() -> None:
    from server.analysis.panels import panel_for

    def link(q: str) -> str:
        return panel_for(q, "blocks.0.mlp.fc.weight", step=40, a_run="A", baseline_run="B",
                         compare_runs=["A", "B"]).link

    assert link("sv.update.cond") == ("/runs/A?tab=spectra&layer=blocks.0.mlp.fc.weight&step=40&source=update"
                                      "&metric=cond")
    assert link("orth_err").endswith("tab=spectra&layer=blocks.0.mlp.fc.weight&step=40&metric=orth_err")
    assert link("neuron.frozen_frac") == "/runs/A?tab=neurons&layer=blocks.0.mlp.fc.weight&step=40"
    assert link("gdiff.cos_g1_g2") == "/runs/A?tab=gdiff&layer=blocks.0.mlp.fc.weight"
    assert link("kfac.A_spread").startswith("/runs/A?tab=kfac&")
    assert link("update_ratio") == "/compare?runs=A,B&keys=update_ratio/blocks.0.mlp.fc.weight"


def test_why_matches_on_loss_per_run_and_skips_runs_that_never_reach() -> None:
    a = _diag_run("a0", "a", 1)
    b = _diag_run("b0", "b", 2)
    never = _diag_run("b1", "b", 3)
    a.series["val_loss"] = Trace.of([9, 19], [2.5, 2.3])  # type: ignore[index]
    b.series["val_loss"] = Trace.of([9, 19], [2.3, 2.1])  # type: ignore[index]
    never.series["val_loss"] = Trace.of([9, 19], [3.0, 2.9])  # type: ignore[index]
    result = why([a], [b, never], a_label="A", baseline_label="B", match="loss", at=2.3)
    assert result.matched_steps == {"a0": 19, "b0": 9}
    assert any("never reached" in n for n in result.notes)


# ------------------------------------------------------------------------------------------ the API
# The real app over a real SQLite file (and PostgreSQL for the first test), data sent through the
# ingest endpoint as a probe would.

from tests.server.analysis_runs import two_groups  # noqa: E402
from tests.server.conftest import Api, uid  # noqa: E402


def _two_groups(api: Api, *, seeds: int = 3) -> tuple[str, list[str], list[str]]:
    return two_groups(api.post, seeds=seeds)


def test_api_groups_and_time_to_target_with_intervals(api: Api) -> None:
    project, adamw, normuon = _two_groups(api)
    groups = api.get("/analysis/groups", params={"project": project})
    assert groups.status_code == 200, groups.text
    got = groups.json()["groups"]
    assert [(g["group"], g["n"], g["run_ids"], g["seeds"]) for g in got] == [
        ("gpt-adamw", 3, adamw, [0, 1, 2]), ("gpt-normuon", 3, normuon, [0, 1, 2])]
    by_opt = api.get("/analysis/groups", params={"project": project, "group_by": "optimizer"}).json()
    assert [g["group"] for g in by_opt["groups"]] == ["adamw", "normuon"]

    r = api.get("/analysis/time-to-target", params={"project": project, "key": "val_loss", "target": 2.4,
                                                    "baseline": "optimizer=adamw"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["baseline"] == "gpt-adamw" and out["level"] == 0.95
    rows = {row["group"]: row for row in out["rows"]}
    base, fast = rows["gpt-adamw"], rows["gpt-normuon"]
    assert base["baseline"] and base["steps_mean"] == 124 and base["n"] == 3
    # normuon: seed 0 at step 49, seeds 1, 2 at 74 (2.41, 2.43 > 2.4); paired by seed with adamw's 124s
    assert fast["steps_mean"] == pytest.approx((49 + 74 + 74) / 3) and fast["paired"]
    assert fast["speedup_steps"] == pytest.approx(124 / fast["steps_mean"])
    assert 1.0 < fast["steps_ci_low"] <= fast["speedup_steps"] <= fast["steps_ci_high"]
    assert fast["steps_verdict"] == "faster" and fast["eval_interval"] == 25
    assert [run["resolution"] for run in fast["runs"]] == ["25–49", "50–74", "50–74"]
    # wall time: 2 s per step from the run's first point (t=1000 at step 0 of samples_seen)
    assert fast["time_s_mean"] == pytest.approx(2 * fast["steps_mean"] + 2 * 0)
    assert fast["samples_mean"] == pytest.approx(np.mean([32 * 41, 32 * 71, 32 * 71]))
    # the same request gives the same interval
    again = api.get("/analysis/time-to-target", params={"project": project, "key": "val_loss", "target": 2.4,
                                                        "baseline": "optimizer=adamw"}).json()
    assert again == out


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_api_why_ranks_the_planted_difference_with_links(api: Api) -> None:
    project, adamw, normuon = _two_groups(api)
    r = api.get("/analysis/why", params={"project": project, "a": "optimizer=normuon",
                                         "baseline": "optimizer=adamw", "at": 100, "top": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["a"] == "gpt-normuon" and out["baseline"] == "gpt-adamw" and out["a_run_ids"] == normuon
    assert out["compared"] == 6 and len(out["rows"]) == 3 and len(out["lines"]) == 3
    first = out["rows"][0]
    assert (first["diagnostic"], first["layer"]) == ("neuron.cv", "blocks.*.mlp.fc.weight")
    assert first["significant"] and not first["within_noise"] and first["ratio"] == pytest.approx(0.25, rel=0.05)
    assert out["significant"] == 1 and out["lines"][0] == first["sentence"]
    assert "4.0" in first["sentence"] and "more even" in first["sentence"] and "3 seeds" in first["sentence"]
    assert first["link"] == f"/runs/{normuon[0]}?tab=neurons&layer=blocks.0.mlp.fc.weight&step=100"
    assert first["baseline_link"].startswith(f"/runs/{adamw[0]}?tab=neurons")
    # runs instead of groups; matched by loss: each run read where it first reached val_loss 2.4
    by_runs = api.get("/analysis/why", params=[("run_id", i) for i in adamw + normuon] + [
        ("a_run", normuon[0]), ("baseline_run", adamw[0]), ("match", "loss"), ("at", 2.4)]).json()
    assert by_runs["matched_steps"] == {normuon[0]: 49, adamw[0]: 124}
    assert by_runs["rows"][0]["diagnostic"] == "neuron.cv" and by_runs["rows"][0]["noise"] == "layers"
    assert by_runs["rows"][0]["link"].endswith("&step=50")  # where the diagnostic was logged, nearest 49


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_api_analysis_bad_parameters_are_422_naming_the_field(api: Api) -> None:
    project, adamw, _ = _two_groups(api, seeds=1)
    ttt = {"project": project, "key": "val_loss", "target": 2.4}

    def field(path: str, params: object) -> list[str]:
        r = api.get(path, params=params)
        assert r.status_code == 422, (params, r.text)
        return [d["loc"][-1] for d in r.json()["detail"]]

    assert field("/analysis/time-to-target", {**ttt, "baseline": "optimizer"}) == ["baseline"]
    assert field("/analysis/time-to-target", {**ttt, "baseline": "optimizer=sgd"}) == ["baseline"]
    assert field("/analysis/time-to-target", {**ttt, "target": "nan"}) == ["target"]
    assert field("/analysis/time-to-target", {**ttt, "direction": "sideways"}) == ["direction"]
    assert field("/analysis/time-to-target", {"project": project, "target": 2.4}) == ["key"]
    assert field("/analysis/time-to-target", {**ttt, "baseline_run": uid()}) == ["baseline_run"]
    assert field("/analysis/time-to-target", {**ttt, "config": "lr"}) == ["config"]
    assert field("/analysis/time-to-target", {**ttt, "project": uid()}) == ["project"]
    why_ok = {"project": project, "a": "optimizer=normuon", "baseline": "optimizer=adamw"}
    assert field("/analysis/why", {**why_ok, "top": 0}) == ["top"]
    assert field("/analysis/why", {**why_ok, "match": "epoch"}) == ["match"]
    assert field("/analysis/why", {"project": project, "baseline": "optimizer=adamw"}) == ["a"]
    assert field("/analysis/why", {**why_ok, "a": "optimizer=adamw"}) == ["a"]  # both sides one group
    assert field("/analysis/why", {**why_ok, "a": "lr=0.02"}) == ["a"]  # matches two groups
    assert field("/analysis/why", {**why_ok, "match": "loss", "key": "nope"}) == ["key"]
    assert api.get("/analysis/groups", params={"run_id": uid()}).status_code == 404
    assert api.get("/analysis/why", params={**why_ok, "top": 1}).status_code == 200


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_api_analysis_reads_follow_the_runs_read_policy(make_api) -> None:  # noqa: ANN001
    api = make_api(host="0.0.0.0")  # not loopback: reads need a token, as GET /runs does
    project, _, _ = _two_groups(api, seeds=1)
    for path, params in (("/analysis/groups", {"project": project}),
                         ("/analysis/time-to-target", {"project": project, "key": "val_loss", "target": 2.4}),
                         ("/analysis/why", {"project": project, "a": "optimizer=normuon",
                                            "baseline": "optimizer=adamw"})):
        assert api.get("/runs", params={"project": project}).status_code == 401
        assert api.get(path, params=params).status_code == 401
        assert api.get(path, params=params, headers=api.auth).status_code == 200, path


@pytest.mark.parametrize("engine_name", ["sqlite"])
def test_api_analysis_of_a_project_scoped_token_stops_at_its_project(make_api) -> None:  # noqa: ANN001
    api = make_api(host="0.0.0.0")
    project, a_ids, _ = _two_groups(api, seeds=1)
    scoped = {"Authorization": f"Bearer {api.new_token(project='elsewhere')}"}
    groups = api.get("/analysis/groups", params={"project": project}, headers=scoped)
    assert groups.status_code == 200 and groups.json()["groups"] == []  # another project's runs: none visible
    assert api.get("/analysis/groups", params={"run_id": a_ids[0]}, headers=scoped).status_code == 404
    own = {"Authorization": f"Bearer {api.new_token(project=project)}"}
    assert api.get("/analysis/groups", params={"run_id": a_ids[0]}, headers=own).status_code == 200
    assert api.get("/analysis/groups", params={"project": project}, headers=own).json()["groups"]
