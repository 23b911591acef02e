"""docker-compose.yml: its structure, and the very commands its containers run, against a real PostgreSQL.

Docker is not available where the suite runs, so the file is parsed (services, healthchecks, volumes,
environment, one image) and then each Optiscope container's ``command`` — and its healthcheck — is run as
a subprocess with the container's environment, compose-interpolated, with only what cannot exist outside
compose replaced: the ``db`` host becomes the test cluster, and published ports become free ones.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OPTISCOPE_SERVICES = ("migrate", "server", "dashboard")
TOKEN_SERVICES = ("migrate", "server")  # the dashboard has none: people sign in with theirs
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution (``$$`` is a literal ``$``)."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        if op in (":-", "-"):
            return current if current else (arg or "")
        if op in (":?", "?"):
            if not current:
                raise KeyError(f"{name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(substitute, value).replace("$$", "$")


def _service_env(service: Mapping[str, Any], outer: Mapping[str, str]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: _interpolate(str(v), outer) for k, v in raw.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_port(command: list[str], port: int) -> list[str]:
    out = list(command)
    out[out.index("--port") + 1] = str(port)
    return out


def _healthcheck_argv(service: Mapping[str, Any], port: int, container_port: int) -> list[str]:
    test = list(service["healthcheck"]["test"])
    assert test[0] == "CMD", "Optiscope healthchecks run a command directly (no shell needed in the image)"
    return [a.replace(f":{container_port}/", f":{port}/") for a in test[1:]]


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            answer = httpx.get(url, timeout=2.0)
            if answer.status_code < 500:
                return answer
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


# --------------------------------------------------------------------------------------------------
# structure


def test_compose_has_db_migrate_server_dashboard_from_one_image() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) >= {"db", *OPTISCOPE_SERVICES}
    builds = {(services[s]["image"], services[s]["build"]["dockerfile"]) for s in OPTISCOPE_SERVICES}
    assert len(builds) == 1, f"all Optiscope services must share one image and build: {builds}"
    (_image, dockerfile), = builds
    assert services["server"]["build"]["context"] == "."
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    torch_at = text.index("torch==2.13.0")
    all_at = text.index('pip install ".[all]"')
    assert torch_at < all_at, "torch must be pinned and installed before .[all] (else pip pulls a CUDA build)"


def test_db_is_postgres_15_with_named_volume_and_healthcheck() -> None:
    doc = _compose()
    db = doc["services"]["db"]
    assert db["image"].startswith("postgres:15")
    volume, _, mount = db["volumes"][0].partition(":")
    assert volume in doc["volumes"], "PostgreSQL data must live in a named volume"
    assert mount == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])


def test_server_starts_after_migrations_and_healthy_db() -> None:
    services = _compose()["services"]
    server = services["server"]
    assert server["depends_on"]["db"]["condition"] == "service_healthy"
    assert server["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert "optiscope db upgrade" in " ".join(services["migrate"]["command"])
    assert services["migrate"]["restart"] == "no", "a one-shot migration must not be restarted"
    assert services["dashboard"]["depends_on"]["server"]["condition"] == "service_healthy"
    for name in ("server", "dashboard"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
        assert services[name]["ports"], f"{name} must publish its port"


def test_token_and_database_come_from_the_environment() -> None:
    services = _compose()["services"]
    for name in TOKEN_SERVICES:
        raw = services[name]["environment"]
        assert raw["OPTISCOPE_TOKEN"].startswith("${OPTISCOPE_TOKEN:?"), "the token must be required, not defaulted"
        assert "@db:5432/" in raw["OPTISCOPE_DATABASE_URL"]
    # the dashboard holds no token (people sign in with their own) and never touches the database
    dash = services["dashboard"]["environment"]
    assert "OPTISCOPE_TOKEN" not in dash and "OPTISCOPE_DATABASE_URL" not in dash
    assert "--token" not in services["dashboard"]["command"]
    with pytest.raises(KeyError, match="OPTISCOPE_TOKEN"):
        _service_env(services["server"], {})
    env = _service_env(services["server"], {"OPTISCOPE_TOKEN": "t0k"})
    assert env["OPTISCOPE_TOKEN"] == "t0k"
    assert env["OPTISCOPE_DATABASE_URL"] == "postgresql+psycopg://optiscope:optiscope@db:5432/optiscope"
    assert _service_env(services["dashboard"], {"OPTISCOPE_TOKEN": "t"})["OPTISCOPE_URL"] == "http://server:8000"


# --------------------------------------------------------------------------------------------------
# the containers' commands, for real


@pytest.fixture
def container_env(pg_cluster: Any, tmp_path: Path) -> Iterator[dict[str, dict[str, str]]]:
    """Each Optiscope service's environment as compose would give it, pointed at a fresh test database."""
    db_url = pg_cluster.create_database(f"compose_{secrets.token_hex(4)}")
    token = "osk_" + secrets.token_urlsafe(24)
    services = _compose()["services"]
    base = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if os.environ.get("PYTHONPATH"):  # the code under test (a worktree), not whatever is installed
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    envs: dict[str, dict[str, str]] = {}
    for name in OPTISCOPE_SERVICES:
        env = _service_env(services[name], {"OPTISCOPE_TOKEN": token})
        env["OPTISCOPE_DATABASE_URL"] = db_url  # the `db` host exists only inside compose
        env["OPTISCOPE_HOME"] = str(tmp_path / name)
        envs[name] = {**base, **env}
    yield envs


