"""``GET /analysis/why`` on the compare page's bar: two groups of 4 runs, 48 layers x 2,000 steps each.

The compare page selects more runs than it compares (20, of which one group of 4 against another):
here ``--runs`` (12) runs are selected and the first 8 compared, 4 against 4.

Seeds its own data through a real ``optiscope serve`` (``tests/dashboard/seed.py``: 6 per-layer
diagnostics logged every step, one spectrum per layer), then measures

* through the server: the request the compare page sends (A = 4 runs, baseline = 4 runs, matched by
  loss), median of ``--repeat``, wall time and the server process's CPU time (Linux ``/proc``: on a
  loaded machine the wall time mostly says how busy the other processes are);
* in-process on the same SQLite file: the endpoint's selective read (match series in full, each
  per-layer series only near the run's matched step) against a full read of every point of every
  per-layer series of the selected runs followed by the same ``why`` — the reading the endpoint did
  before stop 19 (the ranking in both is today's), with the points each one reads; the two answers are
  checked equal.

Run: ``.venv/bin/python benchmarks/bench_why.py [--runs 8] [--steps 2000] [--layers 48] [--repeat 5]``
(``--home DIR`` seeds DIR once and reuses it). About a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from server.analysis import why  # noqa: E402
from server.analysis.crossing import SAMPLES_KEY  # noqa: E402
from server.analysis.layers import is_compared  # noqa: E402
from server.api.analysis import analysis_why  # noqa: E402
from server.store.analysis import chunks_near, index_diagnostics, load_run_data, select_runs  # noqa: E402
from server.wire import WireJSONResponse  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402  (a real `optiscope serve`)
from tests.dashboard.seed import Seeder, training_run  # noqa: E402
from tests.pg_cluster import free_port  # noqa: E402


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seed(server: LiveServer, *, runs: int, steps: int, layers: int) -> list[str]:
    names = [f"block{i // 4}.{['attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'][i % 4]}.weight" for i in range(layers)]
    seeder = Seeder(server.api, server.token)
    try:
        existing = {r["id"] for r in seeder.client.get("/runs", params={"project": "dash-tests", "limit": 1000})
                    .json()["data"]}
        ids = [f"why-{r:02d}" for r in range(runs)]
        for r, rid in enumerate(ids):
            if rid not in existing:
                training_run(seeder, rid, name=f"why run {r:02d}", tau=300.0 + 25 * r, steps=steps, layers=names,
                             optimizer=["Muon", "AdamW"][r % 2], sv_every=steps, neuron_arrays=False,
                             config={"lr": 0.02 * (1 + r % 2), "seed": r}, seed=r)
    finally:
        seeder.close()
    return ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--home", type=Path, default=None)
    args = p.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-why-"))
    home.mkdir(parents=True, exist_ok=True)
    server = LiveServer(port=free_port(), home=home, db_url=None, env={}).start()
    try:
        t0 = time.perf_counter()
        ids = seed(server, runs=args.runs, steps=args.steps, layers=args.layers)
        print(f"seeded {len(ids)} runs x {args.layers} layers x {args.steps} steps in {time.perf_counter() - t0:.0f} s "
              f"({home})")
        a_ids, b_ids = ids[1:8:2], ids[0:8:2]  # AdamW vs Muon, 4 seeds each
        params = {"run_id": ids, "a_run": a_ids, "baseline_run": b_ids, "match": "loss", "key": "loss", "top": 10}
        served, served_cpu = [], []
        assert server.process is not None
        for _ in range(args.repeat):
            c, t = process_cpu(server.process.pid), time.perf_counter()
            r = httpx.get(f"{server.api}/analysis/why", params=params, timeout=120)
            served.append(time.perf_counter() - t)
            served_cpu.append(process_cpu(server.process.pid) - c)
            r.raise_for_status()
        body = r.content
    finally:
        server.stop()

    engine = create_engine(f"sqlite:///{home / 'optiscope.db'}")
    selective, full, selective_cpu, full_cpu = [], [], [], []
    for _ in range(args.repeat):  # alternated, so load changes hit both
        with Session(engine) as s:
            c, t = time.process_time(), time.perf_counter()
            got = bytes(analysis_why(None, s, **params).body)
            selective.append(time.perf_counter() - t)
            selective_cpu.append(time.process_time() - c)
        with Session(engine) as s:
            c, t = time.process_time(), time.perf_counter()
            runs = select_runs(session=s, run_ids=ids)
            data = {d.id: d for d in load_run_data(session=s, runs=runs,
                                                   want=lambda k: is_compared(k) or k in ("loss", SAMPLES_KEY))}
            res = why([data[i] for i in a_ids], [data[i] for i in b_ids], a_label=", ".join(a_ids),
                      baseline_label=", ".join(b_ids), match="loss", match_key="loss", top=10)
            out = res.as_dict()
            out["rows"] = out["rows"][:10]
            out.update(a_run_ids=a_ids, baseline_run_ids=b_ids)
            ref = bytes(WireJSONResponse(out).body)
            full.append(time.perf_counter() - t)
            full_cpu.append(time.process_time() - c)
    assert got == ref == body, "the selective read answered differently from the full read"
    with Session(engine) as s:
        index = index_diagnostics(session=s, run_ids=a_ids + b_ids, want=is_compared)
        steps = res.matched_steps
        n_chunks = sum(len(cs) for cs in index.chunks.values())
        n_read = sum(len(chunks_near(cs, steps[index.keys[sid][0]])) for sid, cs in index.chunks.items())
    full_series = [v for d in data.values() for k, v in d.series.items() if is_compared(k)]
    print(f"full read: the per-layer series of all {len(ids)} selected runs: {len(full_series)} series, "
          f"{sum(len(v) for v in full_series):,} points (steps, times, values)")
    print(f"selective read: {len(a_ids) + len(b_ids)} compared runs, {len(index.chunks)} series, {n_read} of their "
          f"{n_chunks} chunks (steps + values blobs), 2 points kept per series")
    print(f"{'path':<34}{'wall median s':>14}{'min':>7}{'CPU median s':>14}{'min':>7}")
    for name, xs, cs in (("through the server (selective)", served, served_cpu),
                         ("in-process selective", selective, selective_cpu),
                         ("in-process full read + why", full, full_cpu)):
        print(f"{name:<34}{statistics.median(xs):>14.3f}{min(xs):>7.3f}{statistics.median(cs):>14.3f}{min(cs):>7.3f}")
    print(f"full read / selective, in-process medians: wall {statistics.median(full) / statistics.median(selective):.2f}x, "
          f"CPU {statistics.median(full_cpu) / statistics.median(selective_cpu):.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
