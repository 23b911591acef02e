"""``mount`` and the ``optiscope dashboard`` sub-command, without the server package: a bare FastAPI
app stands in for ``server.main.create_app`` (API routes and the /api 404 catch-all come first)."""

from __future__ import annotations

import argparse

import pytest

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from dashboard.app import mount
from dashboard.cli import register


def test_mount_serves_dash_at_root_and_leaves_api_paths_alone() -> None:
    app = FastAPI()

    @app.get("/api/v1/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.api_route("/api/{path:path}", methods=["GET", "POST"])
    def api_404(path: str) -> JSONResponse:
        return JSONResponse({"detail": f"no such API endpoint: /api/{path}"}, status_code=404)

    mount(app, api_url="http://127.0.0.1:9/api/v1", bind_host="127.0.0.1")
    client = TestClient(app)
    assert client.get("/api/v1/health").json() == {"status": "ok"}
    missing = client.get("/api/v1/nope")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/json")
    index = client.get("/runs/anything?tab=spectra")
    assert index.status_code == 200 and "<title>Optiscope</title>" in index.text
    assert client.get("/_dash-layout").status_code == 200
    deps = client.get("/_dash-dependencies").json()
    assert any("run-scalar-graph" in str(d["output"]) for d in deps)


def test_dashboard_subcommand_is_registered() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dashboard", "--api", "http://example:8000", "--port", "9000"])
    assert (args.api, args.port, args.host) == ("http://example:8000", 9000, "127.0.0.1")
    assert callable(args.func)


def test_dashboard_subcommand_takes_no_token() -> None:
    """The standalone dashboard acts for whoever signs in; it has no token of its own to be given."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["dashboard", "--token", "osk_anything"])
