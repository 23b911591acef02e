"""Nobody gets in through the dashboard (issue 16, section 1; the dashboard half of 2; Share chart of 5).

A real ``optiscope serve`` on SQLite is the API. The dashboards under test are real Dash/Flask apps
served over real HTTP (werkzeug, in a thread) and read that API over HTTP, exactly as the
standalone ``optiscope dashboard`` does.

How "loopback" is decided: ``DashboardConfig.bind_host`` (``dashboard.config.is_loopback``), the
dashboard's equivalent of ``Settings(host=...)`` in test_security.py. Every address this machine
lets a test bind is loopback, so the "bound beyond loopback" dashboard is configured with
``bind_host="0.0.0.0"`` while it listens on 127.0.0.1 — which is all the dashboard's policy looks at.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from dashboard.app import create_app, mount
from dashboard.config import DashboardConfig
from tests.conftest import LiveServer
from tests.dashboard.seed import Seeder
from tests.pg_cluster import free_port

from .harness import make_token, unstarted_sqlite_server

TIMEOUT_MS = 30_000
NOT_SIGNED_IN = "sign in with an API token to delete"


@dataclass
class Api:
    server: LiveServer
    scoped_token: str  # may read and write project "alpha" only
    alpha: str  # a run in project alpha
    beta: str  # a run in project beta

    def run_exists(self, run_id: str) -> bool:
        r = httpx.get(f"{self.server.api}/runs/{run_id}", headers=self.server.headers)
        assert r.status_code in (200, 404), r.text
        return r.status_code == 200

    def new_run(self, project: str, name: str) -> str:
        seeder = Seeder(self.server.api, self.server.token)
        try:
            run_id = f"{project}-{uuid.uuid4().hex[:10]}"
            seeder.create_run(run_id, name=name, project=project)
            seeder.post(run_id, scalars=[{"key": "loss", "steps": list(range(20)), "times": [time.time()] * 20,
                                          "values": [1.0 / (i + 1) for i in range(20)]}])
            return run_id
        finally:
            seeder.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = unstarted_sqlite_server(tmp_path_factory.mktemp("dash-auth"))
    scoped = make_token(f"sqlite:///{server.home / 'optiscope.db'}", project="alpha", name="alpha-only")
    server.start()
    try:
        holder = Api(server, scoped, "", "")
        holder.alpha = holder.new_run("alpha", "alphaSecretRun")
        holder.beta = holder.new_run("beta", "betaSecretRun")
        yield holder
    finally:
        server.stop()


@dataclass
class Dashboard:
    url: str
    app: Any
    http: BaseWSGIServer | None

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1]

    def callback(self, output_part: str) -> str:
        """The ``output`` key of the callback whose outputs include ``output_part``."""
        return next(k for k in self.app.callback_map if output_part in k)


def _serve(config: DashboardConfig) -> Dashboard:
    app = create_app(config=config)
    # Dash binds the page modules' callbacks to the first app that serves a request: do it now.
    app.server.test_client().get("/login")
    port = free_port()
    http = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=http.serve_forever, name=f"dashboard-{port}", daemon=True).start()
    return Dashboard(f"http://127.0.0.1:{port}", app, http)


def _config(api: Api, bind_host: str, **kw: Any) -> DashboardConfig:
    return DashboardConfig(api_url=api.server.url, bind_host=bind_host, secret_key="test-" + uuid.uuid4().hex,
                           check_host=True, **kw)


@pytest.fixture(scope="module")
def remote(api: Api) -> Iterator[Dashboard]:
    """Configured as bound beyond loopback: nothing without a sign-in."""
    dash = _serve(_config(api, "0.0.0.0"))
    yield dash
    dash.http.shutdown()


@pytest.fixture(scope="module")
def local(api: Api) -> Iterator[Dashboard]:
    """Bound to loopback: reads open, writes need same origin + CSRF + a signed-in user."""
    dash = _serve(_config(api, "127.0.0.1"))
    yield dash
    dash.http.shutdown()


# -- raw HTTP helpers --------------------------------------------------------------------------------


def _split_outputs(key: str) -> list[dict[str, Any]]:
    parts = key[2:-2].split("...") if key.startswith("..") else [key]
    outputs = []
    for part in parts:
        ident, prop = part.split("@", 1)[0].rsplit(".", 1)
        outputs.append({"id": json.loads(ident) if ident.startswith("{") else ident, "property": prop})
    return outputs


def _body(dash: Dashboard, key: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``/_dash-update-component`` body as the renderer sends it (``values``: "id.prop" -> value)."""
    values = values or {}
    spec = dash.app.callback_map[key]

    def deps(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": d["id"], "property": d["property"], "value": values.get(f"{d['id']}.{d['property']}")}
                for d in items]

    outputs = _split_outputs(key)
    inputs = deps(spec["inputs"])
    return {"output": key, "outputs": outputs if key.startswith("..") else outputs[0], "inputs": inputs,
            "state": deps(spec.get("state", [])), "changedPropIds": [f"{i['id']}.{i['property']}" for i in inputs[:1]]}


