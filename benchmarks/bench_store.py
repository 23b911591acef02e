"""Store benchmark over loopback HTTP against a real ``optiscope serve`` (prints figures).

Measures, in one run:
  * scalar ingest throughput (batches of a few thousand points) into SQLite and PostgreSQL,
  * array-record ingest (256-value spectra), records/s,
  * query latency p50/p95 of a 1,000,000-point series downsampled to ~2,000 points, with a check
    that an injected single-point spike survives.

Request bodies are encoded before the clock starts, so the figures are the server's (parse →
validate → insert → commit), not the client's JSON encoder. Usage:

    python benchmarks/bench_store.py [--quick] [--no-pg]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pg_cluster import find_pg_bin, free_port, start_cluster  # noqa: E402

MLFLOW_LOG_BATCH_POINTS_PER_S = 5_000  # DESIGN.md: MLflow log_batch on the same class of machine
KEYS_PER_BATCH = 10


class Server:
    def __init__(self, db_url: str | None, home: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="optiscope-bench-"))
        self.port = free_port()
        self.db_url = db_url
        cmd = [sys.executable, "-m", "probe.cli", "serve", "--port", str(self.port)]
        if db_url:
            cmd += ["--db", db_url]
        env = {**os.environ, "OPTISCOPE_HOME": str(self.home), **(env or {})}
        env.pop("OPTISCOPE_DATABASE_URL", None)
        self.log = open(self.home / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.api = f"http://127.0.0.1:{self.port}/api/v1"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.api + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError((self.home / "server.log").read_text())
        self.token = self._token()
        self.client = httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"},
                                   timeout=120)

    def _token(self) -> str:
        local = self.home / "local-token"
        if local.exists():
            return local.read_text().strip()
        from server.auth import create_token
        from server.db import make_engine, make_sessionmaker

        engine = make_engine(self.db_url or "")
        session = make_sessionmaker(engine)()
        token = create_token(session=session, name="bench")[1]
        session.close()
        engine.dispose()
        return token

    def cpu_seconds(self) -> float:
        """utime + stime of the server process (Linux /proc): a figure that load cannot inflate."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def new_run(self) -> str:
        run_id = uuid.uuid4().hex
        self.client.post("/runs", json={"id": run_id, "project": "bench"}).raise_for_status()
        return run_id

    def close(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def scalar_bodies(n_batches: int, points_per_batch: int, start_step: int = 0) -> list[bytes]:
    per_key = points_per_batch // KEYS_PER_BATCH
    rng = np.random.default_rng(0)
    bodies = []
    t0 = time.time()
    for b in range(n_batches):
        steps = list(range(start_step + b * per_key, start_step + (b + 1) * per_key))
        times = [t0 + s * 0.01 for s in steps]
        scalars = [{"key": f"metric_{k}" if k else "loss", "steps": steps, "times": times,
                    "values": rng.normal(size=per_key).tolist()} for k in range(KEYS_PER_BATCH)]
        bodies.append(orjson.dumps({"batch_id": f"b{b}", "scalars": scalars}))
    return bodies


def bench_scalar_ingest(server: Server, n_batches: int, points_per_batch: int) -> tuple[float, float]:
    """Returns (points per wall second, points per server CPU second)."""
    run_id = server.new_run()
    bodies = scalar_bodies(n_batches, points_per_batch)
    server.client.post(f"/runs/{run_id}/batches", content=bodies[0]).raise_for_status()  # warm-up
    cpu0 = server.cpu_seconds()
    t = time.perf_counter()
    for body in bodies[1:]:
        r = server.client.post(f"/runs/{run_id}/batches", content=body)
        r.raise_for_status()
    elapsed = time.perf_counter() - t
    points = (n_batches - 1) * points_per_batch
    return points / elapsed, points / max(server.cpu_seconds() - cpu0, 1e-9)


def bench_array_ingest(server: Server, n_batches: int, records_per_batch: int) -> float:
    run_id = server.new_run()
    rng = np.random.default_rng(1)
    layers = [f"blocks.{i}.mlp.fc.weight" for i in range(records_per_batch)]
    bodies = []
    for b in range(n_batches):
        arrays = [{"key": "sv.update", "layer": layer, "step": b, "time": 1.7e9 + b, "shape": [256],
                   "values": np.sort(rng.random(256))[::-1].tolist()} for layer in layers]
        bodies.append(orjson.dumps({"batch_id": f"a{b}", "arrays": arrays}))
    server.client.post(f"/runs/{run_id}/batches", content=bodies[0]).raise_for_status()
    t = time.perf_counter()
    for body in bodies[1:]:
        server.client.post(f"/runs/{run_id}/batches", content=body).raise_for_status()
    return (n_batches - 1) * records_per_batch / (time.perf_counter() - t)


def load_query_series(server: Server, n_points: int) -> tuple[str, int]:
    run_id = server.new_run()
    spike_step = int(n_points * 0.6180339)
    chunk = 50_000
    rng = np.random.default_rng(2)
    for start in range(0, n_points, chunk):
        steps = np.arange(start, min(start + chunk, n_points))
        values = np.sin(steps / 5000.0) + 0.01 * rng.normal(size=len(steps))
        if start <= spike_step < start + len(steps):
            values[spike_step - start] = 50.0
        body = {"scalars": [{"key": "loss", "steps": steps.tolist(), "times": (1.7e9 + steps * 0.01).tolist(),
                             "values": values.tolist()}]}
        server.client.post(f"/runs/{run_id}/batches", content=orjson.dumps(body)).raise_for_status()
    return run_id, spike_step


def bench_query(server: Server, run_id: str, spike_step: int, n_points: int,
                repeats: int) -> tuple[float, float, bool, int, float]:
    params = {"run_id": run_id, "key": "loss", "points": 2000}
    server.client.get("/series", params=params).raise_for_status()
    latencies = []
    out = None
    cpu0 = server.cpu_seconds()
    for _ in range(repeats):
        t = time.perf_counter()
        r = server.client.get("/series", params=params)
        r.raise_for_status()
        out = r.json()["series"][0]  # parse included: the dashboard has to do it too
        latencies.append(time.perf_counter() - t)
    assert out is not None and out["total"] == n_points, out and out["total"]
    spike = spike_step in out["steps"] and out["y"][out["steps"].index(spike_step)] == 50.0
    cpu_ms = (server.cpu_seconds() - cpu0) / repeats * 1000
    lat = np.array(latencies) * 1000
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), spike, len(out["steps"]), cpu_ms


