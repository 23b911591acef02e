"""Security: who may write, how tokens are kept, who may read, what the dashboard renders, and
what ends up in logs.

How "loopback" is decided (server/config.py::is_loopback): ``ipaddress.ip_address(host).is_loopback``
or the names localhost/ip6-localhost, so 127.0.0.2 *is* loopback and no address on this machine
that we may bind is non-loopback. The read policy is therefore tested at the settings level
(``Settings(host=...)`` behind a TestClient), which is exactly what ``optiscope serve --host``
feeds into the app.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import probe
from probe.client.config import ClientConfig
from server.auth import create_token, revoke_token
from server.config import Settings, is_loopback
from server.main import create_app
from server.migrate import upgrade
from server.models import ApiToken
from tests.conftest import REPO_ROOT
from tests.pg_cluster import free_port
from tests.reliability.conftest import InProc
from tests.reliability.harness import stop_process, wait_healthy

API = "/api/v1"


# -- writes -----------------------------------------------------------------------------------------


def _write_requests(run_id: str, export: bytes, project: str) -> list[tuple[str, str, dict | bytes | None]]:
    """Every write endpoint with a valid body, so only the credentials can make it fail."""
    return [
        ("POST", "/runs", {"id": uuid.uuid4().hex, "project": project}),
        ("PATCH", f"/runs/{run_id}", {"name": "renamed", "status": "finished"}),
        ("POST", f"/runs/{run_id}/heartbeat", None),
        ("POST", f"/runs/{run_id}/finish", {"status": "crashed"}),
        ("POST", f"/runs/{run_id}/batches", {"batch_id": "x", "scalars": [{"key": "evil", "steps": [1], "values": [1]}]}),
        ("POST", "/runs/import", export),
        ("DELETE", f"/runs/{run_id}", None),
    ]


def test_every_write_is_refused_without_token_with_bad_or_revoked_token_and_across_projects(inproc: InProc) -> None:
    """401 without a token, with garbage, with a wrong scheme and with a revoked token; 403 with a
    token scoped to another project; and the run is exactly as it was afterwards."""
    project = "sec-" + uuid.uuid4().hex[:8]  # the PostgreSQL database is shared by the session
    run = inproc.create_run(project=project, name="original")
    rid = run["id"]
    export = inproc.client.get(f"{API}/runs/{rid}/export").content
    revoked_id, revoked = inproc.new_token()
    session = inproc.app.state.sessionmaker()
    try:
        assert revoke_token(session=session, token_id=revoked_id)
    finally:
        session.close()
    _, foreign = inproc.new_token(project=project + "-other")
    credentials = {
        "none": ({}, 401),
        "garbage": ({"Authorization": "Bearer osk_not-a-token"}, 401),
        "basic scheme": ({"Authorization": f"Basic {inproc.token}"}, 401),
        "revoked": ({"Authorization": f"Bearer {revoked}"}, 401),
        "other project": ({"Authorization": f"Bearer {foreign}"}, 403),
    }
    tried = 0
    for label, (headers, expected) in credentials.items():
        for method, path, body in _write_requests(rid, export, project):
            content = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
            r = inproc.client.request(method, API + path, content=content,
                                      headers={**headers, "Content-Type": "application/json"})
            tried += 1
            assert r.status_code == expected, f"{label}: {method} {path} -> {r.status_code} {r.text[:200]}"
            assert "detail" in r.json()
            if expected == 401:
                assert r.headers.get("www-authenticate") == "Bearer"
    after = inproc.client.get(f"{API}/runs/{rid}").json()
    assert (after["name"], after["status"], after["summary"]) == ("original", "running", {})
    assert inproc.client.get(f"{API}/runs/{rid}/keys").json()["scalars"] == []
    assert inproc.client.get(f"{API}/runs", params={"project": project}).json()["count"] == 1
    print(f"\n{tried} refused writes on {inproc.engine}")


def test_tokens_are_stored_only_as_sha256_hashes(inproc: InProc) -> None:
    """No column of the token table holds the plaintext; the stored hash is its sha256; on SQLite
    not even the raw database file (and its WAL) contains the secret's bytes."""
    _, plain = inproc.new_token(project="p")
    _, plain2 = inproc.new_token()
    session = inproc.app.state.sessionmaker()
    try:
        rows = session.scalars(select(ApiToken)).all()
    finally:
        session.close()
    hashes = {r.token_hash for r in rows}
    for secret in (plain, plain2, inproc.token):
        assert hashlib.sha256(secret.encode()).hexdigest() in hashes
        for row in rows:
            for column in ApiToken.__table__.columns:
                value = getattr(row, column.key)
                assert secret not in str(value), f"plaintext token found in api_tokens.{column.key}"
                assert secret[10:30] not in str(value)  # only the display prefix may be kept
    if inproc.engine == "sqlite":
        db_path = Path(inproc.db_url.removeprefix("sqlite:///"))
        blob = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
        for secret in (plain, plain2, inproc.token):
            assert secret.encode() not in blob and secret[10:].encode() not in blob


