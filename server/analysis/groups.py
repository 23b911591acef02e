"""Runs and seed groups: what a group is, how runs are matched to filters and grouped.

A *group* is the set of runs that differ only in their seed (or in whatever keys the user leaves out of
``group_by``): the unit a claim like "NorMuon is faster than AdamW" is about. Config keys are dotted
(``model.d_model``); ``optimizer`` falls back to the run's ``optimizer`` column when the config lacks it,
and ``tags`` is the run's sorted tag list, so runs can be grouped by a tag as well.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["SeriesLike", "Trace", "RunData", "Group", "MISSING", "config_value", "matches", "parse_filters",
           "group_runs", "SEED_KEY"]

SEED_KEY = "seed"


class SeriesLike(Protocol):
    """One scalar series sorted by step (``server.store.series.Points`` is one)."""

    steps: np.ndarray
    times: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Trace:
    """A plain :class:`SeriesLike` for tests and for callers that build series themselves."""

    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray = field(default_factory=lambda: np.empty(0))

    @classmethod
    def of(cls, steps: Sequence[float], values: Sequence[float], times: Sequence[float] | None = None) -> Trace:
        st = np.asarray(steps, dtype=np.int64)
        ti = np.full(len(st), np.nan) if times is None else np.asarray(times, dtype=np.float64)
        return cls(st, np.asarray(values, dtype=np.float64), ti)


@dataclass(frozen=True)
class RunData:
    """One run as the analysis sees it: identity, config and the scalar series it needs."""

    id: str
    name: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    optimizer: str | None = None
    series: Mapping[str, SeriesLike] = field(default_factory=dict)
    first_time: float | None = None  # unix seconds of the run's first logged point of any key

    @property
    def seed(self) -> Any:
        value = config_value(self, SEED_KEY)
        return None if value is MISSING else value


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def config_value(run: RunData, key: str) -> Any:
    """The run's value for a dotted config key (``MISSING`` when absent)."""
    if key == "tags":
        return sorted(run.tags)
    cur: Any = run.config
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            cur = MISSING
            break
        cur = cur[part]
    if cur is MISSING and key == "optimizer" and run.optimizer is not None:
        return run.optimizer
    return cur


def _equal(actual: Any, wanted: Any) -> bool:
    if actual is MISSING:
        return False
    if isinstance(wanted, str) and not isinstance(actual, str):
        return str(actual) == wanted or _canonical(actual) == wanted
    return bool(actual == wanted)


def matches(run: RunData, filters: Mapping[str, Any]) -> bool:
    """True when every ``key: value`` filter holds; ``tag``/``tags`` filters test membership."""
    for key, wanted in filters.items():
        if key in ("tag", "tags") and not isinstance(wanted, list):
            if str(wanted) not in run.tags:
                return False
            continue
        if not _equal(config_value(run, key), wanted):
            return False
    return True


def parse_filters(items: Iterable[str], *, field_name: str) -> dict[str, Any]:
    """``["optimizer=normuon", "lr=0.02"]`` -> ``{"optimizer": "normuon", "lr": 0.02}``.

    Values are read as JSON when they parse (numbers, booleans, lists), else kept as strings, the same
    rule ``GET /runs?config=`` uses. Raises ``ValueError`` naming ``field_name`` on a malformed item.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{field_name}: expected 'key=value', got {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def _canonical(value: Any) -> str:
    """A hashable, order-independent spelling of a config value (dicts sorted, floats as JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


@dataclass(frozen=True)
class Group:
    """Runs that share the values of the grouping keys."""

    label: str
    values: Mapping[str, Any]  # the grouping keys' values that define the group (all but seed by default)
    runs: tuple[RunData, ...]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def run_ids(self) -> list[str]:
        return [r.id for r in self.runs]

    def matches(self, filters: Mapping[str, Any]) -> bool:
        """A group matches a filter when all its runs do (the filter picks a group, not a subset)."""
        return bool(self.runs) and all(matches(r, filters) for r in self.runs)


def group_runs(
    runs: Sequence[RunData], group_by: Sequence[str] | None = None, *, ignore: Sequence[str] = (SEED_KEY,),
) -> list[Group]:
    """Group runs by ``group_by`` keys; without it, by every config key except ``ignore`` (the seed).

    Groups come in first-appearance order. Labels are short: the values of ``group_by`` (a single key:
    just its value, ``normuon``), or for the default grouping the members' common run name (the demo
    names the seeds of one recipe alike), else the ``key=value`` pairs that differ between groups.
    """
    keyed: dict[tuple[str, ...], list[RunData]] = {}
    values: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:
        if group_by is not None:
            vals = {k: config_value(run, k) for k in group_by}
        else:
            vals = {k: v for k, v in _flatten(run.config).items() if k not in ignore}
        ident = tuple(sorted(f"{k}\x00{'<missing>' if v is MISSING else _canonical(v)}" for k, v in vals.items()))
        keyed.setdefault(ident, []).append(run)
        values.setdefault(ident, {k: (None if v is MISSING else v) for k, v in vals.items()})
    idents = list(keyed)
    varying = _varying_keys([values[i] for i in idents])
    groups = []
    for ident in idents:
        members = keyed[ident]
        vals = values[ident]
        groups.append(Group(label=_label(members, vals, group_by, varying), values=vals, runs=tuple(members)))
    return _unique_labels(groups)


def _varying_keys(all_values: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for vals in all_values for k in vals})
    return [k for k in keys if len({_canonical(v.get(k)) for v in all_values}) > 1]


def _label(members: list[RunData], vals: Mapping[str, Any], group_by: Sequence[str] | None,
           varying: list[str]) -> str:
    def show(v: Any) -> str:
        return v if isinstance(v, str) else _canonical(v)

    if group_by is not None:
        if len(group_by) == 1:
            return show(vals[group_by[0]])
        return ", ".join(f"{k}={show(vals[k])}" for k in group_by)
    names = {r.name for r in members}
    if len(names) == 1 and next(iter(names)):
        return next(iter(names))
    shown = [k for k in varying if k != "name"] or varying
    return ", ".join(f"{k}={show(vals.get(k))}" for k in shown) or members[0].name or members[0].id


def _unique_labels(groups: list[Group]) -> list[Group]:
    """Two groups with one label (say, one name reused for two recipes) get ``#2``, ``#3`` suffixes."""
    seen: dict[str, int] = {}
    out = []
    for g in groups:
        count = seen.get(g.label, 0) + 1
        seen[g.label] = count
        out.append(g if count == 1 else Group(label=f"{g.label} #{count}", values=g.values, runs=g.runs))
    return out
