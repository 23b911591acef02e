"""``probe.Api``: read runs into pandas from a notebook, in the shape of ``wandb.Api()``.

Everything goes through the server's HTTP query API (no FastAPI, Dash or database driver on the
reading machine), and long series are downsampled by the server exactly as the dashboard's charts
are, so ``history(points=2000)`` of a million-point series costs one small response, not a
million-row transfer.

Extending: a new read (e.g. a new analysis endpoint) is a method on :class:`Api` that calls
``self._http.get(path, **params)`` (failures become one-line ``ApiError`` messages) and, where
runs are named, ``self._run_ids(runs)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import httpx
import numpy as np

from probe.api.frames import flatten, pandas, wire_float
from probe.api.http import ApiError, HttpSession
from probe.api.resolve import resolve_run

XAxis = Literal["step", "samples", "time"]
_KEYS_PER_REQUEST = 100  # the server takes up to 500 keys per /series call; smaller keeps bodies small
_RUN_COLUMNS = ("id", "name", "project", "status", "optimizer", "tags", "created_at", "finished_at",
                "last_step", "alerts_count", "host", "world_size")


def _config_query(filters: Mapping[str, Any] | None) -> list[str]:
    """``{"lr": 0.02, "opt.name": "adamw"}`` -> ``["lr=0.02", "opt.name=adamw"]`` (the server's syntax)."""
    out = []
    for key, value in (filters or {}).items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ValueError(f"Invalid filters key {key!r}: a config key (dotted for nesting) without '='")
        out.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


class ApiRun:
    """One stored run: its metadata as attributes, its data through :meth:`history` and :meth:`arrays`."""

    def __init__(self, http: HttpSession, data: dict[str, Any]) -> None:
        self._http = http
        self.data = data
        self.id: str = data["id"]
        self.name: str = data.get("name") or ""
        self.project: str = data.get("project") or ""
        self.status: str = data.get("status") or ""
        self.config: dict[str, Any] = data.get("config") or {}
        self.summary: dict[str, Any] = {k: wire_float(v) for k, v in (data.get("summary") or {}).items()}
        self.tags: list[str] = list(data.get("tags") or [])

    def __repr__(self) -> str:
        return f"<ApiRun {self.id} name={self.name!r} project={self.project!r} status={self.status}>"

    def keys(self) -> dict[str, list[dict[str, Any]]]:
        """``{"scalars": [{"key", "count", "first_step", "last_step", ...}], "arrays": [...]}``."""
        return self._http.get(f"/runs/{self.id}/keys")

    def history(self, keys: str | Sequence[str] | None = None, *, x: XAxis = "step", points: int = 2000,
                x_min: float | None = None, x_max: float | None = None) -> Any:
        """A DataFrame with a ``step`` column (plus ``time`` or ``samples``) and one column per key.

        Each key is downsampled by the server to at most ``points`` points (min/max buckets that keep
        spikes); keys are outer-joined on the step, so a key not logged at a step is NaN there.
        ``x="samples"`` maps each step to the run's ``samples_seen``; ``x_min``/``x_max`` bound the
        x axis (steps, or unix seconds for ``"time"``).
        """
        pd = pandas()
        if x not in ("step", "samples", "time"):
            raise ValueError(f"Invalid x: {x!r} (expected 'step', 'samples' or 'time')")
        if keys is None:
            keys = [s["key"] for s in self.keys()["scalars"] if "/" not in s["key"]]
        elif isinstance(keys, str):
            keys = [keys]
        keys = list(dict.fromkeys(keys))
        columns: dict[str, Any] = {}
        times: list[Any] = []
        server_x = "time" if x == "time" else "step"
        bounds = {} if x == "samples" else {"x_min": x_min, "x_max": x_max}
        for start in range(0, len(keys), _KEYS_PER_REQUEST):
            chunk = keys[start:start + _KEYS_PER_REQUEST]
            answer = self._http.get("/series", run_id=[self.id], key=chunk, x=server_x, points=points,
                                    **bounds)
            for series in answer["series"]:
                steps = pd.Index(np.asarray(series["steps"], dtype=np.int64), name="step")
                values = np.asarray([wire_float(v) for v in series["y"]], dtype=np.float64)
                columns[series["key"]] = pd.Series(values, index=steps).groupby(level=0).last()
                if x == "time":
                    times.append(pd.Series(np.asarray(series["x"], dtype=np.float64), index=steps)
                                 .groupby(level=0).first())
        empty = pd.Index([], name="step")
        frame = pd.DataFrame(columns).sort_index() if columns else pd.DataFrame(index=empty)
        frame.index.name = "step"
        if x == "time":
            frame.insert(0, "time", pd.concat(times).groupby(level=0).first().reindex(frame.index)
                         if times else np.nan)
        elif x == "samples":
            frame.insert(0, "samples", self._samples_at(frame.index.to_numpy()))
            if x_min is not None:
                frame = frame[frame["samples"] >= x_min]
            if x_max is not None:
                frame = frame[frame["samples"] <= x_max]
        return frame.reset_index()

    def _samples_at(self, steps: np.ndarray) -> np.ndarray:
        series = self._http.get("/series", run_id=[self.id], key=["samples_seen"], x="step",
                                points=20000)["series"][0]
        if not series["steps"]:
            raise ApiError(f"run {self.id} logged no 'samples_seen': use x='step' or x='time'")
        known = np.asarray(series["steps"], dtype=np.float64)
        seen = np.asarray([wire_float(v) for v in series["y"]], dtype=np.float64)
        return np.interp(steps.astype(np.float64), known, seen)

    def arrays(self, key: str, layer: str | None = None, *, steps: int = 200,
               step_min: int | None = None, step_max: int | None = None) -> Any:
        """Steps x values (spectra, per-neuron norms) as a DataFrame; columns are value indices.

        With ``layer`` the index is the step; without it, ``(layer, step)`` for every layer logged
        under ``key``. ``steps`` caps how many distinct steps come back (evenly spaced, first and
        last always kept).
        """
        pd = pandas()
        answer = self._http.get(f"/runs/{self.id}/arrays", key=key, layer=layer, step_min=step_min,
                                step_max=step_max, max_steps=steps)
        records = answer["records"]
        rows = [np.asarray([wire_float(v) for v in r["values"]], dtype=np.float64).ravel() for r in records]
        width = max((len(r) for r in rows), default=0)
        matrix = np.full((len(rows), width), np.nan)
        for i, row in enumerate(rows):
            matrix[i, : len(row)] = row
        if layer is not None:
            index = pd.Index([r["step"] for r in records], name="step")
        else:
            index = pd.MultiIndex.from_tuples([(r["layer"], r["step"]) for r in records],
                                              names=["layer", "step"])
        return pd.DataFrame(matrix, index=index)

    def events(self, kind: str | None = None, limit: int = 1000) -> Any:
        """Alerts and other events as a DataFrame (``kind``, ``level``, ``key``, ``layer``, ``step``, ...)."""
        pd = pandas()
        return pd.DataFrame(self._http.get(f"/runs/{self.id}/events", kind=kind, limit=limit)["data"])


class Api:
    """Read access to an Optiscope server.

    ``url``/``token`` default to ``OPTISCOPE_URL``/``OPTISCOPE_TOKEN``, then the files a local
    ``optiscope serve`` writes, as for the probe, so on one machine ``probe.Api()`` needs nothing.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        self._http = HttpSession(url, token, timeout=timeout)
        self.url = self._http.url
        self.http: httpx.Client = self._http.client
        """The configured ``httpx.Client``: base URL ``<url>/api/v1`` and the bearer token, for reads
        this class has no method for yet (``api.http.get("/runs/<id>/keys").json()``)."""

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Api {self.url}>"

    def list_runs(self, project: str | None = None, filters: Mapping[str, Any] | None = None, *,
                  tags: Iterable[str] | None = None, status: str | None = None, name: str | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
        """The matching runs as ``RunRead`` dicts, newest first (all pages unless ``limit``)."""
        out: list[dict[str, Any]] = []
        page = 1000 if limit is None else min(limit, 1000)
        while True:
            answer = self._http.get("/runs", project=project, status=status, q=name, tag=list(tags or []),
                                    config=_config_query(filters), limit=page, offset=len(out))
            out.extend(answer["data"])
            if not answer["data"] or len(out) >= answer["count"] or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    def runs(self, project: str | None = None, filters: Mapping[str, Any] | None = None, *,
             tags: Iterable[str] | None = None, status: str | None = None, name: str | None = None,
             limit: int | None = None) -> Any:
        """A DataFrame, one row per run: metadata, ``config.<key>`` and ``summary.<key>`` columns.

        ``filters`` match config values (``{"lr": 0.02, "model.width": 256}``), ``tags`` must all be
        present, ``name`` is a substring of the run name.
        """
        pd = pandas()
        rows = []
        for run in self.list_runs(project, filters, tags=tags, status=status, name=name, limit=limit):
            row = {c: run.get(c) for c in _RUN_COLUMNS}
            flatten("config", run.get("config") or {}, row)
            for key, value in (run.get("summary") or {}).items():
                row[f"summary.{key}"] = wire_float(value)
            rows.append(row)
        frame = pd.DataFrame(rows, columns=None if rows else list(_RUN_COLUMNS))
        for column in ("created_at", "finished_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        return frame

    def run(self, name_or_id: str, *, project: str | None = None) -> ApiRun:
        """One run by id, or by its exact name when that names exactly one run."""
        return ApiRun(self._http, resolve_run(self._http, name_or_id, project=project))

    def _run_ids(self, runs: Iterable[str | ApiRun]) -> list[str]:
        return [r.id if isinstance(r, ApiRun) else resolve_run(self._http, r)["id"] for r in runs]

    def groups(self, **selection: Any) -> Any:
        """Seed groups of the selected runs: :func:`probe.api.analysis.groups` (``project=``, ``run_ids=``…)."""
        from probe.api import analysis

        return analysis.groups(self.http, **selection)

    def group_time_to_target(self, key: str, target: float, **options: Any) -> Any:
        """Per group: steps / time / samples to target with bootstrap 95 % intervals
        (:func:`probe.api.analysis.time_to_target`)."""
        from probe.api import analysis

        return analysis.time_to_target(self.http, key, target, **options)

    def why(self, **options: Any) -> Any:
        """The ranked per-layer "why" of A against a baseline (:func:`probe.api.analysis.why`)."""
        from probe.api import analysis

        return analysis.why(self.http, **options)

    def compare(self, runs: Sequence[str | ApiRun], key: str, target: float, *,
                direction: Literal["below", "above"] = "below", baseline: str | ApiRun | None = None) -> Any:
        """The time-to-target table: when each run first reached ``target`` on ``key``.

        One row per run with ``step``, ``time_s``, ``samples_seen`` and speedups against
        ``baseline`` (default the first run); > 1 means faster than the baseline.
        """
        pd = pandas()
        ids = self._run_ids(runs)
        base = None if baseline is None else self._run_ids([baseline])[0]
        answer = self._http.get("/time-to-target", run_id=ids, key=key, target=target, direction=direction,
                                baseline=base)
        return pd.DataFrame(answer["rows"])