# -- reads ------------------------------------------------------------------------------------------


LOOPBACK = ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"]
NOT_LOOPBACK = ["0.0.0.0", "::", "192.0.2.10", "10.1.2.3", "2001:db8::1", "example.org", "127.0.0.1.example.org"]


@pytest.fixture(scope="module")
def read_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str, str]]:
    """One SQLite database with a run holding data, a valid token and a revoked one."""
    home = tmp_path_factory.mktemp("reads")
    upgrade(f"sqlite:///{home / 'optiscope.db'}")
    app = create_app(Settings(home=home, reaper_interval=0), mounts=False)
    with TestClient(app) as client:
        session = app.state.sessionmaker()
        try:
            token = create_token(session=session, name="reader")[1]
            row, revoked = create_token(session=session, name="revoked")
            revoke_token(session=session, token_id=row.id)
        finally:
            session.close()
        h = {"Authorization": f"Bearer {token}"}
        rid = client.post(f"{API}/runs", headers=h, json={"project": "p"}).json()["id"]
        client.post(f"{API}/runs/{rid}/batches", headers=h, json={
            "scalars": [{"key": "loss", "steps": [1, 2], "values": [2.0, 1.0]}],
            "arrays": [{"key": "sv.weight", "step": 1, "values": [1.0]}], "events": [{"key": "k"}]})
    yield home, rid, token, revoked


def _read_paths(rid: str) -> list[tuple[str, dict]]:
    return [("/runs", {}), (f"/runs/{rid}", {}), (f"/runs/{rid}/keys", {}), (f"/runs/{rid}/latest", {}),
            (f"/runs/{rid}/arrays", {}), (f"/runs/{rid}/events", {}), (f"/runs/{rid}/export", {}),
            ("/series", {"run_id": rid, "key": "loss"}),
            ("/time-to-target", {"run_id": rid, "key": "loss", "target": 1.5})]


@pytest.mark.parametrize("host", LOOPBACK + NOT_LOOPBACK)
def test_read_policy_follows_the_bind_host(read_db: tuple[Path, str, str, str], host: str) -> None:
    """Bound to loopback, every read endpoint is open; bound anywhere else every one of them
    needs a valid token (revoked ones refused); /health is always open."""
    home, rid, token, revoked = read_db
    settings = Settings(home=home, host=host, reaper_interval=0)
    assert settings.reads_need_token is (host in NOT_LOOPBACK) is (not is_loopback(host))
    with TestClient(create_app(settings, mounts=False)) as client:
        assert client.get(f"{API}/health").status_code == 200
        for path, params in _read_paths(rid):
            anonymous = client.get(API + path, params=params).status_code
            with_revoked = client.get(API + path, params=params, headers={"Authorization": f"Bearer {revoked}"})
            valid = client.get(API + path, params=params, headers={"Authorization": f"Bearer {token}"}).status_code
            assert valid == 200, (host, path)
            if host in NOT_LOOPBACK:
                assert (anonymous, with_revoked.status_code) == (401, 401), (host, path)
            else:
                assert anonymous == 200, (host, path)


def test_forced_read_auth_on_loopback_and_forced_open_elsewhere(read_db: tuple[Path, str, str, str]) -> None:
    home, rid, token, _ = read_db
    for host, read_auth, expected in (("127.0.0.1", True, 401), ("0.0.0.0", False, 200)):
        with TestClient(create_app(Settings(home=home, host=host, read_auth=read_auth, reaper_interval=0),
                                   mounts=False)) as client:
            assert client.get(f"{API}/runs/{rid}").status_code == expected


# -- secrets never reach logs ---------------------------------------------------------------------


