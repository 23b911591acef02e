"""What one real ``optiscope serve`` (SQLite, loopback) refuses or bounds (issue 16, sections 2 and 4):

* DNS rebinding: a foreign ``Host`` is a 400 before any route (API and dashboard); the bound address,
  the loopback names and ``OPTISCOPE_ALLOWED_HOSTS`` are answered; ``*`` turns the check off;
* NUL in any URL text is a 422 (``q=%00`` used to match every run on SQLite);
* slow clients: headers must arrive within ``OPTISCOPE_HEADER_TIMEOUT``, headers are capped at
  64 KiB (431), idle keep-alive connections are closed, past ``OPTISCOPE_LIMIT_CONCURRENCY``
  connections new requests get 503;
* a token in a query string never reaches the access log;
* ``GET /runs/{id}/arrays`` returns at most ``OPTISCOPE_MAX_ARRAY_READ_VALUES`` values per read (a
  422 naming the limit and a ``step_max`` to page with), streamed: 8 concurrent reads at the cap
  keep the server's RSS growth far below 500 MB;
* a 256 MiB gzip bomb under the default 32 MiB body limit is a 413 costing about the limit;
* ``OPTISCOPE_HOME`` is 0700 and the SQLite files, the local token and ``server.json`` are 0600.

Every loop is bounded in count and time; nothing binds anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient

from server.config import Settings
from server.main import create_app
from server.migrate import upgrade
from tests.conftest import REPO_ROOT
from tests.pg_cluster import free_port
from tests.reliability.harness import stop_process, wait_healthy

HEADER_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1
ALLOWED = "ci.example,Dash.Internal:8050"
SOURCES, LAYERS, STEPS, WIDTH = 3, 20, 100, 256  # 1.5 M array values: more than one read may return


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    home: Path
    port: int
    log: Path
    token: str

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def _serve(root: Path, **settings: str) -> Iterator[Served]:
    """A real ``optiscope serve`` on loopback (info log level, so the access log is on) with
    ``OPTISCOPE_<NAME>`` settings, started under the permissive umask 022."""
    home, port, log = root / "home", free_port(), root / "serve.log"
    env = {**os.environ, "OPTISCOPE_HOME": str(home), **{f"OPTISCOPE_{k.upper()}": v for k, v in settings.items()}}
    for name in ("OPTISCOPE_DATABASE_URL", "OPTISCOPE_TOKEN", "OPTISCOPE_MAX_ARRAY_READ_VALUES",
                 "OPTISCOPE_MAX_BODY_BYTES", "OPTISCOPE_LIMIT_CONCURRENCY"):
        if name.removeprefix("OPTISCOPE_").lower() not in settings:
            env.pop(name, None)
    old_umask = os.umask(0o022)  # the server must tighten its files by itself
    try:
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "probe.cli", "serve", "--host", "127.0.0.1", "--port",
                                     str(port), "--log-level", "info"], cwd=REPO_ROOT, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT)
    finally:
        os.umask(old_umask)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/v1", 90, proc)
        yield Served(proc, home, port, log, (home / "local-token").read_text().strip())
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with _serve(tmp_path_factory.mktemp("limits"), header_timeout=str(HEADER_TIMEOUT_S),
                keep_alive_timeout=str(KEEP_ALIVE_S), allowed_hosts=ALLOWED) as srv:
        yield srv


# -- Host check -------------------------------------------------------------------------------------


def test_foreign_host_is_400_on_api_and_dashboard_and_own_names_are_answered(served: Served) -> None:
    with httpx.Client(timeout=10) as http:
        for path in ("/api/v1/runs", "/api/v1/health", "/", "/_dash-layout"):
            for host in ("attacker.example", f"attacker.example:{served.port}", "127.0.0.1.attacker.example",
                         "localhost.attacker.example", "ci.example.attacker.example"):
                r = http.get(f"http://127.0.0.1:{served.port}{path}", headers={"Host": host})
                assert r.status_code == 400, (path, host, r.status_code)
                assert "OPTISCOPE_ALLOWED_HOSTS" in r.text
        r = http.post(f"{served.api}/runs", headers={**served.auth, "Host": "attacker.example"},
                      json={"project": "rebinding"})
        assert r.status_code == 400  # writes too, token or not
        for host in (f"127.0.0.1:{served.port}", "127.0.0.1", f"localhost:{served.port}", "LOCALHOST",
                     f"[::1]:{served.port}", "[::1]", "ci.example", f"CI.example:{served.port}", "dash.internal"):
            r = http.get(f"{served.api}/runs", headers={"Host": host})
            assert r.status_code == 200, (host, r.status_code, r.text[:200])
        assert http.get(f"{served.api}/runs", params={"project": "rebinding"}).json()["count"] == 0


def test_allowed_hosts_star_disables_the_check_and_a_wildcard_bind_answers_ip_literals(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'o.db'}"
    upgrade(db)
    cases = [(Settings(home=tmp_path, database_url=db, allowed_hosts="*"), "attacker.example", 200),
             (Settings(home=tmp_path, database_url=db, host="0.0.0.0", read_auth=False), "10.1.2.3:8000", 200),
             (Settings(home=tmp_path, database_url=db, host="0.0.0.0", read_auth=False), "attacker.example", 400),
             (Settings(home=tmp_path, database_url=db, host="192.0.2.7"), "192.0.2.7:8000", 200),
             (Settings(home=tmp_path, database_url=db, host="192.0.2.7"), "198.51.100.1", 400)]
    for settings, host, expected in cases:
        with TestClient(create_app(settings, mounts=False)) as client:
            r = client.get("/api/v1/health", headers={"Host": host})
            assert r.status_code == expected, (settings.host, settings.allowed_hosts, host, r.status_code)


# -- NUL --------------------------------------------------------------------------------------------


def test_nul_in_any_url_text_is_422_and_q_nul_matches_nothing(served: Served) -> None:
    project = "nul-" + uuid.uuid4().hex[:6]
    with httpx.Client(timeout=10, headers=served.auth) as http:
        for name in ("alpha", "beta"):
            assert http.post(f"{served.api}/runs", json={"project": project, "name": name}).status_code == 201
        base = f"http://127.0.0.1:{served.port}/api/v1"
        for url in (f"{base}/runs?q=%00", f"{base}/runs?q=al%00", f"{base}/runs?project=%00{project}",
                    f"{base}/runs?tag=%00", f"{base}/runs/abc%00def", f"{base}/series?run_id=x&key=%00"):
            r = http.get(url)
            assert r.status_code == 422, (url, r.status_code, r.text[:200])
            assert "NUL" in r.text
        assert http.get(f"{base}/runs", params={"project": project, "q": "al"}).json()["count"] == 1


# -- slow clients -----------------------------------------------------------------------------------


def _open_slow(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.setblocking(False)
        socks.append(s)
    return socks


def test_slowloris_connections_are_closed_after_the_header_deadline(served: Served) -> None:
    t0 = time.monotonic()
    socks = _open_slow(served.port, 50)
    closed_at: dict[int, float] = {}
    normal_ok = False
    try:
        while len(closed_at) < len(socks) and time.monotonic() - t0 < HEADER_TIMEOUT_S + 6:
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    s.send(b"X")  # one header byte at a time, never the end of the headers
                except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                    closed_at[i] = time.monotonic() - t0
                    continue
                readable, _, _ = select.select([s], [], [], 0)
                if readable:
                    try:
                        data = s.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        closed_at[i] = time.monotonic() - t0
            if not normal_ok and time.monotonic() - t0 > 0.5:
                normal_ok = httpx.get(f"{served.api}/health", timeout=5).status_code == 200
            time.sleep(0.25)
    finally:
        for s in socks:
            s.close()
    assert normal_ok, "a normal request must be answered while slow clients hold connections"
    assert len(closed_at) == len(socks), f"{len(socks) - len(closed_at)} slow connections still open"
    assert min(closed_at.values()) >= HEADER_TIMEOUT_S - 0.5  # closed by the deadline, not at once
    assert max(closed_at.values()) <= HEADER_TIMEOUT_S + 3
    assert httpx.get(f"{served.api}/health", timeout=5).status_code == 200


def _read_response(s: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length (headers and body may come in pieces)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(4096)
    return head + b"\r\n\r\n" + body


def test_oversized_headers_are_431_and_idle_keep_alive_is_closed(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        try:
            s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 70_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(4096) == b""  # the server hangs up the idle connection
        assert time.monotonic() - t0 < KEEP_ALIVE_S + 3


def test_past_limit_concurrency_new_requests_get_503_until_slow_clients_are_cut(tmp_path: Path) -> None:
    limit = 8
    with _serve(tmp_path, header_timeout=str(HEADER_TIMEOUT_S), limit_concurrency=str(limit)) as srv:
        socks = _open_slow(srv.port, limit + 4)
        try:
            time.sleep(0.3)
            r = httpx.get(f"{srv.api}/health", timeout=5)
            assert r.status_code == 503, r.text[:200]
            deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
            while time.monotonic() < deadline:  # the header deadline frees the slots
                r = httpx.get(f"{srv.api}/health", timeout=5)
                if r.status_code == 200:
                    break
                time.sleep(0.25)
            assert r.status_code == 200
        finally:
            for s in socks:
                s.close()


# -- access log -------------------------------------------------------------------------------------


def test_a_token_in_the_query_string_is_redacted_in_the_access_log(served: Served) -> None:
    marker = uuid.uuid4().hex
    with httpx.Client(timeout=10) as http:
        http.get(f"{served.api}/runs", params={"project": marker, "token": served.token})
        http.get(f"{served.api}/runs", params={"Authorization": f"Bearer {served.token}", "project": marker})
        http.get(f"{served.api}/runs?access_token={served.token}&project={marker}")
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = served.log.read_text(errors="replace")
        if text.count(marker) >= 3:
            break
        time.sleep(0.2)
    lines = [ln for ln in text.splitlines() if marker in ln]
    assert len(lines) >= 3, text[-2000:]  # the access log is on: the check means something
    assert all("[redacted]" in ln for ln in lines), lines
    assert served.token not in text and served.token[8:] not in text


# -- array reads: capped and streamed ---------------------------------------------------------------


@pytest.fixture(scope="module")
def spectra_run(served: Served) -> str:
    rid = uuid.uuid4().hex
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=120, headers=served.auth) as http:
        assert http.post(f"{served.api}/runs", json={"id": rid, "project": "spectra"}).status_code == 201
        for lo in range(0, STEPS, 10):
            arrays = [{"key": f"sv.src{s}", "layer": f"layer{layer}", "step": step,
                       "values": rng.standard_normal(WIDTH).round(6).tolist()}
                      for step in range(lo, lo + 10) for s in range(SOURCES) for layer in range(LAYERS)]
            r = http.post(f"{served.api}/runs/{rid}/batches", json={"arrays": arrays})
            assert r.status_code == 200, r.text[:300]
    return rid


def test_an_array_read_over_the_cap_is_422_naming_the_limit_and_paging_by_step_returns_everything(
        served: Served, spectra_run: str) -> None:
    url = f"{served.api}/runs/{spectra_run}/arrays"
    per_step = SOURCES * LAYERS * WIDTH
    with httpx.Client(timeout=120) as http:
        r = http.get(url, params={"max_steps": 10_000})
        assert r.status_code == 422, r.text[:300]
        (d,) = r.json()["detail"]
        assert d["loc"] == ["query", "max_values"] and d["limit"] == 1_000_000
        assert d["values"] == STEPS * per_step and "step_max" in d["msg"] and "1000000" in d["msg"]
        fits = d["step_max_that_fits"]
        assert fits == 1_000_000 // per_step - 1
        assert http.get(url, params={"max_values": 10**9}).status_code == 422  # not above the server's cap
        seen: list[tuple[str, str, int]] = []
        lo, pages = 0, 0
        while lo < STEPS and pages < 10:
            hi = lo + fits
            r = http.get(url, params={"step_min": lo, "step_max": hi, "max_steps": 10_000})
            assert r.status_code == 200, r.text[:300]
            assert "content-length" not in r.headers  # streamed
            body = r.json()
            assert body["damaged"] == 0 and body["values"] <= 1_000_000
            seen += [(rec["key"], rec["layer"], rec["step"]) for rec in body["records"]]
            assert all(len(rec["values"]) == WIDTH for rec in body["records"])
            lo, pages = hi + 1, pages + 1
        assert len(seen) == len(set(seen)) == SOURCES * LAYERS * STEPS
        small = http.get(url, params={"max_values": 1000, "key": "sv.src0", "layer": "layer3", "max_steps": 3})
        assert small.status_code == 200 and [x["step"] for x in small.json()["records"]] == [0, 50, 99]


def _rss_sampler(pid: int, stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        out.append(proc.memory_info().rss)
        stop.wait(0.02)


def test_eight_concurrent_worst_case_array_reads_keep_server_rss_growth_under_500_mb(
        served: Served, spectra_run: str) -> None:
    url = f"{served.api}/runs/{spectra_run}/arrays"
    fits = 1_000_000 // (SOURCES * LAYERS * WIDTH) - 1
    params = {"step_min": 0, "step_max": fits, "max_steps": 10_000}  # the most one read may return
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(served.process.pid, stop, samples), daemon=True)
    before = psutil.Process(served.process.pid).memory_info().rss
    sampler.start()
    results: list[tuple[int, int, int]] = []

    def read() -> None:
        with httpx.Client(timeout=300) as http:
            r = http.get(url, params=params)
            body = r.json() if r.status_code == 200 else {}
            results.append((r.status_code, len(body.get("records", [])), len(r.content)))

    threads = [threading.Thread(target=read) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.monotonic() - t0
    stop.set()
    sampler.join(timeout=5)
    growth_mb = (max(samples) - before) / 1e6
    sizes = {n for _, _, n in results}
    print(f"\n8 concurrent array reads of {SOURCES * LAYERS * (fits + 1) * WIDTH:,} values "
          f"({max(sizes) / 1e6:.1f} MB each): {wall:.1f} s, server RSS {before / 1e6:.0f} MB -> peak "
          f"{max(samples) / 1e6:.0f} MB (+{growth_mb:.0f} MB)")
    assert [(s, n) for s, n, _ in results] == [(200, SOURCES * LAYERS * (fits + 1))] * 8
    assert growth_mb < 500


# -- gzip bomb at the default body limit ------------------------------------------------------------


def test_gzip_bomb_under_the_default_body_limit_costs_about_the_limit(served: Served) -> None:
    limit = Settings().max_body_bytes
    rid = uuid.uuid4().hex
    assert httpx.post(f"{served.api}/runs", headers=served.auth, json={"id": rid, "project": "bomb"}).status_code == 201
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    block = b"0" * (1 << 20)
    bomb = b"".join([comp.compress(b'{"scalars": [{"key": "x", "steps": [1], "values": [1.0], "pad": "')]
                    + [comp.compress(block) for _ in range(256)] + [comp.flush()])
    proc = psutil.Process(served.process.pid)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(served.process.pid, stop, samples), daemon=True)
    before = proc.memory_info().rss
    sampler.start()
    r = httpx.post(f"{served.api}/runs/{rid}/batches", content=bomb, timeout=60,
                   headers={**served.auth, "Content-Encoding": "gzip", "Content-Type": "application/json"})
    stop.set()
    sampler.join(timeout=5)
    assert r.status_code == 413, r.text[:200]
    grown_mib = (max(samples) - before) / 2**20
    print(f"\ngzip bomb (256 MiB inflated, {len(bomb) / 1e6:.2f} MB sent, body limit {limit / 2**20:.0f} MiB): "
          f"413, server RSS +{grown_mib:.1f} MiB")
    assert grown_mib < limit / 2**20 + 8
    assert httpx.get(f"{served.api}/runs/{rid}/keys").json()["scalars"] == []


# -- file modes -------------------------------------------------------------------------------------


def test_optiscope_home_is_0700_and_its_files_0600(served: Served) -> None:
    assert stat.S_IMODE(served.home.stat().st_mode) == 0o700
    files = [p for p in served.home.iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"optiscope.db", "local-token", "server.json"} <= names, names
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p.name, oct(p.stat().st_mode))
