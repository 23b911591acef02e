"""The real ``optiscope serve`` over sockets, and the CLI commands (run in-process)."""

from __future__ import annotations

import gzip
import json
import signal
import stat

import httpx
import orjson
import pytest

from probe.cli import main as cli_main
from tests.server.conftest import uid


def test_serve_loopback_writes_local_token_and_server_json(live_server) -> None:  # noqa: ANN001
    srv = live_server()
    token_file = srv.home / "local-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert json.loads((srv.home / "server.json").read_text()) == {"url": srv.url}
    assert srv.token == token_file.read_text().strip()

    run_id = uid()
    r = httpx.post(srv.api + "/runs", json={"id": run_id, "project": "p"}, headers=srv.headers)
    assert r.status_code == 201
    body = gzip.compress(orjson.dumps({"batch_id": "1", "scalars": [
        {"key": "loss", "steps": [1, 2], "times": [1.0, 2.0], "values": ["NaN", 0.5]}]}))
    r = httpx.post(f"{srv.api}/runs/{run_id}/batches", content=body,
                   headers={**srv.headers, "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["scalars"] == 2
    assert httpx.post(f"{srv.api}/runs/{run_id}/batches", content=body,
                      headers={"Content-Encoding": "gzip"}).status_code == 401
    assert httpx.get(srv.api + "/nope").status_code == 404

    assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    srv.start()  # same port, same data, same local token
    assert (srv.home / "local-token").read_text().strip() == srv.token
    s = httpx.get(srv.api + "/series", params={"run_id": run_id, "key": "loss"}).json()["series"][0]
    assert s["y"] == ["NaN", 0.5]


@pytest.mark.pg
def test_serve_on_postgresql(live_server, pg_cluster) -> None:  # noqa: ANN001
    srv = live_server(db_url=pg_cluster.create_database("live_" + uid()[:8]))
    assert httpx.get(srv.api + "/health").json()["database"] == "postgresql"
    assert not (srv.home / "local-token").exists()  # no local token outside the embedded default
    run_id = uid()
    assert httpx.post(srv.api + "/runs", json={"id": run_id, "project": "p"}, headers=srv.headers).status_code == 201
    r = httpx.post(f"{srv.api}/runs/{run_id}/batches", headers=srv.headers,
                   json={"scalars": [{"key": "x", "steps": [1], "times": [1.0], "values": ["-Infinity"]}]})
    assert r.status_code == 200
    assert httpx.get(f"{srv.api}/runs/{run_id}/latest").json()["x"]["value"] == "-Infinity"


def test_cli_db_token_export_import(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("OPTISCOPE_HOME", str(tmp_path))
    monkeypatch.delenv("OPTISCOPE_DATABASE_URL", raising=False)
    assert cli_main(["db", "upgrade"]) == 0
    assert cli_main(["token", "create", "--project", "p", "--name", "ci"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("osk_")
    assert cli_main(["token", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and "active" in listing and token not in listing

    from fastapi.testclient import TestClient

    from server.config import Settings
    from server.main import create_app

    with TestClient(create_app(Settings(home=tmp_path, reaper_interval=0), mounts=False)) as client:
        h = {"Authorization": f"Bearer {token}"}
        assert client.post("/api/v1/runs", json={"id": "r1", "project": "p"}, headers=h).status_code == 201
        client.post("/api/v1/runs/r1/batches", headers=h,
                    json={"scalars": [{"key": "loss", "steps": [1, 2], "times": [0, 1], "values": [1, "NaN"]}]})
        original = client.get("/api/v1/runs/r1/export").content

    out = tmp_path / "r1.ndjson.gz"
    assert cli_main(["export", "r1", "-o", str(out)]) == 0
    assert gzip.decompress(out.read_bytes()) == original
    assert cli_main(["import", str(out)]) == 1  # exists already
    assert "exists" in capsys.readouterr().err
    assert cli_main(["token", "revoke", "1"]) == 0
    assert cli_main(["token", "revoke", "99"]) == 1
    with TestClient(create_app(Settings(home=tmp_path, reaper_interval=0), mounts=False)) as client:
        assert client.delete("/api/v1/runs/r1", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_cli_token_create_from_env_registers_the_given_secret_once(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """Deployments (docker compose) choose the token up front; registering it twice is harmless."""
    monkeypatch.setenv("OPTISCOPE_HOME", str(tmp_path))
    monkeypatch.delenv("OPTISCOPE_DATABASE_URL", raising=False)
    secret = "osk_" + "a" * 40
    monkeypatch.setenv("OPTISCOPE_TOKEN", secret)
    assert cli_main(["token", "create", "--from-env", "--name", "compose"]) == 0
    assert cli_main(["token", "create", "--from-env", "--name", "compose"]) == 0
    out = capsys.readouterr()
    assert secret not in out.out and secret not in out.err, "a given secret is never echoed"
    assert cli_main(["token", "list"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "\tcompose\t" in line]
    assert len(rows) == 1, rows

    from fastapi.testclient import TestClient

    from server.config import Settings
    from server.main import create_app

    with TestClient(create_app(Settings(home=tmp_path, reaper_interval=0), mounts=False)) as client:
        h = {"Authorization": f"Bearer {secret}"}
        assert client.post("/api/v1/runs", json={"id": "r1", "project": "p"}, headers=h).status_code == 201

    monkeypatch.setenv("OPTISCOPE_TOKEN", "short")
    assert cli_main(["token", "create", "--from-env"]) == 2
    assert "at least 24 characters" in capsys.readouterr().err