def _delete_body(dash: Dashboard, run_id: str, csrf: str | None) -> dict[str, Any]:
    return _body(dash, dash.callback("runs-version.data"), {
        "runs-confirm.submit_n_clicks": 1, "runs-table.selected_row_ids": [run_id], "runs-version.data": 0,
        "shell-csrf.data": csrf})


def _runs_table_body(dash: Dashboard, project: str | None = None) -> dict[str, Any]:
    return _body(dash, dash.callback("runs-table.data"), {"runs-project.value": project, "runs-version.data": 0})


def _sign_in(dash: Dashboard, token: str) -> httpx.Client:
    client = httpx.Client(base_url=dash.url, timeout=30)
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"token": token, "csrf": csrf, "next": "/"}, headers={"Origin": dash.url})
    assert r.status_code == 302 and r.headers["location"] == "/", r.text
    return client


def _csrf_of(client: httpx.Client) -> str:
    layout = client.get("/_dash-layout")
    assert layout.status_code == 200, layout.text
    match = re.search(r'"id":\s*"shell-csrf"[^}]*?"data":\s*"([^"]+)"|"data":\s*"([^"]+)"[^}]*?"id":\s*"shell-csrf"',
                      layout.text)
    assert match, "the layout carries the session's CSRF value"
    return match.group(1) or match.group(2)


def _post(client: httpx.Client, dash: Dashboard, body: dict[str, Any], *, origin: str | None = "own") -> httpx.Response:
    headers = {"Origin": dash.url if origin == "own" else origin} if origin else {}
    return client.post("/_dash-update-component", json=body, headers=headers)


# -- beyond loopback: nothing without a session ------------------------------------------------------


def test_anonymous_pages_layout_and_every_callback_are_refused_beyond_loopback(api: Api, remote: Dashboard) -> None:
    anon = httpx.Client(base_url=remote.url, timeout=30)
    for path in ("/", f"/runs/{api.alpha}", "/compare"):
        r = anon.get(path)
        assert r.status_code == 302 and r.headers["location"].startswith("/login?next="), (path, r.status_code)
    for path in ("/_dash-layout", "/_dash-dependencies", "/_reload-hash"):
        r = anon.get(path)
        assert r.status_code == 401, (path, r.status_code)
        assert "SecretRun" not in r.text
    # every callback of every page, with a well-formed body, from the dashboard's own origin
    assert len(remote.app.callback_map) > 20
    for key in remote.app.callback_map:
        body = _body(remote, key, {"run-id.data": api.alpha, "cmp-runs.data": [api.alpha, api.beta]})
        r = _post(anon, remote, body)
        assert r.status_code == 401, (key, r.status_code, r.text[:200])
        assert "SecretRun" not in r.text
    r = _post(anon, remote, _delete_body(remote, api.beta, "whatever"))
    assert r.status_code == 401 and api.run_exists(api.beta)
    # static files stay public (the login page needs its stylesheet)
    assert anon.get("/assets/optiscope.css").status_code == 200
    # and the same runs-table callback does answer a signed-in user (the refusals above are not a broken body)
    admin = _sign_in(remote, api.server.token)
    table = _post(admin, remote, _runs_table_body(remote))
    assert table.status_code == 200 and "alphaSecretRun" in table.text and "betaSecretRun" in table.text


def test_the_standalone_dashboard_refuses_a_foreign_host(remote: Dashboard) -> None:
    """DNS rebinding: the same Host rules as the server (dashboard.host_policy), before anything else."""
    r = httpx.get(remote.url + "/login", headers={"Host": "attacker.example"})
    assert r.status_code == 400 and "Host" in r.json()["detail"]
    assert httpx.get(remote.url + "/login", headers={"Host": "localhost"}).status_code == 200


