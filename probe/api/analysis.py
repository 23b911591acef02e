"""Read-side analysis for notebooks: seed groups, group time-to-target with intervals, the ranked "why".

Thin on purpose: every statistic is computed by the server (``GET /api/v1/analysis/*``), so a notebook,
the dashboard and the demo give the same numbers; these functions only spell the query and turn the
answer into a ``pandas.DataFrame`` (one row per group, or per ranked (layer role, diagnostic) pair).

``http`` is an ``httpx.Client`` whose ``base_url`` is ``<server>/api/v1`` and whose headers carry the
token (``probe.Api`` builds one). Sides and baselines are picked by config filters
(``{"optimizer": "normuon"}``, which must match one group) or by run ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["groups", "time_to_target", "why"]

Params = list[tuple[str, str | int | float]]


def _filters(name: str, filters: Mapping[str, Any] | None) -> Params:
    """``{"optimizer": "normuon", "lr": 0.02}`` -> ``[(name, "optimizer=normuon"), (name, "lr=0.02")]``."""
    out: Params = []
    for key, value in (filters or {}).items():
        out.append((name, f"{key}={value if isinstance(value, str) else json.dumps(value)}"))
    return out


def _selection(*, run_ids: Sequence[str] | None, project: str | None, tags: Sequence[str] | None,
               config: Mapping[str, Any] | None, group_by: Sequence[str] | None) -> Params:
    params: Params = [("run_id", r) for r in run_ids or []]
    if project is not None:
        params.append(("project", project))
    params += [("tag", t) for t in tags or []]
    params += _filters("config", config)
    params += [("group_by", k) for k in group_by or []]
    return params


def _get(http: httpx.Client, path: str, params: Params) -> dict[str, Any]:
    """GET and decode; an error answer raises ``httpx.HTTPStatusError`` carrying the server's reason
    (a 422 names the offending parameter)."""
    response = http.get(path, params=params)
    if response.status_code >= 400:
        try:
            detail: Any = response.json().get("detail")
        except ValueError:
            detail = response.text[:500]
        raise httpx.HTTPStatusError(f"GET {path}: {response.status_code}: {detail}", request=response.request,
                                    response=response)
    return dict(response.json())


def groups(
    http: httpx.Client, *, run_ids: Sequence[str] | None = None, project: str | None = None,
    tags: Sequence[str] | None = None, config: Mapping[str, Any] | None = None,
    group_by: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The selected runs grouped (by default by everything but the seed): one row per group."""
    import pandas as pd

    out = _get(http, "/analysis/groups",
               _selection(run_ids=run_ids, project=project, tags=tags, config=config, group_by=group_by))
    return pd.DataFrame(out["groups"], columns=["group", "n", "seeds", "run_ids", "names", "values"])


def time_to_target(
    http: httpx.Client, key: str, target: float, *, direction: Literal["below", "above"] = "below",
    baseline: Mapping[str, Any] | None = None, baseline_run: str | None = None,
    run_ids: Sequence[str] | None = None, project: str | None = None, tags: Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None, group_by: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per group: steps / wall seconds / samples to ``target`` (mean, sd, min, max), n, the
    evaluation interval (the resolution), and the speedup against the baseline group with its
    bootstrap 95 % interval (``steps_ci_low`` … ``steps_ci_high``) and verdict ("faster", "no
    difference at this n", …). ``df.attrs`` holds the query's key, target, direction and baseline.
    """
    import pandas as pd

    params: Params = [("key", key), ("target", target), ("direction", direction)]
    params += _filters("baseline", baseline)
    if baseline_run is not None:
        params.append(("baseline_run", baseline_run))
    params += _selection(run_ids=run_ids, project=project, tags=tags, config=config, group_by=group_by)
    out = _get(http, "/analysis/time-to-target", params)
    df = pd.DataFrame(out["rows"])
    df.attrs.update({k: out[k] for k in ("key", "target", "direction", "baseline", "level")})
    return df


def why(
    http: httpx.Client, *, a: Mapping[str, Any] | None = None, baseline: Mapping[str, Any] | None = None,
    a_runs: Sequence[str] | None = None, baseline_runs: Sequence[str] | None = None,
    match: Literal["step", "samples", "loss"] = "step", at: float | None = None, key: str = "val_loss",
    direction: Literal["below", "above"] = "below", top: int = 10,
    run_ids: Sequence[str] | None = None, project: str | None = None, tags: Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None, group_by: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The ranked "why" of A against the baseline at matched progress: one row per (layer role,
    diagnostic) — ``sentence``, the numbers (``a``, ``baseline``, ``ratio``, ``effect``, ``q``), whether
    it is ``within_noise``, and the dashboard ``panel`` / ``link`` that shows it. ``df.attrs`` holds the
    labels, the matched step of every run, how many pairs were compared and the notes.
    """
    import pandas as pd

    params: Params = [("match", match), ("key", key), ("direction", direction), ("top", top)]
    if at is not None:
        params.append(("at", at))
    params += _filters("a", a) + _filters("baseline", baseline)
    params += [("a_run", r) for r in a_runs or []] + [("baseline_run", r) for r in baseline_runs or []]
    params += _selection(run_ids=run_ids, project=project, tags=tags, config=config, group_by=group_by)
    out = _get(http, "/analysis/why", params)
    columns = ["layer", "diagnostic", "sentence", "a", "baseline", "ratio", "diff", "effect", "p", "q",
               "significant", "within_noise", "n_a", "n_baseline", "noise", "panel", "link", "baseline_link",
               "layers"]
    df = pd.DataFrame(out["rows"], columns=columns)
    df.attrs.update({k: out[k] for k in ("a", "baseline", "match", "at", "matched_steps", "compared",
                                         "significant", "within_noise", "notes", "a_run_ids",
                                         "baseline_run_ids")})
    return df
