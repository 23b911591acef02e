"""Read back what a real server stored for a run, raw (never downsampled), for the integration tests."""

from __future__ import annotations

import httpx


def stored_series(api: str, headers: dict[str, str], run_id: str) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series of ``run_id`` as ``{key: (steps, values)}``, straight from ``GET /series``."""
    with httpx.Client(headers=headers, timeout=60) as http:
        keys = [m["key"] for m in http.get(f"{api}/runs/{run_id}/keys").raise_for_status().json()["scalars"]]
        out: dict[str, tuple[list[int], list[float]]] = {}
        for start in range(0, len(keys), 50):
            r = http.get(f"{api}/series", params={"run_id": run_id, "key": keys[start:start + 50],
                                                  "points": 20_000})
            for series in r.raise_for_status().json()["series"]:
                assert not series["downsampled"]
                out[series["key"]] = (series["steps"], [float(v) for v in series["y"]])
        return out


def stored_run(api: str, headers: dict[str, str], run_id: str) -> dict:
    with httpx.Client(headers=headers, timeout=60) as http:
        return http.get(f"{api}/runs/{run_id}").raise_for_status().json()