def _serve_debug(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPTISCOPE_HOME": str(home)}
    env.pop("OPTISCOPE_DATABASE_URL", None)
    env.pop("OPTISCOPE_TOKEN", None)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "probe.cli", "serve", "--host", "127.0.0.1", "--port",
                                 str(port), "--log-level", "debug"], cwd=REPO_ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_no_token_ever_appears_in_server_or_client_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A debug-level ``optiscope serve`` sees valid, invalid and revoked tokens on writes and reads,
    and a probe with a wrong token warns about the refusal: the plaintext of no token appears in
    the server's output, the CLI's token listing or the probe's warnings."""
    from probe.cli import main as optiscope_main

    home, port, log = tmp_path / "home", free_port(), tmp_path / "serve.log"
    home.mkdir()
    monkeypatch.setenv("OPTISCOPE_HOME", str(home))
    monkeypatch.delenv("OPTISCOPE_DATABASE_URL", raising=False)
    assert optiscope_main(["token", "create", "--name", "ci", "--project", "p"]) == 0
    scoped = capsys.readouterr().out.strip().splitlines()[-1]
    assert optiscope_main(["token", "create", "--name", "doomed"]) == 0
    made = capsys.readouterr()
    revoked = made.out.strip().splitlines()[-1]
    token_id = re.search(r"token id (\d+)", made.err).group(1)  # type: ignore[union-attr]
    proc = _serve_debug(home, port, log)
    try:
        api = f"http://127.0.0.1:{port}{API}"
        wait_healthy(api, 90, proc)  # type: ignore[arg-type]
        local = (home / "local-token").read_text().strip()
        bogus = "osk_" + "Z" * 43
        secrets = {"local": local, "scoped": scoped, "revoked": revoked, "bogus": bogus}
        assert optiscope_main(["token", "revoke", token_id]) == 0
        assert optiscope_main(["token", "list"]) == 0
        listing = capsys.readouterr().out
        assert "doomed" in listing and "revoked" in listing
        statuses = []
        with httpx.Client(timeout=30) as http:
            for secret in secrets.values():
                h = {"Authorization": f"Bearer {secret}"}
                r = http.post(api + "/runs", headers=h, json={"project": "p"})
                statuses.append(r.status_code)
                rid = r.json().get("id", "nope")
                statuses.append(http.post(f"{api}/runs/{rid}/batches", headers=h, json={"scalars": []}).status_code)
                statuses.append(http.get(f"{api}/runs/{rid}", headers=h).status_code)
        assert 200 in statuses and 201 in statuses and 401 in statuses  # valid and refused tokens both seen
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            settings = ClientConfig(url=f"http://127.0.0.1:{port}", token=bogus, home=tmp_path / "client",
                                    flush_interval=0.02, timeout=2.0, finish_timeout=5.0)
            run = probe.init("p", settings=settings)
            run.log({"loss": 1.0}, step=0)
            run.flush(timeout=2.0)
            run.finish()
        client_text = "\n".join(str(w.message) for w in caught)
        assert "401" in client_text  # the refusal was reported...
    finally:
        stop_process(proc)
    server_text = log.read_text(errors="replace")
    assert "POST /api/v1/runs" in server_text  # debug logging really was on: the check means something
    for name, secret in secrets.items():
        for where, text in (("server log", server_text), ("token list", listing), ("probe warnings", client_text)):
            assert secret not in text and secret[10:] not in text, f"{name} token leaked into the {where}"


# -- the dashboard renders user strings as text ------------------------------------------------------


PAYLOAD = '<img src=x onerror="alert(document.domain)">'


@pytest.mark.browser
@pytest.mark.slow
def test_dashboard_renders_hostile_tags_config_and_alert_text_as_text(tmp_path: Path, browser) -> None:  # noqa: ANN001
    """tests/dashboard already proves a ``<script>`` run *name* is inert; this covers the other
    user strings the dashboard shows: tags (runs table), config keys and values (Config tab) and
    alert messages (Alerts tab). Each must appear literally, create no element, run no script."""
    from tests.reliability.harness import unstarted_sqlite_server

    srv = unstarted_sqlite_server(tmp_path)
    try:
        srv.start(timeout=120)
        rid = uuid.uuid4().hex
        h = srv.headers
        assert httpx.post(srv.api + "/runs", headers=h, json={
            "id": rid, "project": "xss", "name": "hostile-strings", "tags": [PAYLOAD],
            "config": {PAYLOAD: PAYLOAD, "model": {"width": "</td><script>alert(2)</script>"}}}).status_code == 201
        assert httpx.post(f"{srv.api}/runs/{rid}/batches", headers=h, json={
            "scalars": [{"key": "loss", "steps": [1, 2], "values": [2.0, 1.0]}],
            "events": [{"key": "nonfinite", "layer": "fc1.weight", "step": 2, "message": PAYLOAD}]}).status_code == 200
        context = browser.new_context()
        try:
            page = context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            injected = "document.querySelectorAll('img[src=\"x\"], img[onerror]').length"
            page.goto(srv.url + "/")
            page.get_by_text(PAYLOAD).first.wait_for(timeout=30_000)  # the tag, as text
            assert page.evaluate(injected) == 0
            page.goto(srv.url + f"/runs/{rid}?tab=config")
            page.locator("#run-config-table", has_text=PAYLOAD).wait_for(timeout=30_000)
            assert "</td><script>alert(2)</script>" in page.locator("#run-config-table").inner_text()
            page.goto(srv.url + f"/runs/{rid}?tab=alerts")
            page.locator("#run-alerts-table", has_text=PAYLOAD).wait_for(timeout=30_000)
            assert page.evaluate(injected) == 0
            assert not page.evaluate(
                "Array.from(document.querySelectorAll('script')).some(s => s.textContent.includes('alert('))")
            assert dialogs == []
        finally:
            context.close()
    finally:
        srv.stop(signal.SIGKILL)