def test_server_mounted_dashboard_follows_the_servers_bind_host(tmp_path: Path) -> None:
    """``optiscope serve --host 0.0.0.0`` mounts the dashboard with that bind host: sign-in needed."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    for bind, page_status, layout_status in (("0.0.0.0", 302, 401), ("127.0.0.1", 200, 200)):
        app = FastAPI()
        mount(app, api_url="http://127.0.0.1:9/api/v1", bind_host=bind)
        client = TestClient(app, base_url="http://127.0.0.1:8000", follow_redirects=False)
        assert client.get("/").status_code == page_status, bind
        assert client.get("/_dash-layout").status_code == layout_status, bind
        if bind == "0.0.0.0":
            assert client.post("/_dash-update-component", json={}).status_code == 401


def test_optiscope_serve_with_forced_sign_in_guards_its_mounted_dashboard(api: Api, remote: Dashboard,
                                                                        tmp_path: Path) -> None:
    """The real ``optiscope serve`` (a2wsgi mount) with OPTISCOPE_DASHBOARD_AUTH=login: what a bind beyond
    loopback gets, on an address a test may bind."""
    server = unstarted_sqlite_server(tmp_path, env={"OPTISCOPE_DASHBOARD_AUTH": "login"}).start()
    try:
        mounted = Dashboard(server.url, remote.app, None)  # bodies from an identical app; posted to the server
        anon = httpx.Client(base_url=server.url, timeout=30)
        assert anon.get("/").status_code == 302 and anon.get("/_dash-layout").status_code == 401
        seeder = Seeder(server.api, server.token)
        try:
            seeder.create_run("mounted-victim", name="mountedSecretRun", project="alpha")
        finally:
            seeder.close()
        for body in (_runs_table_body(mounted), _delete_body(mounted, "mounted-victim", "x")):
            r = _post(anon, mounted, body)
            assert r.status_code == 401 and "mountedSecretRun" not in r.text
        assert httpx.get(f"{server.api}/runs/mounted-victim").status_code == 200
        user = _sign_in(mounted, server.token)
        assert "mountedSecretRun" in _post(user, mounted, _runs_table_body(mounted)).text
        done = _post(user, mounted, _delete_body(mounted, "mounted-victim", _csrf_of(user)))
        assert done.status_code == 200 and "could not be deleted" not in done.text
        assert httpx.get(f"{server.api}/runs/mounted-victim").status_code == 404
    finally:
        server.stop()


def test_project_scoped_user_sees_and_deletes_only_their_project(api: Api, remote: Dashboard) -> None:
    user = _sign_in(remote, api.scoped_token)
    csrf = _csrf_of(user)
    table = _post(user, remote, _runs_table_body(remote))
    assert table.status_code == 200
    assert "alphaSecretRun" in table.text and "betaSecretRun" not in table.text
    asked = _post(user, remote, _runs_table_body(remote, project="beta"))
    assert asked.status_code == 200 and "betaSecretRun" not in asked.text
    # the run page of another project's run: "not found", none of its data
    header = _body(remote, remote.callback("_pages_content.children"), {
        "_pages_location.pathname": f"/runs/{api.beta}", "_pages_location.search": ""})
    head = _post(user, remote, header)
    assert head.status_code == 200 and "betaSecretRun" not in head.text
    assert "betaSecretRun" in _post(_sign_in(remote, api.server.token), remote, header).text  # (an admin sees it)
    # delete: refused by the API (the dashboard acts with the user's token), the run stays
    refused = _post(user, remote, _delete_body(remote, api.beta, csrf))
    assert refused.status_code == 200 and "could not be deleted" in refused.text
    assert api.run_exists(api.beta)
    victim = api.new_run("alpha", "alpha-to-delete")
    done = _post(user, remote, _delete_body(remote, victim, csrf))
    assert done.status_code == 200 and "could not be deleted" not in done.text
    assert not api.run_exists(victim)
    # the API itself scopes reads by the token's project, also where reads are open (loopback server)
    auth = {"Authorization": f"Bearer {api.scoped_token}"}
    listed = httpx.get(f"{api.server.api}/runs", headers=auth).json()
    assert {r["project"] for r in listed["data"]} == {"alpha"}
    assert httpx.get(f"{api.server.api}/runs", params={"project": "beta"}, headers=auth).json()["count"] == 0
    for path, params in ((f"/runs/{api.beta}", {}), (f"/runs/{api.beta}/keys", {}),
                         (f"/runs/{api.beta}/export", {}), ("/series", {"run_id": api.beta, "key": "loss"}),
                         ("/time-to-target", {"run_id": [api.alpha, api.beta], "key": "loss", "target": 0.5})):
        assert httpx.get(f"{api.server.api}{path}", params=params, headers=auth).status_code == 404, path
    assert httpx.get(f"{api.server.api}/runs/{api.alpha}", headers=auth).status_code == 200


def test_logout_ends_the_session_and_its_cookie_is_dead(api: Api, remote: Dashboard) -> None:
    user = _sign_in(remote, api.server.token)
    assert user.get("/_dash-layout").status_code == 200
    cookies = dict(user.cookies)
    r = user.get("/logout")
    assert r.status_code == 302 and r.headers["location"] == "/login"
    assert user.get("/_dash-layout").status_code == 401
    # the cookie from before the logout, replayed, is refused too: the sign-in is gone server-side
    replay = httpx.Client(base_url=remote.url, cookies=cookies)
    assert replay.get("/_dash-layout").status_code == 401


def test_expired_session_is_refused(api: Api) -> None:
    dash = _serve(replace(_config(api, "0.0.0.0"), session_ttl_s=1.5))
    try:
        user = _sign_in(dash, api.server.token)
        assert user.get("/_dash-layout").status_code == 200
        cookies = dict(user.cookies)
        time.sleep(2.0)
        assert user.get("/_dash-layout").status_code == 401
        assert user.get("/").headers["location"].startswith("/login")
        assert httpx.Client(base_url=dash.url, cookies=cookies).get("/_dash-layout").status_code == 401
    finally:
        dash.http.shutdown()


def _cookie_payload(value: str) -> bytes:
    """The (signed, not encrypted) payload of a Flask session cookie: ``[.]base64[.ts.sig]``."""
    compressed = value.startswith(".")
    payload = value.lstrip(".").split(".")[0]
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return zlib.decompress(data) if compressed else data


def test_session_cookie_is_signed_httponly_strict_and_holds_no_token(api: Api, remote: Dashboard) -> None:
    header = httpx.get(remote.url + "/login").headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header
    user = _sign_in(remote, api.server.token)
    value = user.cookies["optiscope_dashboard"]
    decoded = _cookie_payload(value)
    assert b"sid" in decoded and b"csrf" in decoded
    assert api.server.token.encode() not in decoded and api.server.token[4:20].encode() not in decoded
    # the same payload with a signature that does not match is not a session
    forged = httpx.Client(base_url=remote.url, cookies={"optiscope_dashboard": value[:-4] + "AAAA"})
    assert forged.get("/_dash-layout").status_code == 401


def test_login_from_another_origin_is_refused(api: Api, remote: Dashboard) -> None:
    client = httpx.Client(base_url=remote.url)
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"token": api.server.token, "csrf": csrf},
                    headers={"Origin": "http://attacker.example"})
    assert r.status_code == 400 and client.get("/_dash-layout").status_code == 401


# -- loopback: reads open, writes guarded -------------------------------------------------------------


def test_loopback_reads_open_but_delete_needs_same_origin_csrf_and_a_sign_in(api: Api, local: Dashboard) -> None:
    anon = httpx.Client(base_url=local.url, timeout=30)
    csrf = _csrf_of(anon)
    table = _post(anon, local, _runs_table_body(local))
    assert table.status_code == 200 and "alphaSecretRun" in table.text  # reads stay open
    victim = api.new_run("alpha", "loopback-victim")
    cases = [
        ("cross-origin", dict(origin="http://attacker.example"), csrf, "did not come from"),
        ("no origin", dict(origin=None), csrf, "did not come from"),
        ("missing csrf", {}, None, "security token"),
        ("wrong csrf", {}, "not-the-value", "security token"),
        ("not signed in", {}, csrf, NOT_SIGNED_IN),
    ]
    for name, kw, value, reason in cases:
        r = _post(anon, local, _delete_body(local, victim, value), **kw)
        assert r.status_code == 200 and reason in r.text, (name, r.text[:300])
        assert api.run_exists(victim), name
    user = _sign_in(local, api.server.token)
    user_csrf = _csrf_of(user)
    # a signed-in user's request from another origin, or with the anonymous page's CSRF: still refused
    assert "did not come from" in _post(user, local, _delete_body(local, victim, user_csrf),
                                        origin="http://attacker.example").text
    assert "security token" in _post(user, local, _delete_body(local, victim, csrf)).text
    assert api.run_exists(victim)
    assert "could not be deleted" not in _post(user, local, _delete_body(local, victim, user_csrf)).text
    assert not api.run_exists(victim)


# -- real Chromium --------------------------------------------------------------------------------------


@pytest.fixture
def context(browser):  # noqa: ANN001, ANN201 - playwright types, imported lazily
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.errors = []  # type: ignore[attr-defined]
    try:
        yield ctx
    finally:
        ctx.close()


def _select_and_delete(pg, run_id: str) -> None:  # noqa: ANN001
    row = pg.locator(f'#runs-table tr:has(td:has-text("{run_id}"))').first
    if not row.count():
        row = pg.locator("#runs-table tr", has_text=run_id).first
    row.locator('input[type="checkbox"]').first.check()
    pg.locator("#runs-delete:not([disabled])").click()


def test_in_chromium_anonymous_delete_is_refused_then_signed_in_user_deletes(api: Api, local: Dashboard,
                                                                             context) -> None:  # noqa: ANN001
    victim = api.new_run("alpha", "chromium-victim")
    pg = context.new_page()
    pg.on("dialog", lambda d: d.accept())  # the "Delete N runs?" confirmation
    pg.goto(local.url + "/")
    pg.locator("#runs-table", has_text="chromium-victim").wait_for(timeout=TIMEOUT_MS)
    pg.locator("#shell-login").wait_for(timeout=TIMEOUT_MS)
    _select_and_delete(pg, "chromium-victim")
    pg.locator("#runs-message", has_text=NOT_SIGNED_IN).wait_for(timeout=TIMEOUT_MS)
    assert api.run_exists(victim)

    pg.locator("#shell-login").click()
    pg.locator("#token").fill("osk_this-is-not-a-valid-token-at-all")
    pg.locator("#login-submit").click()
    assert "did not accept" in pg.locator("#login-error").inner_text(timeout=TIMEOUT_MS)
    pg.locator("#token").fill(api.server.token)
    pg.locator("#login-submit").click()
    pg.locator("#shell-logout").wait_for(timeout=TIMEOUT_MS)
    pg.locator("#runs-table", has_text="chromium-victim").wait_for(timeout=TIMEOUT_MS)
    _select_and_delete(pg, "chromium-victim")
    pg.locator("#runs-table", has_text="chromium-victim").wait_for(state="detached", timeout=TIMEOUT_MS)
    assert not api.run_exists(victim)
    pg.locator("#shell-logout").click()
    pg.locator("#login-submit").wait_for(timeout=TIMEOUT_MS)


def test_in_chromium_remote_dashboard_sends_strangers_to_login_and_bad_token_shows_error(
        api: Api, remote: Dashboard, context) -> None:  # noqa: ANN001
    pg = context.new_page()
    pg.goto(remote.url + f"/runs/{api.alpha}")
    assert "/login" in pg.url
    assert "SecretRun" not in pg.content()
    pg.locator("#token").fill("osk_wrong-token-wrong-token-wrong")
    pg.locator("#login-submit").click()
    assert "did not accept" in pg.locator("#login-error").inner_text(timeout=TIMEOUT_MS)
    pg.locator("#token").fill(api.scoped_token)
    pg.locator("#login-submit").click()
    pg.wait_for_url(re.compile(rf".*/runs/{api.alpha}$"), timeout=TIMEOUT_MS)  # back where they were going
    pg.locator("#shell-user", has_text="project alpha").wait_for(timeout=TIMEOUT_MS)


def test_in_chromium_an_open_page_goes_to_login_when_the_session_expires(api: Api, context) -> None:  # noqa: ANN001
    dash = _serve(replace(_config(api, "0.0.0.0"), session_ttl_s=6.0))
    try:
        pg = context.new_page()
        pg.goto(dash.url + "/")
        pg.locator("#token").fill(api.server.token)
        pg.locator("#login-submit").click()
        pg.wait_for_url(dash.url + "/", timeout=TIMEOUT_MS)  # signed in: on the runs page
        # the page's callbacks (the runs page polls) are refused once the sign-in has expired, and the
        # page script sends the person to the sign-in page, with the way back (a reload would say next=/)
        pg.wait_for_url(re.compile(r".*/login\?next=%2F$"), timeout=TIMEOUT_MS)
        pg.locator("#login-submit").wait_for(timeout=TIMEOUT_MS)
    finally:
        dash.http.shutdown()


SHARE_WORDS = ("share", "chart studio", "cloud", "plotly")


def test_no_share_chart_or_chart_studio_button_on_any_page(api: Api, local: Dashboard, context) -> None:  # noqa: ANN001
    pg = context.new_page()
    pages = [("/", 0), (f"/runs/{api.alpha}", 1), (f"/compare?runs={api.alpha},{api.beta}", 1)]
    for path, min_graphs in pages:
        pg.goto(local.url + path)
        if min_graphs:
            pg.locator(".js-plotly-plot .modebar-btn").first.wait_for(state="attached", timeout=TIMEOUT_MS)
        pg.wait_for_timeout(1500)  # let every panel's callbacks render their charts
        titles = pg.eval_on_selector_all(".modebar-btn", "els => els.map(e => e.getAttribute('data-title') || '')")
        attrs = pg.eval_on_selector_all(".modebar-btn", "els => els.map(e => e.getAttribute('data-attr') || '')")
        if min_graphs:
            assert titles, f"{path}: the check must see the charts' modebars"
        bad = [t for t in titles if any(w in t.lower() for w in SHARE_WORDS)]
        assert not bad, f"{path}: {bad}"
        assert not any("cloud" in a.lower() for a in attrs), path
        assert pg.locator("a.modebar-btn[href*='plot.ly'], a[href*='chart-studio'], a[href*='plotly.com']").count() == 0


# -- configuration ------------------------------------------------------------------------------------


def test_config_from_env_names_bad_values_and_keeps_the_secret_private(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.config import from_env

    monkeypatch.setenv("OPTISCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPTISCOPE_SECRET_KEY", raising=False)
    monkeypatch.delenv("OPTISCOPE_DASHBOARD_AUTH", raising=False)
    monkeypatch.delenv("OPTISCOPE_DASHBOARD_SESSION_HOURS", raising=False)
    monkeypatch.setenv("OPTISCOPE_TOKEN", "osk_a-token-the-dashboard-must-ignore")
    cfg = from_env("http://127.0.0.1:9", bind_host="127.0.0.1")
    assert not cfg.login_required and cfg.session_ttl_s == 12 * 3600
    secret = tmp_path / "home" / "dashboard-secret"
    assert (secret.stat().st_mode & 0o777) == 0o600 and ((tmp_path / "home").stat().st_mode & 0o777) == 0o700
    assert from_env("http://127.0.0.1:9").secret_key == cfg.secret_key == secret.read_text().strip()
    assert "osk_" not in repr(cfg)  # no token is read from the environment
    assert from_env("http://127.0.0.1:9", bind_host="0.0.0.0").login_required
    monkeypatch.setenv("OPTISCOPE_DASHBOARD_AUTH", "login")
    assert from_env("http://127.0.0.1:9", bind_host="127.0.0.1").login_required
    monkeypatch.setenv("OPTISCOPE_DASHBOARD_AUTH", "off")
    with pytest.raises(ValueError, match="OPTISCOPE_DASHBOARD_AUTH"):
        from_env("http://127.0.0.1:9")
    monkeypatch.setenv("OPTISCOPE_DASHBOARD_AUTH", "auto")
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv("OPTISCOPE_DASHBOARD_SESSION_HOURS", bad)
        with pytest.raises(ValueError, match="OPTISCOPE_DASHBOARD_SESSION_HOURS"):
            from_env("http://127.0.0.1:9")
    monkeypatch.setenv("OPTISCOPE_DASHBOARD_SESSION_HOURS", "0.5")
    monkeypatch.setenv("OPTISCOPE_SECRET_KEY", "from-the-environment")
    cfg = from_env("http://127.0.0.1:9")
    assert cfg.session_ttl_s == 1800 and cfg.secret_key == "from-the-environment"


def test_login_redirects_only_within_the_dashboard(api: Api, remote: Dashboard) -> None:
    for target, expected in (("//attacker.example/x", "/"), ("https://attacker.example/", "/"),
                             ("/\t/attacker.example", "/"), ("/compare?runs=a", "/compare?runs=a")):
        client = httpx.Client(base_url=remote.url)
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        r = client.post("/login", data={"token": api.server.token, "csrf": csrf, "next": target},
                        headers={"Origin": remote.url})
        assert r.status_code == 302 and r.headers["location"] == expected, target
