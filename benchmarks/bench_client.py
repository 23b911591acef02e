"""Client benchmark: ``run.log`` latency, end-to-end throughput, and points lost in a server outage.

Runs the real ``optiscope serve`` (SQLite, loopback) in a subprocess — the single-machine setup —
and the probe client in this process, as a training script would.

    python benchmarks/bench_client.py            # full
    python benchmarks/bench_client.py --quick    # smaller counts (CI smoke)

Targets (docs/DESIGN.md): ``run.log()`` ≤ 20 µs and never blocks on the network; 0 points lost
after an outage.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

import probe
from probe.client.config import ClientConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``optiscope serve`` in a subprocess, restartable on the same port and data."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "OPTISCOPE_HOME": str(self.home)}
        env.pop("OPTISCOPE_DATABASE_URL", None)
        cmd = [sys.executable, "-m", "probe.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("optiscope serve did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    @property
    def token(self) -> str:
        return (self.home / "local-token").read_text().strip()

    def count(self, run_id: str) -> dict[str, int]:
        r = httpx.get(f"{self.url}/api/v1/runs/{run_id}/keys", headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return {k["key"]: k["count"] for k in r.json()["scalars"]}


def _percentiles(ns: list[int]) -> str:
    us = np.asarray(ns, dtype=np.float64) / 1000
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    return f"p50 {p50:6.2f} µs   p99 {p99:6.2f} µs   p99.9 {p999:7.2f} µs   max {us.max():9.1f} µs"


def bench_latency(settings: ClientConfig, calls: int) -> None:
    import torch

    clock = time.perf_counter_ns
    cases = {
        "3 floats": lambda i: {"loss": 1.0 / (i + 1), "acc": 0.5, "lr": 0.02},
        "3 0-d tensors": None,
        "200-key per-layer dict": lambda i: {f"grad_norm/layer{j}.weight": 0.1 * j for j in range(200)},
    }
    tensors = [torch.tensor(float(i)) for i in range(64)]
    for name, make in cases.items():
        run = probe.init("bench-latency", name=name, settings=settings)
        payloads = [make(i) for i in range(256)] if make else [
            {"loss": tensors[i % 64], "acc": tensors[(i + 1) % 64], "lr": tensors[(i + 2) % 64]} for i in range(256)
        ]
        n = calls if name != "200-key per-layer dict" else calls // 20
        lat = []
        for i in range(n):
            m = payloads[i & 255]
            t0 = clock()
            run.log(m, step=i)
            lat.append(clock() - t0)
            if i % 100 == 99:
                # ~100k log calls/s: far above a real loop, but the sender thread gets the GIL
                # sometimes, as it does while torch ops run (a pure-Python tight loop starves it).
                time.sleep(0.001)
        t0 = time.perf_counter()
        ok = run.flush(timeout=120)
        drain = time.perf_counter() - t0
        run.finish()
        print(f"  run.log, {name:24s} {_percentiles(lat)}   ({n} calls; drained in {drain:.2f}s, ok={ok}, dropped={run.dropped})")


def bench_throughput(server: Server, settings: ClientConfig, points: int) -> None:
    run = probe.init("bench-throughput", settings=settings)
    keys = [f"k{j}" for j in range(100)]
    steps = points // len(keys)
    t0 = time.perf_counter()
    for step in range(steps):
        run.log(dict.fromkeys(keys, 0.5), step=step)
    ok = run.flush(timeout=300)
    elapsed = time.perf_counter() - t0
    run.finish()
    stored = sum(server.count(run.id).values())
    print(f"  end-to-end: {stored} points stored in {elapsed:.2f}s = {stored / elapsed:,.0f} points/s (flush ok={ok})")


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


def bench_outage(server: Server, settings: ClientConfig, seconds: float) -> None:
    """Log at a steady pace for ``seconds``; the server is down for the middle 60% of it."""
    run = probe.init("bench-outage", settings=settings)
    clock = time.perf_counter_ns
    lat_up, lat_down = [], []
    rss: dict[str, float] = {}
    start = time.monotonic()
    phase, step, spooled = "up", 0, 0
    while (elapsed := time.monotonic() - start) < seconds:
        if phase == "up" and elapsed > 0.2 * seconds and "before" not in rss:
            run.flush(timeout=30)
            rss["before"] = _rss_mib()
            server.stop()
            phase = "down"
        elif phase == "down" and elapsed > 0.8 * seconds:
            rss["end of outage"] = _rss_mib()
            spooled = run.sender.spool.bytes if run.sender and run.sender.spool else 0
            server.start()
            phase = "up"
        t0 = clock()
        run.log({"loss": 1.0 / (step + 1), "acc": 0.5}, step=step)
        (lat_down if phase == "down" else lat_up).append(clock() - t0)
        step += 1
        if step % 10 == 0:
            time.sleep(0.001)  # the training step
    ok = run.flush(timeout=120)
    run.finish()
    counts = server.count(run.id)
    lost = 2 * step - sum(counts.values())
    print(f"  outage: {seconds * 0.6:.0f} s of {seconds:.0f} s down; logged {2 * step} points, "
          f"stored {sum(counts.values())}, lost {lost} (dropped counter {run.dropped}), flush ok={ok}")
    print(f"  memory: RSS {rss['before']:.0f} MiB before the outage, {rss['end of outage']:.0f} MiB at its end "
          f"({spooled / 2**20:.1f} MiB waiting in the spool on disk)")
    print(f"  run.log while the server was down: {_percentiles(lat_down)}")
    print(f"  run.log while the server was up:   {_percentiles(lat_up)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        server = Server(home)
        server.start()
        try:
            settings = ClientConfig.from_env(home=home, env={}, flush_interval=0.1, finish_timeout=120)
            print(f"optiscope client benchmark (server {server.url}, SQLite, {os.cpu_count()} CPUs)")
            bench_latency(settings, int(200_000 * scale))
            bench_throughput(server, settings, int(1_000_000 * scale))
            bench_outage(server, settings.replace(backoff_max=1.0), 30.0 * max(scale, 0.34))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
