"""Optiscope beside its peers: the same logging work, interleaved, medians and ratios.

    python benchmarks/bench_peers.py                 # 20 keys x 10,000 steps, 3 repetitions
    python benchmarks/bench_peers.py --steps 2000 --reps 2 --long 20000   # quicker
    python benchmarks/bench_peers.py --peer-path DIR  # peers installed with pip --target DIR

For each peer, in its own process (no shared imports or caches), per repetition:
  (a) one run, ``--keys`` keys logged every step for ``--steps`` steps, timed from the first log
      call until the data can be read back (points per second, end to end);
  (b) the training thread's microseconds per step (the log calls alone);
and once per peer: (c) reading back one ``--long``-point series as arrays ready to plot, 3 times
(Optiscope: the server's downsampled query the dashboard uses; the others have no server-side
downsampling and load every point).

Peers that are not installed are skipped, saying so. Repetitions interleave the peers (the order
rotates) so a machine's load falls on all of them alike. The Optiscope server is started fresh by
this script and its first repetition is reported separately, because a cold server was suspected
of making the first repetition slow.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PEERS = ("optiscope", "trackio", "wandb-offline", "tensorboard", "mlflow-file", "mlflow-server", "aim")
SLOW_PEERS = ("mlflow-file", "mlflow-server", "aim")
"""Peers that log ≈1-3k points/s: they run ``--slow-steps`` steps (points/s stays comparable), so
that a repetition of every peer fits in minutes."""
_NEEDS = {"trackio": "trackio", "wandb-offline": "wandb", "tensorboard": "tensorboard", "mlflow-file": "mlflow",
          "mlflow-server": "mlflow.server", "aim": "aim"}


# -- workers: one peer, one process ---------------------------------------------------------------


def _values(step: int, keys: list[str]) -> dict[str, float]:
    return {k: math.sin(step * 0.001 + i) for i, k in enumerate(keys)}


def _worker(peer: str, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    keys = [f"metric_{i:02d}" for i in range(opts["keys"])]
    steps, work = (opts["slow_steps"] if peer in SLOW_PEERS else opts["steps"]), Path(opts["dir"])
    if phase == "long":
        keys, steps = ["long"], opts["long"]
    return globals()[f"_run_{peer.replace('-', '_')}"](keys, steps, work, phase, opts)


def _timed_loop(log, keys: list[str], steps: int) -> tuple[float, float]:  # noqa: ANN001
    """Calls ``log(metrics, step)`` every step; returns (start time, training-thread seconds)."""
    rows = [_values(s, keys) for s in range(steps)]  # built before timing: only the log call counts
    start = time.perf_counter()
    for step, row in enumerate(rows):
        log(row, step)
    return start, time.perf_counter() - start


def _run_optiscope(keys: list[str], steps: int, work: Path, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    import probe
    from probe.api import Api

    api = Api(url=opts["url"], token=opts["token"])
    run = probe.init(project="bench-peers", name=f"{phase}-{time.time_ns()}", url=opts["url"],
                     token=opts["token"], home=work / "home")
    if phase == "long":  # only its read is timed; a flush now and then keeps a 1M-point series in the queue's bound
        def log(row: dict[str, float], step: int) -> None:
            run.log(row, step=step)
            if step % 50_000 == 49_999:
                run.flush(timeout=60)
    else:
        def log(row: dict[str, float], step: int) -> None:
            run.log(row, step=step)

    start, train = _timed_loop(log, keys, steps)
    t_finish = time.perf_counter()
    run.finish()
    t_query = time.perf_counter()
    while True:  # queryable: every point of every key answered by the query API
        counts = {k["key"]: k["count"] for k in api.http.get(f"/runs/{run.id}/keys").json()["scalars"]}
        if all(counts.get(k, 0) >= steps for k in keys):
            break
        if run.dropped or time.perf_counter() - t_query > 120:
            raise RuntimeError(f"not every point arrived: {counts}, {run.dropped} dropped")
        time.sleep(0.005)
    total = time.perf_counter() - start
    # where the end-to-end time went: the loop, finish() (the sender's last batches), the query
    out = {"e2e_s": total, "train_s": train, "finish_s": t_query - t_finish, "query_s": time.perf_counter() - t_query}
    if phase == "long":
        reads = []
        for _ in range(opts["read_reps"]):
            t0 = time.perf_counter()
            frame = api.run(run.id).history("long", points=2000)
            reads.append(time.perf_counter() - t0)
            assert len(frame) > 1000
        out["read_s"] = reads
    api.close()
    return out


def _run_trackio(keys: list[str], steps: int, work: Path, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    os.environ["TRACKIO_DIR"] = str(work / "trackio")
    import trackio

    name = f"{phase}-{time.time_ns()}"
    trackio.init(project="bench-peers", name=name)
    start, train = _timed_loop(lambda row, step: trackio.log(row, step=step), keys, steps)
    trackio.finish()  # returns once its background thread has written every point
    total = time.perf_counter() - start
    out = {"e2e_s": total, "train_s": train}
    if phase == "long":
        from trackio.sqlite_storage import SQLiteStorage

        reads = []
        for _ in range(opts["read_reps"]):
            t0 = time.perf_counter()
            logs = SQLiteStorage.get_logs(project="bench-peers", run=name)
            ys = [row["long"] for row in logs if "long" in row]
            reads.append(time.perf_counter() - t0)
            assert len(ys) == steps, len(ys)
        out["read_s"] = reads
    return out


def _run_wandb_offline(keys: list[str], steps: int, work: Path, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    import wandb

    if phase == "long":
        return {"skip_read": "an offline W&B run is readable only after `wandb sync` to a W&B server"}
    run = wandb.init(mode="offline", dir=str(work), project="bench-peers", settings=wandb.Settings(silent=True))
    start, train = _timed_loop(lambda row, step: run.log(row, step=step), keys, steps)
    run.finish()  # offline: returns once the run's .wandb file holds everything
    return {"e2e_s": time.perf_counter() - start, "train_s": train}


def _run_tensorboard(keys: list[str], steps: int, work: Path, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter

    logdir = work / f"tb-{time.time_ns()}"
    writer = SummaryWriter(str(logdir))

    def log(row: dict[str, float], step: int) -> None:
        for key, value in row.items():
            writer.add_scalar(key, value, step)

    start, train = _timed_loop(log, keys, steps)
    writer.close()  # flushed: TensorBoard reads it from here
    out = {"e2e_s": time.perf_counter() - start, "train_s": train}
    if phase == "long":
        import numpy as np
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        reads = []
        for _ in range(opts["read_reps"]):
            t0 = time.perf_counter()
            acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
            acc.Reload()
            events = acc.Scalars("long")
            xs, ys = np.array([e.step for e in events]), np.array([e.value for e in events])
            reads.append(time.perf_counter() - t0)
            assert len(xs) == len(ys) == steps
        out["read_s"] = reads
    return out


def _run_mlflow_file(keys: list[str], steps: int, work: Path, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 keeps its file store behind this switch
    return _run_mlflow_client((work / "mlruns").as_uri(), keys, steps, phase, opts)


def _run_mlflow_server(keys: list[str], steps: int, work: Path, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The MLflow tracking server (``mlflow server``, SQLite backend) through ``MlflowClient`` over HTTP."""
    return _run_mlflow_client(opts["mlflow_url"], keys, steps, phase, opts)


