"""``optiscope runs | runs show | runs delete`` and HTTP ``export``/``import`` against a real server."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from probe.cli import build_parser, main
from tests.conftest import REPO_ROOT, LiveServer
from tests.pg_cluster import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp_path_factory.mktemp("runs-cli")))
    server = LiveServer(port=free_port(), home=home, db_url=None, env={"OPTISCOPE_READ_AUTH": "true"}).start()
    try:
        yield server
    finally:
        server.stop()


def _create(server: LiveServer, run_id: str, name: str, project: str, tags: list[str], config: dict) -> None:
    with httpx.Client(base_url=server.api, headers=server.headers) as http:
        assert http.post("/runs", json={"id": run_id, "name": name, "project": project, "tags": tags,
                                        "config": config}).status_code == 201
        batch = {"batch_id": f"{run_id}-b", "scalars": [{"key": "loss", "steps": [0, 1, 2],
                                                         "values": [3.0, 2.0, 1.5]}]}
        assert http.post(f"/runs/{run_id}/batches", json=batch).status_code == 200


@pytest.fixture
def cli(served: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LiveServer:
    """Runs r-a, r-b (both named 'adamw'), r-c; URL from the flag, token from OPTISCOPE_TOKEN."""
    monkeypatch.setenv("OPTISCOPE_TOKEN", served.token)
    monkeypatch.setenv("OPTISCOPE_HOME", str(tmp_path / "client-home"))
    with httpx.Client(base_url=served.api, headers=served.headers) as http:
        for run in http.get("/runs", params={"limit": 1000}).json()["data"]:
            http.delete(f"/runs/{run['id']}")
    _create(served, "r-a", "adamw", "cifar", ["baseline"], {"lr": 0.001, "opt": {"name": "adamw"}})
    _create(served, "r-b", "adamw", "cifar", ["baseline", "seed1"], {"lr": 0.003, "opt": {"name": "adamw"}})
    _create(served, "r-c", "normuon-lr0.02", "gpt", ["new"], {"lr": 0.02, "opt": {"name": "normuon"}})
    return served


def _ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.strip().splitlines()[1:]]


def test_list_shows_ids_and_filters(cli: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--url", cli.url]
    assert main(["runs", *url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ID", "NAME", "PROJECT", "STATUS", "LAST_STEP", "CREATED", "TAGS"]
    assert sorted(_ids(out)) == ["r-a", "r-b", "r-c"]
    cases = {("--project", "gpt"): ["r-c"], ("--tag", "seed1"): ["r-b"], ("--name", "ADAM"): ["r-a", "r-b"],
             ("--config", "opt.name=normuon"): ["r-c"], ("--config", "lr=0.003"): ["r-b"],
             ("--status", "running"): ["r-a", "r-b", "r-c"], ("--status", "finished"): []}
    for flags, expected in cases.items():
        assert main(["runs", "list", *url, *flags]) == 0
        assert sorted(_ids(capsys.readouterr().out)) == expected, flags
    assert main(["runs", *url, "--json", "--project", "gpt"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["lr"] == 0.02


def test_show_by_name_and_id(cli: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--url", cli.url, "show", "normuon-lr0.02"]) == 0
    out = capsys.readouterr().out
    assert "id:           r-c" in out and "opt.name = normuon" in out and "loss = 1.5" in out
    assert "loss  3 points, steps 0..2" in out
    assert main(["runs", "show", "r-a", "--url", cli.url]) == 0
    assert "lr = 0.001" in capsys.readouterr().out


def test_bad_input_is_one_line_and_nonzero(cli: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--url", cli.url]
    assert main(["runs", "show", "adamw", *url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 runs are named 'adamw'" in err and "r-a" in err and "r-b" in err
    assert main(["runs", "show", "nope", *url]) == 1
    assert "no run named or with id 'nope'" in capsys.readouterr().err
    assert main(["runs", *url, "--token", "osk_wrong"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "401" in err
    assert main(["runs", *url, "--config", "lr"]) == 1
    assert "--config expects KEY=VALUE" in capsys.readouterr().err


def test_server_down_is_one_line_without_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "OPTISCOPE_HOME": str(tmp_path)}
    for argv in (["runs"], ["runs", "show", "x"], ["export", "x", "-o", str(tmp_path / "x.ndjson")]):
        proc = subprocess.run([sys.executable, "-m", "probe.cli", *argv, "--url", f"http://127.0.0.1:{free_port()}"],
                              capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
        assert proc.returncode == 1, argv
        assert proc.stderr.count("\n") == 1 and "cannot reach the Optiscope server" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_delete_needs_yes_and_removes_only_the_named_run(cli: LiveServer, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - not a terminal
    assert main(["runs", "delete", "r-c", "--url", cli.url]) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert main(["runs", "delete", "adamw", "--url", cli.url, "--yes"]) == 1  # ambiguous: nothing deleted
    capsys.readouterr()
    assert main(["runs", "delete", "normuon-lr0.02", "r-a", "--url", cli.url, "--yes"]) == 0
    assert "deleted run r-c" in capsys.readouterr().out
    assert main(["runs", "--url", cli.url]) == 0
    assert _ids(capsys.readouterr().out) == ["r-b"]


def test_export_and_import_over_http_by_name(cli: LiveServer, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    out = tmp_path / "run.ndjson.gz"
    assert main(["export", "normuon-lr0.02", "-o", str(out), "--url", cli.url]) == 0
    with httpx.Client(base_url=cli.api, headers=cli.headers) as http:
        original = http.get("/runs/r-c/export").content
        assert gzip.decompress(out.read_bytes()) == original
        assert http.delete("/runs/r-c").status_code == 204
    capsys.readouterr()
    assert main(["import", str(out), "--url", cli.url]) == 0
    assert "imported run r-c (normuon-lr0.02)" in capsys.readouterr().out
    with httpx.Client(base_url=cli.api, headers=cli.headers) as http:
        assert http.get("/runs/r-c/export").content == original
    assert main(["import", str(out), "--url", cli.url]) == 1  # already there: one line, exit 1
    assert "exists" in capsys.readouterr().err
    assert main(["export", "adamw", "-o", str(out), "--url", cli.url]) == 1
    assert "2 runs are named" in capsys.readouterr().err


def test_export_from_a_database_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    from server.config import Settings
    from server.main import create_app

    monkeypatch.setenv("OPTISCOPE_HOME", str(tmp_path))
    monkeypatch.delenv("OPTISCOPE_DATABASE_URL", raising=False)
    assert main(["token", "create"]) == 0
    token = capsys.readouterr().out.strip()
    with TestClient(create_app(Settings(home=tmp_path, reaper_interval=0), mounts=False)) as client:
        h = {"Authorization": f"Bearer {token}"}
        for rid in ("d1", "d2"):
            client.post("/api/v1/runs", headers=h, json={"id": rid, "name": f"name-{rid}"})
        original = client.get("/api/v1/runs/d2/export").content
    assert main(["export", "name-d2", "-o", str(tmp_path / "d2.ndjson")]) == 0
    assert (tmp_path / "d2.ndjson").read_bytes() == original
    assert main(["export", "name-none", "-o", str(tmp_path / "x.ndjson")]) == 1
    assert "no run named or with id 'name-none'" in capsys.readouterr().err
    assert main(["token", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split("\t") == ["ID", "PREFIX", "NAME", "PROJECT", "CREATED",
                                                                   "STATE"]


def _every_action(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice
            for name, sub in action.choices.items():
                yield from _every_action(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_subcommand_and_flag_has_help() -> None:
    parser = build_parser()
    actions = list(_every_action(parser, "optiscope"))
    commands = {path.split()[1] for path, _ in actions if len(path.split()) > 1}
    assert {"serve", "demo", "dashboard", "db", "token", "sync", "runs", "export", "import"} <= commands
    missing = [f"{path}: {action.dest}" for path, action in actions if not action.help]
    assert missing == []
