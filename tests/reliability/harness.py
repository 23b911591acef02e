"""Shared machinery of the reliability suites and ``benchmarks/bench_reliability.py``.

Everything here drives *real* parts: ``optiscope serve`` / uvicorn subprocesses on loopback, a
real PostgreSQL cluster, the real probe client, and direct reads of the database to check
invariants that the HTTP API could hide (a partial batch, a chunk that disagrees with its series).
Nothing binds anything but 127.0.0.1, and every loop here is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.conftest import REPO_ROOT, LiveServer
from tests.pg_cluster import PgCluster, free_port

PYTHON = sys.executable


# -- servers --------------------------------------------------------------------------------------


def make_token(db_url: str, project: str | None = None, name: str = "reliability") -> str:
    """Migrate ``db_url`` and mint a token directly in it (so a client can start before the server)."""
    from server.auth import create_token
    from server.db import make_engine, make_sessionmaker
    from server.migrate import upgrade

    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        session = make_sessionmaker(engine)()
        try:
            return create_token(session=session, name=name, project=project)[1]
        finally:
            session.close()
    finally:
        engine.dispose()


def unstarted_sqlite_server(root: Path, env: dict[str, str] | None = None) -> LiveServer:
    """A ``LiveServer`` whose database and token exist but whose process is not started yet.

    The tests of "the server is down when training starts" need the URL and a valid token before
    any server process has ever run.
    """
    home = Path(tempfile.mkdtemp(prefix="home-", dir=root))
    token = make_token(f"sqlite:///{home / 'optiscope.db'}")
    return LiveServer(port=free_port(), home=home, db_url=None, env=dict(env or {}), token=token)


@dataclass
class WorkerServer:
    """The API under ``uvicorn --workers N`` (several processes on one port, one database).

    ``optiscope serve`` runs one process; a PostgreSQL deployment scales by adding workers, which
    is what the load suite measures. The app is built by :func:`api_app` in each worker.
    """

    db_url: str
    workers: int
    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def start(self, timeout: float = 60.0) -> WorkerServer:
        from server.migrate import upgrade

        upgrade(self.db_url)
        env = {**os.environ, "OPTISCOPE_HOME": str(self.home), "OPTISCOPE_DATABASE_URL": self.db_url,
               "OPTISCOPE_HOST": "127.0.0.1", "OPTISCOPE_PORT": str(self.port)}
        log = open(self.home / "workers.log", "ab")  # noqa: SIM115 (closed right after Popen)
        self.process = subprocess.Popen(
            [PYTHON, "-m", "uvicorn", "--factory", "tests.reliability.harness:api_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers), "--log-level", "warning"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_healthy(self.api, timeout, self.process)
        return self

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this Popen created: uvicorn + its workers
            proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)


def api_app() -> Any:
    """uvicorn factory for :class:`WorkerServer`: the API from the environment, no dashboard mount."""
    from server.main import create_app

    return create_app(mounts=False)


def wait_healthy(api: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> float:
    """Poll ``/health`` until it answers 200; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(api + "/health", timeout=1.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{api} not healthy within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM (a server's graceful stop), then SIGKILL after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def pg_stop(cluster: PgCluster) -> None:
    """Stop the cluster (fast mode: open connections are cut, as in a real restart)."""
    subprocess.run(cluster._cmd(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "-m", "fast",
                                "-w", "stop"), capture_output=True, check=True, timeout=60)


def pg_start(cluster: PgCluster) -> None:
    """Start a stopped cluster again on the same port and data."""
    opts = (f"-p {cluster.port} -k {cluster.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
    subprocess.run(cluster._cmd(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "-o", opts, "-l",
                                str(cluster.root / "server.log"), "-w", "-t", "60", "start"),
                   capture_output=True, check=True, timeout=90)


# -- reading back what the server stored -----------------------------------------------------------


def fetch_steps(api: str, run_id: str, keys: Sequence[str], headers: dict[str, str] | None = None,
                window: int = 15_000, client: httpx.Client | None = None) -> dict[str, list[int]]:
    """Every stored step of the given series of one run, raw: one request per window of
    ``window`` steps for all keys together, so no read is ever downsampled."""
    own = client is None
    http = client or httpx.Client(headers=headers or {}, timeout=60)
    try:
        meta = http.get(f"{api}/runs/{run_id}/keys").json()["scalars"]
        present = [m for m in meta if m["key"] in set(keys)]
        out: dict[str, list[int]] = {k: [] for k in keys}
        if not present:
            return out
        lo = min(m["first_step"] for m in present)
        hi = max(m["last_step"] for m in present)
        while lo <= hi:
            r = http.get(f"{api}/series", params={"run_id": run_id, "key": list(keys), "points": 20_000,
                                                  "x_min": lo, "x_max": lo + window - 1})
            r.raise_for_status()
            for series in r.json()["series"]:
                assert not series["downsampled"], "a window was downsampled: lower the window"
                out[series["key"]].extend(series["steps"])
            lo += window
        return out
    finally:
        if own:
            http.close()


def loss_and_duplicates(stored: Sequence[int], expected: Iterable[int]) -> tuple[int, int]:
    """(points expected but missing, points stored more than once or never expected)."""
    want = np.fromiter(expected, dtype=np.int64)
    got = np.asarray(stored, dtype=np.int64)
    uniq = np.unique(got)
    lost = int(len(np.setdiff1d(want, uniq)))
    dup = int(len(got) - len(uniq)) + int(len(np.setdiff1d(uniq, want)))
    return lost, dup


@dataclass
class DbCheck:
    """Invariants of the stored data, read straight from the database (not through the API)."""

    runs: int
    series: int
    points: int
    problems: list[str]


def check_database(db_url: str, *, unique_steps: bool = True) -> DbCheck:
    """Every series' ``count`` equals the points in its chunks, chunk sequence numbers are
    0..n_chunks-1, chunk headers match their blobs, and (``unique_steps``, for writers that never
    repeat a step, like the probe) no step is stored twice in a series.

    A batch torn by a crash would break one of these (or the "all keys of a run share their
    steps" check the fault tests add on top).
    """
    from sqlalchemy import select

    from server.db import make_engine, make_sessionmaker
    from server.models import Run, Series, SeriesChunk

    engine = make_engine(db_url)
    problems: list[str] = []
    points = 0
    try:
        session = make_sessionmaker(engine)()
        try:
            runs = len(session.scalars(select(Run.id)).all())
            series = session.scalars(select(Series)).all()
            for s in series:
                chunks = session.scalars(select(SeriesChunk).where(SeriesChunk.series_id == s.id)
                                         .order_by(SeriesChunk.seq)).all()
                seqs = [c.seq for c in chunks]
                if seqs != list(range(s.n_chunks)):
                    problems.append(f"series {s.run_id}/{s.key}: chunk seqs {seqs[:5]}… vs n_chunks={s.n_chunks}")
                n = 0
                all_steps = []
                for c in chunks:
                    st = np.frombuffer(c.steps, "<i8")
                    if len(st) != c.n or len(np.frombuffer(c.values, "<f8")) != c.n:
                        problems.append(f"series {s.run_id}/{s.key} chunk {c.seq}: header n={c.n}, blob {len(st)}")
                    if len(st) and (int(st.min()) != c.step_min or int(st.max()) != c.step_max):
                        problems.append(f"series {s.run_id}/{s.key} chunk {c.seq}: step range header is wrong")
                    n += len(st)
                    all_steps.append(st)
                if n != s.count:
                    problems.append(f"series {s.run_id}/{s.key}: count={s.count} but chunks hold {n}")
                if all_steps and unique_steps:
                    st = np.concatenate(all_steps)
                    if len(np.unique(st)) != len(st):
                        problems.append(f"series {s.run_id}/{s.key}: {len(st) - len(np.unique(st))} steps twice")
                points += n
            return DbCheck(runs=runs, series=len(series), points=points, problems=problems)
        finally:
            session.close()
    finally:
        engine.dispose()


def steps_by_key(db_url: str, run_id: str) -> dict[str, np.ndarray]:
    """Sorted stored steps of every series of a run, read from the database directly."""
    from sqlalchemy import select

    from server.db import make_engine, make_sessionmaker
    from server.models import Series, SeriesChunk

    engine = make_engine(db_url)
    try:
        session = make_sessionmaker(engine)()
        try:
            out: dict[str, np.ndarray] = {}
            for s in session.scalars(select(Series).where(Series.run_id == run_id)).all():
                blobs = session.scalars(select(SeriesChunk.steps).where(SeriesChunk.series_id == s.id)).all()
                out[s.key] = np.sort(np.concatenate([np.frombuffer(b, "<i8") for b in blobs])) if blobs \
                    else np.empty(0, np.int64)
            return out
        finally:
            session.close()
    finally:
        engine.dispose()


# -- load -----------------------------------------------------------------------------------------


@dataclass
class ClientResult:
    """What one load client reports on stdout (JSON)."""

    run_id: str
    steps: int
    keys: list[str]
    arrays: int
    dropped: int
    finished_ok: bool
    latencies_ms: list[float]
    wall_s: float


@dataclass
class LoadReport:
    clients: int
    duration_s: float
    points_sent: int
    points_stored: int
    lost: int
    duplicated: int
    arrays_expected: int
    arrays_stored: int
    ingest_p50_ms: float
    ingest_p99_ms: float
    query_p50_ms: float
    query_p95_ms: float
    queries: int
    points_per_s: float
    dropped_client_side: int

    def line(self, label: str) -> str:
        return (f"{label}: {self.clients} clients x {self.duration_s:.0f}s: {self.points_per_s:,.0f} points/s "
                f"sustained ({self.points_stored:,} stored of {self.points_sent:,}), ingest p50 "
                f"{self.ingest_p50_ms:.1f} ms p99 {self.ingest_p99_ms:.1f} ms, dashboard query p50 "
                f"{self.query_p50_ms:.1f} ms p95 {self.query_p95_ms:.1f} ms ({self.queries} queries), "
                f"lost {self.lost}, duplicated {self.duplicated}, arrays {self.arrays_stored}/{self.arrays_expected}")


def _query_loop(api: str, headers: dict[str, str], project: str, keys: list[str], done: threading.Event,
                max_s: float, out: list[float]) -> None:
    """A dashboard's reads while the load runs: run list, series of a run, its spectra, latest.

    Runs until ``done`` (every client finished) or ``max_s``; about 10 reads per second.
    """
    t_end = time.monotonic() + max_s
    run_ids: list[str] = []
    i = 0
    with httpx.Client(headers=headers, timeout=30) as client:
        while not done.is_set() and time.monotonic() < t_end and i < 100_000:
            rid = run_ids[i % len(run_ids)] if run_ids else None
            t0 = time.perf_counter()
            if i % 4 == 0 or rid is None:
                r = client.get(api + "/runs", params={"project": project, "limit": 50})
                if r.status_code == 200:
                    run_ids = [x["id"] for x in r.json()["data"]]
            elif i % 4 == 1:
                r = client.get(api + "/series", params={"run_id": rid, "key": keys[:3], "points": 1000})
            elif i % 4 == 2:
                r = client.get(f"{api}/runs/{rid}/arrays", params={"key": "sv.weight", "max_steps": 50})
            else:
                r = client.get(f"{api}/runs/{rid}/latest")
            out.append((time.perf_counter() - t0) * 1e3 if r.status_code == 200 else float("inf"))
            i += 1
            done.wait(0.1)


def run_load(api: str, token: str, *, clients: int, seconds: float, steps_per_s: float, keys: int,
             array_every: int, workdir: Path, project: str = "load", processes: bool = False) -> LoadReport:
    """Run ``clients`` probes (threads of this process, or ``processes``) streaming for ``seconds``
    against ``api`` while a dashboard reads, then verify every point of every run (0 lost, 0
    duplicated). A failed dashboard read counts as an infinite latency."""
    from tests.reliability.load_client import stream

    headers = {"Authorization": f"Bearer {token}"}
    url = api.removesuffix("/api/v1")
    results: list[ClientResult] = []
    errors: list[BaseException] = []
    done = threading.Event()
    query_ms: list[float] = []
    q = threading.Thread(target=_query_loop, args=(api, headers, project, [f"metric{k}" for k in range(keys)],
                                                   done, seconds + 300, query_ms), daemon=True)
    q.start()
    try:
        if processes:
            procs = []
            for i in range(clients):
                out = workdir / f"client-{i}.json"
                cmd = [PYTHON, "-m", "tests.reliability.load_client", "--url", url, "--token", token,
                       "--seconds", str(seconds), "--steps-per-s", str(steps_per_s), "--keys", str(keys),
                       "--array-every", str(array_every), "--home", str(workdir / f"home-{i}"),
                       "--project", project, "--out", str(out)]
                procs.append((subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL), out))
            try:
                for proc, out in procs:
                    proc.wait(timeout=seconds + 300)
                    results.append(ClientResult(**json.loads(out.read_text())))
            finally:
                for proc, _ in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=5)
        else:
            def one(i: int) -> None:
                try:
                    results.append(ClientResult(**stream(
                        url=url, token=token, seconds=seconds, steps_per_s=steps_per_s, keys=keys,
                        array_every=array_every, home=workdir / f"home-{i}", project=project)))
                except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
                    errors.append(exc)
            threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=seconds + 300)
            if errors:
                raise errors[0]
            assert len(results) == clients, "a load client did not finish in time"
    finally:
        done.set()
        q.join(timeout=60)
    wall = max(r.wall_s for r in results)
    lost = dup = stored = sent = 0
    arrays_stored = arrays_expected = 0
    with httpx.Client(headers=headers, timeout=60) as http:
        for r in results:
            for steps in fetch_steps(api, r.run_id, r.keys, client=http).values():
                l_, d_ = loss_and_duplicates(steps, range(r.steps))
                lost, dup, stored, sent = lost + l_, dup + d_, stored + len(steps), sent + r.steps
            arrays_expected += r.arrays
            arrays_stored += http.get(f"{api}/runs/{r.run_id}/arrays",
                                      params={"key": "sv.weight", "max_steps": 1}).json()["total"]
    lat = np.array([x for r in results for x in r.latencies_ms] or [0.0])
    qs = np.array(query_ms or [0.0])
    return LoadReport(
        clients=clients, duration_s=seconds, points_sent=sent, points_stored=stored, lost=lost, duplicated=dup,
        arrays_expected=arrays_expected, arrays_stored=arrays_stored,
        ingest_p50_ms=float(np.percentile(lat, 50)), ingest_p99_ms=float(np.percentile(lat, 99)),
        query_p50_ms=float(np.percentile(qs, 50)), query_p95_ms=float(np.percentile(qs, 95)), queries=len(query_ms),
        points_per_s=stored / wall if wall > 0 else 0.0,
        dropped_client_side=sum(r.dropped for r in results),
    )
