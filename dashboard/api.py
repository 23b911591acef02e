"""The dashboard's only I/O: a small typed client over the server's HTTP query API (``/api/v1``).

The dashboard never touches the database or imports ``server``: it can run beside the server in
one process (mounted by ``optiscope serve``) or as its own process against a remote server, and
both paths exercise the same HTTP contract (docs/ARCHITECTURE.md).

Non-finite floats travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; this module
turns them back into floats in the numeric fields only, so a run *named* "NaN" stays a string.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import httpx
import orjson

from .config import DashboardConfig

T = TypeVar("T")

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ApiError(RuntimeError):
    """The server answered with an error status, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class NotFound(ApiError):
    """404: unknown run id (pages show a clear message instead of a traceback)."""


def to_float(value: Any) -> float:
    """A wire number (JSON number, ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` or null) as a float."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        try:
            return _NONFINITE[value]
        except KeyError:
            return float(value)
    return float(value)


def to_floats(values: Iterable[Any]) -> list[float]:
    """Decode a list of wire numbers."""
    return [to_float(v) for v in values]


def _maybe_float(value: Any) -> Any:
    """Decode a value that may be a number or something else (summary values may be any scalar)."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value


def _params(**kwargs: Any) -> list[tuple[str, Any]]:
    """Query parameters without ``None``s; sequences become repeated parameters."""
    out: list[tuple[str, Any]] = []
    for name, value in kwargs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out.extend((name, v) for v in value)
        elif isinstance(value, bool):
            out.append((name, str(value).lower()))
        else:
            out.append((name, value))
    return out


