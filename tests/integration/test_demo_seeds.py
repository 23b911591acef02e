"""``optiscope demo --seeds N``: every recipe once per seed, runs that group by everything but the seed."""

from __future__ import annotations

import dataclasses

import pytest

from probe.demo.orchestrator import format_group_table
from probe.demo.specs import build_specs
from server.analysis import RunData, group_runs


def test_seeds_repeat_every_recipe_and_group_by_everything_but_the_seed() -> None:
    one = build_specs(quick=True)
    three = build_specs(quick=True, seeds=3)
    assert len(three) == 3 * len(one)
    assert len({s.label for s in three}) == len(three)  # progress bars and report files stay apart
    assert {s.name for s in three} == {s.name for s in one}  # the server sees one name per recipe
    assert [s.group for s in three[:9]] == ["language"] * 9  # the longest runs still go first
    # the config the training sends is the spec itself: only the seed differs within a recipe
    runs = [RunData(id=s.label, name=s.name, config=dataclasses.asdict(s)) for s in three]
    groups = group_runs(runs)
    assert sorted(g.label for g in groups) == sorted(s.name for s in one)
    assert all(g.n == 3 and sorted(r.seed for r in g.runs) == [0, 1, 2] for g in groups)
    with pytest.raises(ValueError, match="seeds"):
        build_specs(quick=True, seeds=0)


def test_group_table_shows_spreads_intervals_and_verdicts() -> None:
    row = {"group": "gpt-normuon", "n": 3, "n_reached": 3, "baseline": False, "eval_interval": 25,
           "steps_mean": 154.0, "steps_sd": 11.0, "time_s_mean": 30.5, "time_s_sd": 2.0,
           "speedup_steps": 2.15, "steps_ci_low": 1.9, "steps_ci_high": 2.4, "steps_verdict": "faster",
           "speedup_time": 1.1, "time_ci_low": 0.9, "time_ci_high": 1.3, "time_verdict": "no difference at this n"}
    base = {"group": "gpt-adamw", "n": 3, "n_reached": 2, "baseline": True, "eval_interval": 25,
            "steps_mean": 329.0, "steps_sd": 21.0, "time_s_mean": 33.0, "time_s_sd": None}
    text = format_group_table({"group": "language", "title": "char GPT", "key": "val_loss", "target": 2.4,
                               "direction": "below", "claim": "c", "rows": [base, row]})
    assert "329 ± 21" in text and "2/3" in text and "baseline" in text
    assert "×2.15 [1.90, 2.40]" in text and "×1.10 [0.90, 1.30] no difference" in text
