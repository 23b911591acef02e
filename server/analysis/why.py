"""The ranked "why": which per-layer diagnostics differ most between A and a baseline, at matched progress.

Every per-layer diagnostic both sides logged is read at a matched point — the same step, the same
number of samples seen, or the step where each run first reached the same loss — averaged over the
layers of one role (``blocks.*.mlp.fc.weight``) and ranked by a standardized difference:

* with >= 2 seeds on both sides the scale is the pooled seed-to-seed standard deviation (Cohen's d),
  and "within noise" is decided by Welch's t-test with a Benjamini–Hochberg correction over all the
  (diagnostic, role) pairs compared — a 48-layer model compares hundreds, and uncorrected p < 0.05 would
  flag a dozen by chance;
* with one seed there is no seed-to-seed noise estimate, so the scale is the robust spread (1.4826 × MAD)
  across layers of the A − baseline difference, about its role's median (how consistently the layers of
  one kind differ), and a pair counts as a difference beyond |z| >= 3.

Positive quantities spanning decades (condition numbers, norms, ratios) are compared in log space, so
"4.1× more even" is the readable number; quantities that can be zero or negative (fractions, cosines)
are compared as plain differences. A scale floor (1 % in log space) keeps identical deterministic
diagnostics from dividing by zero: differences below it are never flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from server.analysis.crossing import SAMPLES_KEY, first_crossing
from server.analysis.groups import RunData
from server.analysis.layers import DERIVED, describe, layer_role, split_key
from server.analysis.panels import panel_for

__all__ = ["Match", "Matched", "WhyRow", "WhyResult", "why", "match_runs", "LOG_FLOOR", "Z_SINGLE", "Q_LEVEL"]

Match = Literal["step", "samples", "loss"]
LOG_FLOOR = 0.01  # 1 %: log-space differences smaller than this are never a finding
Z_SINGLE = 3.0  # one seed: robust z-score across layers beyond which a difference is flagged
Q_LEVEL = 0.05  # Benjamini–Hochberg false discovery rate with seeds
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class WhyRow:
    """One (diagnostic, layer role) comparison. ``a``/``baseline`` are in the quantity's own units
    (geometric means across seeds and layers on the log scale, arithmetic on the linear one)."""

    quantity: str
    role: str
    layers: tuple[str, ...]
    a: float
    baseline: float
    ratio: float | None  # a ÷ baseline (log scale only)
    diff: float  # a − baseline
    effect: float  # standardized difference, signed
    p: float | None
    q: float | None
    significant: bool
    n_a: int
    n_baseline: int
    scale: Literal["log", "linear"]
    noise: Literal["seeds", "layers"]
    sentence: str
    panel: str  # where the dashboard shows it, in words
    link: str  # opens that panel for A's first run
    baseline_link: str  # the same panel for the baseline's first run

    @property
    def key(self) -> str:
        return f"{self.quantity}/{self.layers[0]}"

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.role, "diagnostic": self.quantity, "a": self.a, "baseline": self.baseline,
                "ratio": self.ratio, "diff": self.diff, "effect": self.effect, "p": self.p, "q": self.q,
                "significant": self.significant, "within_noise": not self.significant, "n_a": self.n_a,
                "n_baseline": self.n_baseline,
                "layers": list(self.layers), "key": self.key, "scale": self.scale, "noise": self.noise,
                "sentence": self.sentence, "panel": self.panel, "link": self.link,
                "baseline_link": self.baseline_link}


@dataclass(frozen=True)
class WhyResult:
    a_label: str
    baseline_label: str
    match: Match
    at: float | None
    matched_steps: dict[str, int]  # run id -> the step its diagnostics were read at
    rows: list[WhyRow]  # every compared pair, ranked by |effect|
    top: int
    notes: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [r.sentence for r in self.rows[: self.top]]

    @property
    def within_noise(self) -> int:
        return sum(not r.significant for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a_label, "baseline": self.baseline_label, "match": self.match, "at": self.at,
                "matched_steps": self.matched_steps, "lines": self.lines, "top": self.top,
                "compared": len(self.rows), "significant": len(self.rows) - self.within_noise,
                "within_noise": self.within_noise, "notes": self.notes,
                "rows": [r.as_dict() for r in self.rows]}


@dataclass(frozen=True)
class Matched:
    """Where each run is read: the value matched at and each run's step (runs that never reach it are
    absent, named in ``notes``)."""

    at: float
    steps: dict[str, int]
    notes: list[str]


def match_runs(
    runs: Sequence[RunData], *, match: Match = "step", at: float | None = None, match_key: str = "val_loss",
    direction: str = "below", last_steps: Mapping[str, Sequence[int]] | None = None,
) -> Matched:
    """The step each run is read at, before any per-layer diagnostic is read.

    Apart from :func:`why` so a caller can read each per-layer series only near its run's step: matching
    needs the ``match_key`` / samples series in full, but of the diagnostics (``match="step"`` with no
    ``at``) only the last step of each, which ``last_steps`` (run id -> those last steps) gives from
    stored metadata; without it they come from ``run.series``.
    """
    if at is None:
        at = _default_at(runs, match, match_key, direction, last_steps)
    notes: list[str] = []
    steps: dict[str, int] = {}
    for run in runs:
        step = _matched_step(run, match, at, match_key, direction)
        if step is None:
            notes.append(f"{run.name or run.id} never reached {match} {at:g}: left out")
        else:
            steps[run.id] = step
    return Matched(at, steps, notes)


def why(
    a_runs: Sequence[RunData], baseline_runs: Sequence[RunData], *, a_label: str, baseline_label: str,
    match: Match = "step", at: float | None = None, match_key: str = "val_loss", direction: str = "below",
    top: int = 10, matched: Matched | None = None,
) -> WhyResult:
    """Rank the per-layer diagnostics of ``a_runs`` against ``baseline_runs`` at matched progress.

    ``at`` is the step, the samples seen, or the ``match_key`` value to match at; by default the latest
    point every run reached (the last common step, the fewest samples any run saw, the best loss the
    worst run reached). Runs that never reach ``at`` are left out and named in ``notes``. ``matched``
    (from :func:`match_runs` over ``[*a_runs, *baseline_runs]`` with these arguments) skips the matching;
    the runs' per-layer series then need only hold the points nearest their matched step.
    """
    everyone = [*a_runs, *baseline_runs]
    if matched is None:
        matched = match_runs(everyone, match=match, at=at, match_key=match_key, direction=direction)
    at, steps, notes = matched.at, dict(matched.steps), list(matched.notes)
    a_used = [r for r in a_runs if r.id in steps]
    b_used = [r for r in baseline_runs if r.id in steps]
    if not a_used or not b_used:
        notes.append("nothing to compare: one side has no run at the matched point")
        return WhyResult(a_label, baseline_label, match, at, steps, [], top, notes)
    a_vals = [_values_at(r, steps[r.id]) for r in a_used]
    b_vals = [_values_at(r, steps[r.id]) for r in b_used]
    common = set.intersection(*(set(v) for v in [*a_vals, *b_vals]))
    if not common:
        notes.append("the two sides logged no per-layer diagnostic in common")
    first = a_used[0]

    def step_of(quantity: str, layer: str) -> int:
        return _logged_step(first, quantity, layer, steps[first.id])

    rows = _rank(a_vals, b_vals, common, a_label=a_label, a_run=first.id, baseline_run=b_used[0].id,
                 step_of=step_of, compare_runs=[r.id for r in [*a_used, *b_used]])
    if min(len(a_used), len(b_used)) < 2:
        notes.append("one seed on a side: no seed-to-seed noise estimate; each difference is scaled by how "
                     "much it varies between layers of one kind (robust z >= 3 flagged)")
    return WhyResult(a_label, baseline_label, match, at, steps, rows, top, notes)


# ------------------------------------------------------------------------------------------ matching


def _diagnostic_steps(run: RunData) -> list[int]:
    return [int(s.steps[-1]) for k, s in run.series.items() if split_key(k) and len(s.steps)]


def _default_at(runs: Sequence[RunData], match: Match, match_key: str, direction: str,
                last_steps: Mapping[str, Sequence[int]] | None = None) -> float:
    if match == "step":
        lasts = [max(steps) for r in runs
                 if (steps := (_diagnostic_steps(r) if last_steps is None else last_steps.get(r.id, ())))]
        return float(min(lasts)) if lasts else 0.0
    key = SAMPLES_KEY if match == "samples" else match_key
    ends = []
    for r in runs:
        s = r.series.get(key)
        if s is None or not len(s.values):
            continue
        finite = s.values[np.isfinite(s.values)]
        if not len(finite):
            continue
        if match == "samples":
            ends.append(float(finite.max()))
        else:
            ends.append(float(finite.min() if direction == "below" else finite.max()))
    if not ends:
        raise ValueError(f"match={match}: no run logged {key!r}")
    if match == "samples":
        return min(ends)
    return max(ends) if direction == "below" else min(ends)


def _matched_step(run: RunData, match: Match, at: float, match_key: str, direction: str) -> int | None:
    if match == "step":
        return int(at)
    key = SAMPLES_KEY if match == "samples" else match_key
    s = run.series.get(key)
    if s is None or not len(s.values):
        return None
    i = first_crossing(s.values, at, "above" if match == "samples" else direction)
    return None if i is None else int(s.steps[i])


def _nearest_index(steps: np.ndarray, step: int) -> int:
    """Index of the point logged nearest to ``step`` (the earlier one on a tie); ``steps`` non-empty."""
    i = int(steps.searchsorted(step, side="left"))  # steps[i - 1] < step <= steps[i]
    if i == 0:
        return 0
    if i == len(steps):
        return i - 1
    return i - 1 if step - int(steps[i - 1]) <= int(steps[i]) - step else i


def _nearest(steps: np.ndarray, values: np.ndarray, step: int) -> float | None:
    """The value logged nearest to ``step`` (the earlier one on a tie): diagnostics are logged on their
    own cadence, rarely at exactly the step an evaluation crossed the target."""
    if not len(steps):
        return None
    v = float(values[_nearest_index(steps, step)])
    return v if math.isfinite(v) else None


def _logged_step(run: RunData, quantity: str, layer: str, step: int) -> int:
    """The step at which ``quantity`` of ``layer`` was actually read for ``step`` (its nearest logged
    point): the step a link should open, since the panel shows what was logged there."""
    key = DERIVED.get(quantity, (quantity,))[0]
    series = run.series.get(f"{key}/{layer}")
    if series is None or not len(series.steps):
        return step
    steps = np.asarray(series.steps)
    return int(steps[_nearest_index(steps, step)])


def _values_at(run: RunData, step: int) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for key, series in run.series.items():
        parts = split_key(key)
        if parts is None:
            continue
        v = _nearest(np.asarray(series.steps), np.asarray(series.values), step)
        if v is not None:
            out[parts] = v
    for derived, (hi, lo) in DERIVED.items():
        layers = {layer for q, layer in out if q == hi} & {layer for q, layer in out if q == lo}
        for layer in layers:
            den = out[(lo, layer)]
            if den > 0:
                out[(derived, layer)] = out[(hi, layer)] / den
    return out


# ------------------------------------------------------------------------------------------ ranking


def _rank(a_vals: list[dict[tuple[str, str], float]], b_vals: list[dict[tuple[str, str], float]],
          common: set[tuple[str, str]], *, a_label: str, a_run: str, baseline_run: str,
          step_of: Any,
          compare_runs: list[str]) -> list[WhyRow]:
    by_quantity: dict[str, dict[str, list[str]]] = {}
    for quantity, layer in sorted(common):
        by_quantity.setdefault(quantity, {}).setdefault(layer_role(layer), []).append(layer)
    with_seeds = len(a_vals) >= 2 and len(b_vals) >= 2
    pending: list[dict[str, Any]] = []
    t_abs: list[float] = []  # with seeds: |Welch t| and its degrees of freedom per pending row
    t_df: list[float] = []
    for quantity, roles in by_quantity.items():
        everything = [v[(quantity, layer)] for v in [*a_vals, *b_vals] for ls in roles.values() for layer in ls]
        log = all(x > 0 for x in everything)

        def tf(x: float, log: bool = log) -> float:
            return math.log(x) if log else x

        floor = LOG_FLOOR if log else max(LOG_FLOOR * float(np.median(np.abs(everything))), 1e-3)
        # the spread across layers scales a difference only with one seed; with seeds it is not needed
        layer_scale = math.nan if with_seeds else _layer_scale(a_vals, b_vals, quantity, roles, tf, floor)
        for role, layers in roles.items():
            a = np.array([_mean([tf(v[(quantity, layer)]) for layer in layers]) for v in a_vals])
            b = np.array([_mean([tf(v[(quantity, layer)]) for layer in layers]) for v in b_vals])
            diff_t = float(a.mean() - b.mean())
            if with_seeds:
                va, vb = max(float(a.var(ddof=1)), floor**2), max(float(b.var(ddof=1)), floor**2)
                pooled = math.sqrt(((len(a) - 1) * va + (len(b) - 1) * vb) / (len(a) + len(b) - 2))
                effect = diff_t / pooled
                se2 = va / len(a) + vb / len(b)
                df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
                t_abs.append(abs(diff_t) / math.sqrt(se2))
                t_df.append(df)
            else:
                effect = diff_t / layer_scale
            a_val = math.exp(a.mean()) if log else float(a.mean())
            b_val = math.exp(b.mean()) if log else float(b.mean())
            pending.append({"quantity": quantity, "role": role, "layers": tuple(layers), "a": a_val,
                            "baseline": b_val, "ratio": a_val / b_val if log and b_val else None,
                            "diff": a_val - b_val, "effect": effect, "p": None, "log": log})
    if with_seeds and pending:
        # Imported here, not at the top: scipy.stats costs ~1.2 s to import, which every
        # `optiscope serve` start paid (~40 % of it; several seconds on a loaded machine) before its
        # first "why" question with seeds, if any.
        from scipy import stats

        # Welch's p for every pair in one vectorised call: scipy's per-call argument handling cost
        # ~0.7 ms a row (0.2 s for 288 rows); the ufunc underneath gives the same number either way.
        ps = 2 * stats.t.sf(np.array(t_abs), np.array(t_df))
        for r, p in zip(pending, ps, strict=True):
            r["p"] = float(p)
        qs = stats.false_discovery_control([r["p"] for r in pending], method="bh")
        for r, q in zip(pending, qs, strict=True):
            r["q"] = float(q)
            r["significant"] = bool(q < Q_LEVEL)
    else:
        for r in pending:
            r["q"] = None
            r["significant"] = abs(r["effect"]) >= Z_SINGLE
    pending.sort(key=lambda r: (-abs(r["effect"]), r["quantity"], r["role"]))
    n_a, n_b = len(a_vals), len(b_vals)
    rows = []
    for r in pending:
        layer = r["layers"][0]
        panel = panel_for(r["quantity"], layer, step=step_of(r["quantity"], layer), a_run=a_run,
                          baseline_run=baseline_run, compare_runs=compare_runs)
        rows.append(WhyRow(
            quantity=r["quantity"], role=r["role"], layers=r["layers"], a=r["a"], baseline=r["baseline"],
            ratio=r["ratio"], diff=r["diff"], effect=r["effect"], p=r["p"], q=r["q"],
            significant=r["significant"], n_a=n_a, n_baseline=n_b, scale="log" if r["log"] else "linear",
            noise="seeds" if with_seeds else "layers", sentence=_sentence(r, a_label, n_a, n_b, with_seeds),
            panel=panel.name, link=panel.link, baseline_link=panel.baseline_link,
        ))
    return rows


def _mean(xs: list[float]) -> float:
    """``float(np.mean(xs))`` bit for bit — numpy's (pairwise) sum, then one division by the count —
    without ``np.mean``'s per-call dispatch, which was most of the ranking's time on a few thousand
    lists of a handful of numbers."""
    return float(np.add.reduce(np.array(xs, dtype=np.float64))) / len(xs)


def _layer_scale(a_vals: list[Mapping[tuple[str, str], float]], b_vals: list[Mapping[tuple[str, str], float]],
                 quantity: str, roles: Mapping[str, list[str]], tf: Any, floor: float) -> float:
    """One seed: the robust spread (1.4826 × MAD) of the per-layer difference A − baseline about the
    median difference of its role — how much the difference varies from block to block.

    About the role, not the whole model: when NorMuon makes every ``blocks.*.mlp.fc`` four times more
    even, a spread across all layers would count that effect as noise and hide it. Models with no role
    of two or more layers (a small CNN) fall back to the spread across all layers.
    """
    def diff(layer: str) -> float:
        return (_mean([tf(v[(quantity, layer)]) for v in a_vals])
                - _mean([tf(v[(quantity, layer)]) for v in b_vals]))

    devs: list[float] = []
    for layers in roles.values():
        if len(layers) >= 2:
            d = [diff(layer) for layer in layers]
            med = float(np.median(d))
            devs.extend(abs(x - med) for x in d)
    if len(devs) < 3:
        d = [diff(layer) for layers in roles.values() for layer in layers]
        med = float(np.median(d))
        devs = [abs(x - med) for x in d]
    return max(MAD_TO_SD * float(np.median(devs)), floor)


def _sentence(r: Mapping[str, Any], a_label: str, n_a: int, n_b: int, with_seeds: bool) -> str:
    d = describe(r["quantity"])
    if r["log"] and r["ratio"]:
        ratio = float(r["ratio"])
        fold = 1 / ratio if ratio < 1 else ratio
        change = f"{fold:.2f}× " if fold < 10 else f"{fold:.3g}× "
        change += d.lower if ratio < 1 else d.higher
    else:
        change = f"{d.lower if r['diff'] < 0 else d.higher} by {abs(r['diff']):.3g}"
    seeds = f"{n_a} seeds" if n_a == n_b else f"{n_a} vs {n_b} seeds"
    if n_a == n_b == 1:
        seeds = "1 seed"
    k = len(r["layers"])
    layers = "1 layer" if k == 1 else f"all {k} layers of that kind"
    if r["significant"]:
        noise = f"{r['effect']:+.1f} sd" if with_seeds else f"robust z {r['effect']:+.1f}"
        if r["q"] is not None:
            noise += f", q = {r['q']:.2g}"
    else:
        noise = "within noise"
    return (f"{a_label}: {d.name} {change} in {r['role']} ({d.symbol} {r['a']:.3g} vs {r['baseline']:.3g}; "
            f"{seeds}; {layers}) — {noise}")
