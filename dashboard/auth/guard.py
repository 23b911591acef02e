"""The checks every dashboard request goes through, in one ``before_request`` on the Flask server.

- Host: the standalone dashboard answers only its own names (DNS rebinding), by the same rules as
  the server (:mod:`dashboard.host_policy`); mounted in the server, the server has checked already.
- Sign-in: where ``DashboardConfig.login_required`` (any bind beyond loopback, or
  ``OPTISCOPE_DASHBOARD_AUTH=login``) no page, layout, callback or data is served without a live
  session; pages redirect to ``/login``, everything else answers 401. Static files stay public.
- Writes: :func:`require_write` is what a mutating callback calls first — same origin, the
  session's CSRF value, and a signed-in person whose token the API will judge.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import quote, urlsplit

import flask

from dashboard.host_policy import REFUSAL, HostPolicy

from ..config import DashboardConfig
from .sessions import SessionStore, SignIn

EXTENSION = "optiscope-auth"
COOKIE_NAME = "optiscope_dashboard"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
# Served to anyone: the login page itself and static files (scripts, styles, favicon).
PUBLIC_PREFIXES = ("/assets/", "/_dash-component-suites/")
PUBLIC_PATHS = frozenset({LOGIN_PATH, LOGOUT_PATH, "/_favicon.ico", "/favicon.ico"})


class WriteRefused(Exception):
    """A mutating callback was refused; ``str(exc)`` is the message to show the user."""


class Guard:
    """The sign-in store and host policy of one dashboard app."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.sessions = SessionStore(config.session_ttl_s)
        self.hosts = HostPolicy(config.bind_host or "", config.allowed_hosts) if config.check_host else None

    def before_request(self) -> flask.Response | None:
        request = flask.request
        if self.hosts is not None and not self.hosts.allows(request.headers.get("Host")):
            return flask.jsonify(detail=REFUSAL), 400  # type: ignore[return-value]
        path = request.path
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        if self.config.login_required and current_user() is None:
            if request.method == "GET" and not path.startswith("/_"):
                return flask.redirect(f"{LOGIN_PATH}?next={quote(request.full_path.rstrip('?'), safe='/')}")
            return flask.jsonify(detail="sign in first: this dashboard needs an API token (open /login)"), 401  # type: ignore[return-value]
        csrf_token()  # every session (signed in or not) gets its CSRF value before the page loads
        return None


def install(server: flask.Flask, config: DashboardConfig) -> Guard:
    """Configure the signed session cookie and register the guard on ``server``."""
    server.secret_key = config.secret_key or secrets.token_hex(32)
    server.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=config.session_ttl_s,
    )
    guard = Guard(config)
    server.extensions[EXTENSION] = guard
    server.before_request(guard.before_request)
    return guard


def current_guard() -> Guard:
    """The guard of the app serving the current request."""
    return flask.current_app.extensions[EXTENSION]


def current_user() -> SignIn | None:
    """Who is signed in on the current request (None: nobody, logged out or expired)."""
    if not flask.has_request_context():
        return None
    return current_guard().sessions.get(flask.session.get("sid"))


def csrf_token() -> str:
    """This session's CSRF value, created on first use (the page layout hands it to callbacks)."""
    value = flask.session.get("csrf")
    if not value:
        value = flask.session["csrf"] = secrets.token_urlsafe(32)
    return value


def same_origin() -> bool:
    """Whether the request says it comes from a page of this dashboard (Origin, else Referer).

    Browsers send Origin on every cross-site POST and on same-origin fetch POSTs; a request with
    neither header is not a browser following this dashboard's own page, so it is refused.
    """
    request = flask.request
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    host = request.headers.get("Host", "")
    return urlsplit(source).netloc.lower() == host.lower()


def require_write(csrf: str | None, *, action: str = "change anything") -> SignIn:
    """The signed-in person a mutating callback acts for; :class:`WriteRefused` otherwise.

    Every edit callback takes the page's CSRF value (``State(ids.SHELL_CSRF, "data")``) and calls
    this first. The API still decides what that person's token may do (project scope).
    """
    if not same_origin():
        raise WriteRefused(f"refused to {action}: the request did not come from this dashboard's own page")
    expected = flask.session.get("csrf")
    if not expected or not csrf or not hmac.compare_digest(str(csrf), str(expected)):
        raise WriteRefused(f"refused to {action}: the page's security token is missing or stale; reload the page")
    user = current_user()
    if user is None:
        raise WriteRefused(f"sign in with an API token to {action}")
    return user