def _run_mlflow_client(uri: str, keys: list[str], steps: int, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment(f"e{time.time_ns()}")).info.run_id
    chunk = 1000 if phase == "long" else 1  # per step, as in training; the long series in bulk

    if chunk == 1:
        def log(row: dict[str, float], step: int) -> None:
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in row.items()])

        start, train = _timed_loop(log, keys, steps)
    else:
        start = time.perf_counter()
        for lo in range(0, steps, chunk):
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric("long", math.sin(s * 0.001), now, s)
                                              for s in range(lo, min(steps, lo + chunk))])
        train = time.perf_counter() - start
    client.set_terminated(run_id)
    out = {"e2e_s": time.perf_counter() - start, "train_s": train, "steps": steps}
    if phase == "long":
        import numpy as np

        reads = []
        for _ in range(opts["read_reps"]):
            t0 = time.perf_counter()
            history = client.get_metric_history(run_id, "long")
            xs, ys = np.array([m.step for m in history]), np.array([m.value for m in history])
            reads.append(time.perf_counter() - t0)
            assert len(xs) == len(ys) == steps
        out["read_s"] = reads
    return out


def _run_aim(keys: list[str], steps: int, work: Path, phase: str, opts: dict[str, Any]) -> dict[str, Any]:
    from aim import Run

    if phase == "long":
        # Aim 3.29: a run closed in this process read back (Run(run_hash=..., read_only=True).metrics(),
        # Repo.query_metrics) showed no metrics in this script's tries, so no read figure is claimed.
        return {"skip_read": "read-back not measured (Aim's reader returned no metrics for the closed run here)"}
    run = Run(repo=str(work), experiment="bench-peers", system_tracking_interval=None, capture_terminal_logs=False)
    start, train = _timed_loop(lambda row, step: run.track(row, step=step), keys, steps)
    run.close()  # until close() returns; not verified readable (above)
    return {"e2e_s": time.perf_counter() - start, "train_s": train, "steps": steps}


