"""``/login`` and ``/logout``: plain Flask routes beside the Dash app (a Dash page could not load
before sign-in: its layout and callbacks are what the sign-in protects).

The token typed in is checked with ``GET /api/v1/whoami``, which always needs a valid token, also
where the server leaves reads open; the server's answer (token id, project scope) is kept with it.
"""

from __future__ import annotations

import secrets

import flask
from markupsafe import Markup, escape

from ..api import ApiClient, ApiError
from .guard import LOGIN_PATH, LOGOUT_PATH, csrf_token, current_guard, current_user, same_origin

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · Optiscope</title>
<link rel="stylesheet" href="/assets/optiscope.css"></head>
<body><main class="page login-page">
<h1>Optiscope</h1>
<form method="post" action="{action}" class="login-form">
  <label for="token">API token</label>
  <input id="token" name="token" type="password" autocomplete="off" autofocus required>
  <input type="hidden" name="csrf" value="{csrf}">
  <input type="hidden" name="next" value="{next}">
  <button type="submit" id="login-submit">Sign in</button>
</form>
{error}
<p class="hint">Use a token from <code>optiscope token create</code> (or the local token in
<code>$OPTISCOPE_HOME/local-token</code>). A project-scoped token shows only its project.</p>
</main></body></html>"""


def _safe_next(value: str | None) -> str:
    """Only a path on this dashboard (never ``//host`` or a full URL: no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value \
            or any(c.isspace() or ord(c) < 32 for c in value):  # browsers drop tabs: "/\t/evil" -> "//evil"
        return "/"
    return value


def _page(error: str | None = None, *, status: int = 200, next_path: str = "/") -> flask.Response:
    note = Markup('<p class="login-error" id="login-error" role="alert">{}</p>').format(error) if error else ""
    html = _PAGE.format(action=LOGIN_PATH, csrf=escape(csrf_token()), next=escape(next_path), error=note)
    response = flask.make_response(html, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def login() -> flask.Response:
    """GET: the form. POST: check the token with the server, then start a session."""
    request = flask.request
    next_path = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user() is not None:
            return flask.redirect(next_path)
        return _page(next_path=next_path)
    if not same_origin() or not secrets.compare_digest(str(request.form.get("csrf", "")), csrf_token()):
        return _page("The sign-in form was stale or sent from another site; try again.", status=400,
                     next_path=next_path)
    token = (request.form.get("token") or "").strip()
    if not token:
        return _page("Enter an API token.", status=400, next_path=next_path)
    api: ApiClient = flask.current_app.extensions["optiscope"].api
    try:
        who = api.whoami(token)
    except ApiError as exc:
        if exc.status in (401, 403):
            return _page("The server did not accept that token (unknown or revoked).", status=401,
                         next_path=next_path)
        return _page(f"Could not check the token with the server: {exc}", status=502, next_path=next_path)
    guard = current_guard()
    guard.sessions.drop(flask.session.get("sid"))
    sid = guard.sessions.create(token, token_id=who.get("token_id"), project=who.get("project"))
    flask.session.clear()  # a new session id and CSRF value at every sign-in (no session fixation)
    flask.session.permanent = True
    flask.session["sid"] = sid
    csrf_token()
    return flask.redirect(next_path)


def logout() -> flask.Response:
    """End the sign-in here and in the store; back to the sign-in page."""
    current_guard().sessions.drop(flask.session.get("sid"))
    flask.session.clear()
    return flask.redirect(LOGIN_PATH)


def install(server: flask.Flask) -> None:
    """Register the two routes on the dashboard's Flask server."""
    server.add_url_rule(LOGIN_PATH, "optiscope_login", login, methods=["GET", "POST"])
    server.add_url_rule(LOGOUT_PATH, "optiscope_logout", logout, methods=["GET"])