class ApiClient:
    """Typed reads (and the one delete) of the query API, on behalf of one user.

    One ``httpx.Client`` is shared by every callback thread: it is thread-safe and keeps
    connections alive, which matters on a page that polls every second. The client built by
    ``create_app`` carries no token; :meth:`as_user` gives a view with the signed-in person's token
    for one request, sharing the connection pool. What that token may see (its project scope) is
    the API's decision, not the dashboard's.
    """

    def __init__(
        self,
        config: DashboardConfig,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self.token: str | None = None
        self._http = httpx.Client(
            base_url=config.api_base,
            headers={"Accept": "application/json"},
            timeout=config.request_timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    def as_user(self, token: str | None) -> ApiClient:
        """A view that sends ``token`` with every request (None: anonymous), sharing the pool."""
        view = copy.copy(self)
        view.token = token
        return view

    def close(self) -> None:
        """Release pooled connections."""
        self._http.close()

    # -- transport -----------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, params: Sequence[tuple[str, Any]] | None = None, *, token: str | None = None,
        text: bool = False,
    ) -> Any:
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        if text:
            headers = {**(headers or {}), "Accept": "text/csv, text/plain"}
        try:
            response = self._http.request(method, path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the Optiscope server at {self.config.api_base}: {exc}") from exc
        if response.status_code == 404:
            raise NotFound(404, _detail(response))
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        if text:
            return response.text
        if response.status_code == 204 or not response.content:
            return None
        # orjson: the compare page parses ~20 runs' keys and series per load, ~4x faster than json
        return orjson.loads(response.content)

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, _params(**params))

    def map(self, func: Callable[..., T], items: Sequence[Any]) -> list[T]:
        """Run independent requests concurrently (the compare page asks the same thing of 20 runs)."""
        if len(items) <= 1:
            return [func(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            return list(pool.map(func, items))

    # -- runs ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return self._get("/health")

    def whoami(self, token: str) -> dict[str, Any]:
        """``GET /whoami`` with ``token``: ``{"token_id", "project"}``; :class:`ApiError` 401 for a
        token the server does not know (the route always needs a token, also on loopback)."""
        return self._request("GET", "/whoami", token=token)

    def list_runs(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        tags: Sequence[str] | None = None,
        q: str | None = None,
        config: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """``GET /runs``: (runs, total count matching the filters); ``ids``: only those runs."""
        body = self._get(
            "/runs", project=project, status=status, tag=list(tags or []) or None, q=q,
            config=list(config or []) or None, id=list(ids or []) or None, limit=limit, offset=offset,
        )
        runs = [_decode_run(r) for r in body.get("data", [])]
        return runs, int(body.get("count", len(runs)))

    def get_run(self, run_id: str) -> dict[str, Any]:
        """``GET /runs/{id}``; raises :class:`NotFound` for an unknown id (or one outside the token's
        project, which the API answers the same way)."""
        return _decode_run(self._get(f"/runs/{_safe_id(run_id)}"))

    def delete_run(self, run_id: str) -> None:
        """``DELETE /runs/{id}`` (needs a token; the runs page asks for confirmation first)."""
        self._request("DELETE", f"/runs/{_safe_id(run_id)}")

    def keys(self, run_id: str) -> dict[str, list[dict[str, Any]]]:
        """``GET /runs/{id}/keys``: what a run has logged, so pages offer only what exists."""
        body = self._get(f"/runs/{_safe_id(run_id)}/keys")
        scalars = body.get("scalars", [])
        for row in scalars:
            row["last_value"] = _maybe_float(row.get("last_value"))
        return {"scalars": scalars, "arrays": body.get("arrays", [])}

    def latest(self, run_id: str, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """``GET /runs/{id}/latest``."""
        body = self._get(f"/runs/{_safe_id(run_id)}/latest", key=list(keys or []) or None)
        for point in body.values():
            point["value"] = _maybe_float(point.get("value"))
        return body

    # -- data ----------------------------------------------------------------------------------

    def series(
        self,
        run_ids: Sequence[str],
        keys: Sequence[str],
        *,
        x: str = "step",
        points: int | None = None,
        x_min: float | None = None,
        x_max: float | None = None,
        after_step: int | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /series``: one dict per (run, key) with float lists ``x``, ``y`` and int ``steps``."""
        if not run_ids or not keys:
            return []
        body = self._get(
            "/series", run_id=list(run_ids), key=list(keys), x=x,
            points=points or self.config.series_points, x_min=x_min, x_max=x_max, after_step=after_step,
        )
        out = []
        for s in body.get("series", []):
            s["x"] = to_floats(s.get("x", []))
            s["y"] = to_floats(s.get("y", []))
            s["steps"] = [int(v) for v in s.get("steps", [])]
            out.append(s)
        return out

    def series_csv(self, run_id: str, keys: Sequence[str]) -> str:
        """``GET /runs/{id}/series?format=csv``: every stored point of ``keys`` as CSV text
        (``run_id,key,step,time,value``), for a panel's "CSV" download."""
        return self._request("GET", f"/runs/{_safe_id(run_id)}/series",
                             _params(key=list(keys), format="csv"), text=True)

    def arrays(
        self,
        run_id: str,
        key: str,
        *,
        layer: str | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
        max_steps: int | None = None,
        at_step: int | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /runs/{id}/arrays``: records sorted by (layer, step) with float ``values``."""
        body = self._get(
            f"/runs/{_safe_id(run_id)}/arrays", key=key, layer=layer, step_min=step_min,
            step_max=step_max, max_steps=max_steps, at_step=at_step,
        )
        records = body.get("records", [])
        for r in records:
            r["values"] = to_floats(r.get("values", []))
        records.sort(key=lambda r: (r.get("layer", ""), r.get("step", 0)))
        return records

    def events(
        self, run_id: str, *, kind: str | None = None, after_id: int | None = None, limit: int | None = 500
    ) -> list[dict[str, Any]]:
        """``GET /runs/{id}/events`` (alerts)."""
        body = self._get(f"/runs/{_safe_id(run_id)}/events", kind=kind, after_id=after_id, limit=limit)
        return list(body.get("data", []))

    def time_to_target(
        self,
        run_ids: Sequence[str],
        key: str,
        target: float,
        *,
        direction: str = "below",
        baseline: str | None = None,
    ) -> dict[str, Any]:
        """``GET /time-to-target``: the server owns the computation; the page only formats it."""
        body = self._get(
            "/time-to-target", run_id=list(run_ids), key=key, target=target, direction=direction,
            baseline=baseline,
        )
        for row in body.get("rows", []):
            for name in ("time_s", "samples_seen", "speedup_steps", "speedup_time", "speedup_samples"):
                if row.get(name) is not None:
                    row[name] = to_float(row[name])
        return body


    # -- analysis (seed groups, group time-to-target, the ranked "why"); the server computes all --

    def analysis_groups(self, run_ids: Sequence[str], *, group_by: Sequence[str] | None = None) -> dict[str, Any]:
        """``GET /analysis/groups``: the runs grouped (by default by everything but the seed)."""
        return self._get("/analysis/groups", run_id=list(run_ids), group_by=list(group_by or []) or None)

    def analysis_time_to_target(
        self, run_ids: Sequence[str], key: str, target: float, *, direction: str = "below",
        baseline_run: str | None = None, group_by: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """``GET /analysis/time-to-target``: per group mean ± sd, resolution and bootstrap intervals."""
        body = self._get("/analysis/time-to-target", run_id=list(run_ids), key=key, target=target,
                         direction=direction, baseline_run=baseline_run, group_by=list(group_by or []) or None)
        for row in body.get("rows", []):
            for name, value in list(row.items()):
                if isinstance(value, str) and value in _NONFINITE:
                    row[name] = to_float(value)
        return body

    def analysis_why(
        self, run_ids: Sequence[str], *, a_runs: Sequence[str], baseline_runs: Sequence[str], match: str = "step",
        at: float | None = None, key: str | None = None, direction: str = "below", top: int = 10,
    ) -> dict[str, Any]:
        """``GET /analysis/why``: A's runs against the baseline's, ranked (layer role, diagnostic) pairs."""
        return self._get("/analysis/why", run_id=list(run_ids), a_run=list(a_runs),
                         baseline_run=list(baseline_runs), match=match, at=at, key=key, direction=direction,
                         top=top)


def _safe_id(run_id: str) -> str:
    """Run ids are ``[A-Za-z0-9_-]{1,64}``; anything else could not exist, and must not become a
    different path (``../``), so it is rejected before any request is made."""
    if not run_id or len(run_id) > 64 or not all(c.isalnum() or c in "-_" for c in run_id) or not run_id.isascii():
        raise NotFound(404, f"no run with id {run_id!r}")
    return run_id


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail else (response.reason_phrase or f"HTTP {response.status_code}")


def _decode_run(run: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(run)
    out["summary"] = {k: _maybe_float(v) for k, v in (run.get("summary") or {}).items()}
    return out