# -- the servers ----------------------------------------------------------------------------------


class MlflowServer:
    """``mlflow server`` on a fresh SQLite file (loopback). ``path``: where the full ``mlflow`` package
    lives when it is not in this environment (``pip install --target DIR mlflow``); searched first in
    the server's process only, so the benchmark's own packages stay as they are."""

    def __init__(self, work: Path, path: str | None) -> None:
        import socket

        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = dict(os.environ)
        if path:
            env["PYTHONPATH"] = os.pathsep.join([path, *[p for p in (env.get("PYTHONPATH", ""),) if p]])
        work.mkdir(parents=True, exist_ok=True)
        self.log = open(work / "mlflow-server.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
             "--default-artifact-root", (work / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=work, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({work / 'mlflow-server.log'})")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self._settle()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def _settle(self, timeout: float = 90.0) -> None:
        """Wait until the server's process tree is idle (< 5 % of a core over 2 s): it keeps importing
        and spawning workers after its health check answers, and in one run the first repetition after
        it started measured every peer 1.2-10x slower than the later ones."""
        def cpu_s() -> float:
            pids = [self.proc.pid]
            children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
            pids += [int(p) for p in children.stdout.split()]
            total = 0.0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return total

        deadline = time.monotonic() + timeout
        before = cpu_s()
        while time.monotonic() < deadline:
            time.sleep(2.0)
            now = cpu_s()
            if now - before < 0.1:
                return
            before = now

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()



class OptiscopeServer:
    """A fresh ``optiscope serve`` (SQLite, loopback) for this benchmark."""

    def __init__(self, home: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.home = home
        env = {**os.environ, "OPTISCOPE_HOME": str(home)}
        env.pop("OPTISCOPE_DATABASE_URL", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "probe.cli", "serve", "--port", str(self.port)],
                                     cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("optiscope serve did not start")
        self.token = (home / "local-token").read_text().strip()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- driver ---------------------------------------------------------------------------------------


def _available(peer: str, peer_path: str | None, mlflow_server_path: str | None) -> str | None:
    """``None`` when the peer can run, else why not."""
    if peer == "optiscope":
        return None
    env = _env(peer_path)
    if peer == "mlflow-server":
        # the server needs the full mlflow package (mlflow-skinny lacks flask-cors and the UI); the
        # client side is MlflowClient over HTTP, which mlflow-skinny has
        if mlflow_server_path:
            env["PYTHONPATH"] = os.pathsep.join([mlflow_server_path, env["PYTHONPATH"]])
        code = "import flask_cors, mlflow.server"
        probe_run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if probe_run.returncode:
            missing = probe_run.stderr.strip().splitlines()[-1:] or ["?"]
            return f"needs the full mlflow package for `mlflow server` ({missing[0]}); see --mlflow-server-path"
        code = "import mlflow.tracking"
        if subprocess.run([sys.executable, "-c", code], env=_env(peer_path), capture_output=True).returncode:
            return "mlflow (or mlflow-skinny) is not installed"
        return None
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({_NEEDS[peer]!r}) is None)"
    if subprocess.run([sys.executable, "-c", code], env=env).returncode:
        return f"{_NEEDS[peer]} is not installed"
    return None


def _env(peer_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    parts = [p for p in (env.get("PYTHONPATH", ""),) if p]
    if peer_path:
        parts.append(peer_path)  # after the repository and the venv: peers never shadow them
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *parts])
    env["WANDB_SILENT"] = "true"
    return env


def _spawn(peer: str, phase: str, opts: dict[str, Any], peer_path: str | None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", peer, "--phase", phase, "--opts", json.dumps(opts)],
                          capture_output=True, text=True, env=_env(peer_path), cwd=REPO_ROOT, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[:300]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=20, help="keys logged every step (default 20)")
    parser.add_argument("--steps", type=int, default=10_000, help="steps per run (default 10,000)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--long", type=int, default=100_000, help="points in the read-back series (default 100k)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {', '.join(PEERS)}")
    parser.add_argument("--peer-path", help="a directory of peers installed with pip --target (searched last)")
    parser.add_argument("--slow-steps", type=int, default=1_000,
                        help=f"steps per run for the slow peers {', '.join(SLOW_PEERS)} (default 1,000)")
    parser.add_argument("--mlflow-server-path",
                        help="a directory holding the full mlflow package (pip install --target DIR mlflow), "
                             "put first on the path of the `mlflow server` process only")
    parser.add_argument("--optiscope-long", type=int, default=1_000_000,
                        help="points of Optiscope's own long series, read back downsampled (default 1M)")
    parser.add_argument("--optiscope-reads", type=int, default=20,
                        help="reads of that series, for its p50/p95 (default 20)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--opts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.phase, json.loads(args.opts))))
        return 0

    unknown = [p for p in args.peers.split(",") if p not in PEERS]
    if unknown:
        parser.error(f"--peers: unknown peer {', '.join(unknown)} (choose from {', '.join(PEERS)})")
    peers, skipped = [], {}
    for peer in args.peers.split(","):
        why = _available(peer, args.peer_path, args.mlflow_server_path)
        (skipped.__setitem__(peer, why) if why else peers.append(peer))
    for peer, why in skipped.items():
        print(f"skipped {peer}: {why}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        mlflow_server = None
        if "mlflow-server" in peers:  # first, and settled, so that its start-up does not load repetition 1
            try:
                mlflow_server = MlflowServer(Path(tmp) / "mlflow-server", args.mlflow_server_path)
            except RuntimeError as exc:
                peers.remove("mlflow-server")
                skipped["mlflow-server"] = str(exc)
                print(f"skipped mlflow-server: {exc}", flush=True)
        server = OptiscopeServer(Path(tmp) / "optiscope-home")
        base = {"keys": args.keys, "steps": args.steps, "slow_steps": args.slow_steps, "long": args.long,
                "read_reps": 3, "url": server.url, "token": server.token,
                "mlflow_url": mlflow_server.url if mlflow_server else None}
        results: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
        try:
            for rep in range(args.reps):
                order = peers[rep % len(peers):] + peers[: rep % len(peers)]
                for peer in order:
                    work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{peer}-"))
                    result = _spawn(peer, "ingest", {**base, "dir": str(work)}, args.peer_path)
                    results[peer].append(result)
                    steps = result.get("steps", args.steps)
                    print(f"rep {rep + 1} {peer}: " + (result.get("error") or
                          f"{args.keys * steps / result['e2e_s']:,.0f} points/s end to end, "
                          f"{1e6 * result['train_s'] / steps:,.1f} us/step on the training thread"
                          + (f" (loop {result['train_s']:.2f} s, finish {result['finish_s']:.2f} s, "
                             f"queryable {result['query_s']:.3f} s later)" if "finish_s" in result else "")),
                          flush=True)
            reads = {}
            for peer in peers:
                work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{peer}-long-"))
                reads[peer] = _spawn(peer, "long", {**base, "dir": str(work)}, args.peer_path)
            own = None
            if "optiscope" in peers and args.optiscope_long:
                work = Path(tempfile.mkdtemp(dir=tmp, prefix="optiscope-1m-"))
                own = _spawn("optiscope", "long", {**base, "dir": str(work), "long": args.optiscope_long,
                                                   "read_reps": args.optiscope_reads}, args.peer_path)
        finally:
            server.close()
            if mlflow_server is not None:
                mlflow_server.close()
    _report(args, peers, results, reads, skipped)
    if own is not None:
        if "read_s" in own:
            first, *rest = (1000 * r for r in own["read_s"])
            ms = sorted(rest) or [first]
            p95 = ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)]
            print(f"Optiscope {args.optiscope_long:,}-point series read downsampled to <= 2,000 points "
                  f"through probe.Api: first read {first:.1f} ms; the next {len(rest)}: p50 "
                  f"{statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms")
        else:
            print(f"Optiscope {args.optiscope_long:,}-point read: {own.get('error')}")
    return 0


def _report(args: argparse.Namespace, peers: list[str], results: dict[str, list[dict[str, Any]]],
            reads: dict[str, dict[str, Any]], skipped: dict[str, str]) -> None:
    points = args.keys * args.steps
    rows = {}
    for peer in peers:
        ok = [r for r in results[peer] if "error" not in r]
        rates = [args.keys * r.get("steps", args.steps) / r["e2e_s"] for r in ok]
        train = [1e6 * r["train_s"] / r.get("steps", args.steps) for r in ok]
        read = reads[peer].get("read_s")
        rows[peer] = (statistics.median(rates) if rates else None, min(rates) if rates else None,
                      statistics.median(train) if train else None, statistics.median(read) if read else None,
                      reads[peer].get("error") or reads[peer].get("skip_read"))
    ours = rows.get("optiscope")
    print(f"\n{args.keys} keys x {args.steps:,} steps ({', '.join(SLOW_PEERS)}: {args.slow_steps:,} steps), "
          f"{args.reps} interleaved repetitions; read: one {args.long:,}-point series; {os.cpu_count()} CPUs; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'peer':<15}{'ingest pts/s (median)':>23}{'worst rep':>11}{'Optiscope x':>13}"
          f"{'train us/step':>15}{'Optiscope x':>13}{'read ms':>10}{'Optiscope x':>13}")
    for peer, (rate, worst, train, read, note) in rows.items():
        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.1f}" if a and b else "-"

        print(f"{peer:<15}{_fmt(rate, '{:,.0f}'):>23}{_fmt(worst, '{:,.0f}'):>11}"
              f"{ratio(ours[0], rate) if ours and peer != 'optiscope' else '':>13}"
              f"{_fmt(train, '{:,.1f}'):>15}{ratio(train, ours[2]) if ours and peer != 'optiscope' else '':>13}"
              f"{_fmt(read and 1000 * read, '{:,.1f}'):>10}"
              f"{ratio(read, ours[3]) if ours and peer != 'optiscope' else '':>13}"
              + (f"  ({note})" if note else ""))
    if ours and "trackio" in rows and rows["trackio"][0]:
        per_rep = [a["e2e_s"] and b["e2e_s"] and (b["e2e_s"] / a["e2e_s"])
                   for a, b in zip(results["optiscope"], results["trackio"]) if "error" not in a and "error" not in b]
        print("Optiscope / Trackio ingest per repetition: " + ", ".join(f"{r:.2f}x" for r in per_rep))
    first = results.get("optiscope", [{}])[0]
    if "e2e_s" in first:
        print(f"Optiscope first repetition after `optiscope serve` started: {points / first['e2e_s']:,.0f} points/s")
    for peer, why in skipped.items():
        print(f"skipped {peer}: {why}")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


if __name__ == "__main__":
    sys.exit(main())