def run_engine(label: str, db_url: str | None, quick: bool) -> None:
    # Cold figures first: the series cache is off, every query reads and decodes all chunks.
    server = Server(db_url, env={"OPTISCOPE_SERIES_CACHE_MB": "0"})
    n = 200_000 if quick else 1_000_000
    repeats = 10 if quick else 30
    try:
        n_batches = 20 if quick else 60
        pps, per_cpu = bench_scalar_ingest(server, n_batches=n_batches, points_per_batch=5000)
        print(f"[{label}] scalar ingest: {pps:,.0f} points/s wall, {per_cpu:,.0f} points per server CPU-second "
              f"(batches of 5,000 points = {KEYS_PER_BATCH} keys x 500; target >= 200,000 into SQLite; "
              f"{pps / MLFLOW_LOG_BATCH_POINTS_PER_S:.0f}x MLflow log_batch ~5,000/s)", flush=True)
        rps = bench_array_ingest(server, n_batches=10 if quick else 30, records_per_batch=100)
        print(f"[{label}] array ingest: {rps:,.0f} records/s (256-value spectra, 100 per batch)", flush=True)
        run_id, spike_step = load_query_series(server, n)
        p50, p95, spike, n_out, cpu_ms = bench_query(server, run_id, spike_step, n, repeats)
        print(f"[{label}] series query {n:,} -> {n_out:,} points, cold (no cache): p50 {p50:.1f} ms, "
              f"p95 {p95:.1f} ms (target <= 100 ms p95; server CPU {cpu_ms:.1f} ms/query); "
              f"single-point spike present: {spike}", flush=True)
    finally:
        server.close()
    # Same data, default settings: repeated reads of an unchanged series come from the cache.
    server = Server(db_url, home=server.home)
    try:
        p50, p95, spike, n_out, cpu_ms = bench_query(server, run_id, spike_step, n, repeats)
        print(f"[{label}] series query {n:,} -> {n_out:,} points, warm (series cache): p50 {p50:.1f} ms, "
              f"p95 {p95:.1f} ms (server CPU {cpu_ms:.1f} ms/query); single-point spike present: {spike}",
              flush=True)
    finally:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args()
    print(f"optiscope store benchmark on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}")
    run_engine("sqlite", None, args.quick)
    print(f"load average now {os.getloadavg()[0]:.1f} (figures on a shared machine understate the server)")
    if args.no_pg:
        return 0
    if find_pg_bin() is None:
        print("[postgresql] SKIPPED: PostgreSQL binaries not found")
        return 0
    cluster = start_cluster()
    try:
        run_engine("postgresql", cluster.url(), args.quick)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
