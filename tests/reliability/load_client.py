"""One load-test probe process: streams scalars and spectra through the real ``probe.client.Run``.

Run as ``python -m tests.reliability.load_client ...`` (the load suite and the benchmark start
16 of them). Pacing is by wall clock, bounded by ``--seconds``; each POST's latency is measured
by the ``httpx.Client`` handed to ``probe.init``, so it is the server's answer time as the
probe sees it. The result is written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import probe
from probe.client.config import ClientConfig


class TimedClient(httpx.Client):
    """An ``httpx.Client`` that records the duration of every batch POST (milliseconds)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latencies_ms: list[float] = []

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        t0 = time.perf_counter()
        response = super().send(request, **kwargs)
        if request.url.path.endswith("/batches"):
            self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        return response


def stream(*, url: str, token: str, seconds: float, steps_per_s: float, keys: int, array_every: int,
           home: Path, project: str = "load") -> dict[str, Any]:
    """Log at ``steps_per_s`` for ``seconds`` (bounded), then flush and finish; returns the report."""
    client = TimedClient(timeout=30.0)
    settings = ClientConfig(url=url, token=token, home=home, flush_interval=0.25, finish_timeout=120.0,
                            timeout=30.0)
    names = [f"metric{k}" for k in range(keys)]
    spectrum = np.sort(np.random.default_rng(0).random(64))[::-1].copy()
    t0 = time.perf_counter()
    run = probe.init(project, settings=settings, client=client)
    step = arrays = 0
    deadline = t0 + seconds
    period = 1.0 / steps_per_s
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        target = int((now - t0) / period) + 1  # steps due by now: catch up in bursts, never run ahead
        while step < target and step < 10_000_000:
            run.log({k: 1.0 / (step + 1 + i) for i, k in enumerate(names)}, step=step)
            if step % array_every == 0:
                run.log_array("sv.weight", spectrum * (1 + step * 1e-4), step=step, layer="fc1.weight")
                arrays += 1
            step += 1
        time.sleep(min(0.01, max(0.0, deadline - time.perf_counter())))
    ok = run.flush(timeout=120.0)
    run.finish()
    wall = time.perf_counter() - t0
    client.close()
    return {"run_id": run.id, "steps": step, "keys": names, "arrays": arrays, "dropped": run.dropped,
            "finished_ok": ok, "latencies_ms": client.latencies_ms, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--steps-per-s", type=float, required=True)
    p.add_argument("--keys", type=int, default=8)
    p.add_argument("--array-every", type=int, default=10)
    p.add_argument("--home", required=True)
    p.add_argument("--project", default="load")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = stream(url=args.url, token=args.token, seconds=args.seconds, steps_per_s=args.steps_per_s,
                    keys=args.keys, array_every=args.array_every, home=Path(args.home), project=args.project)
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