@pytest.mark.pg
def test_container_commands_run_against_real_postgres(container_env: dict[str, dict[str, str]],
                                                      tmp_path: Path) -> None:
    services = _compose()["services"]
    token = container_env["server"]["OPTISCOPE_TOKEN"]

    # migrate: the exact command, twice (a restart of the stack must be harmless)
    for _ in range(2):
        done = subprocess.run(services["migrate"]["command"], env=container_env["migrate"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr

    processes: list[subprocess.Popen[bytes]] = []
    try:
        server_port, dash_port = _free_port(), _free_port()
        server_log = tmp_path / "server.log"
        with open(server_log, "wb") as log:
            processes.append(subprocess.Popen(_with_port(services["server"]["command"], server_port),
                                              env=container_env["server"], cwd=tmp_path, stdout=log,
                                              stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{server_port}"
        health = _wait_http(f"{base}/api/v1/health", processes[0], server_log).json()
        assert health["database"] == "postgresql"
        check = subprocess.run(_healthcheck_argv(services["server"], server_port, 8000), timeout=30)
        assert check.returncode == 0, "the server container's healthcheck fails"

        # the token from the environment is the one that writes; none, or another, does not
        body = {"project": "compose", "name": "from-compose-test"}
        assert httpx.post(f"{base}/api/v1/runs", json=body).status_code == 401
        bad = {"Authorization": "Bearer osk_not-the-token"}
        assert httpx.post(f"{base}/api/v1/runs", json=body, headers=bad).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{base}/api/v1/runs", json=body, headers=auth)
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{base}/api/v1/runs", params={"project": "compose"}, headers=auth).json()
        assert [r["name"] for r in listed["data"]] == ["from-compose-test"]

        # dashboard: the exact command with the API host (`server` inside compose) pointed at ours
        command = _with_port(services["dashboard"]["command"], dash_port)
        command[command.index("--api") + 1] = base
        env = {**container_env["dashboard"], "OPTISCOPE_URL": base}
        dash_log = tmp_path / "dashboard.log"
        with open(dash_log, "wb") as log:
            processes.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
        page = _wait_http(f"http://127.0.0.1:{dash_port}/", processes[1], dash_log)
        # bound to 0.0.0.0 it serves nothing but the sign-in page to a stranger ...
        assert page.status_code == 302 and page.headers["location"].startswith("/login"), page.text
        dash = f"http://127.0.0.1:{dash_port}"
        assert httpx.get(f"{dash}/login").status_code == 200
        assert httpx.get(f"{dash}/_dash-layout").status_code == 401
        assert httpx.post(f"{dash}/_dash-update-component", json={}).status_code == 401
        # ... and, signed in with the token from the environment, the pages and their data
        with httpx.Client(base_url=dash) as client:
            form = client.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
            signed = client.post("/login", data={"token": token, "csrf": csrf, "next": "/"},
                                 headers={"Origin": dash})
            assert signed.status_code == 302 and signed.headers["location"] == "/", signed.text
            assert client.get("/_dash-layout").status_code == 200
        check = subprocess.run(_healthcheck_argv(services["dashboard"], dash_port, 8050), timeout=30)
        assert check.returncode == 0, "the dashboard container's healthcheck fails"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
