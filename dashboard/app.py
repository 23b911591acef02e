"""The Dash application: a shell (navbar, shared Stores, ``page_container``) around three pages.

``create_app`` builds a Flask-backed Dash app; ``mount`` serves it inside the server's FastAPI app
through ``a2wsgi.WSGIMiddleware``. Why WSGI rather than Dash 4's native FastAPI backend: the
dashboard reads the API *over HTTP*, also when it runs in the server's own process. The native
backend runs synchronous callbacks on the event loop, so a callback waiting for the API would block
the very loop that has to answer it. a2wsgi runs each Dash request in a worker thread and leaves the
loop free; the same Flask app runs unchanged as its own process (``optiscope dashboard``).

The app holds no API token: ``dashboard.auth`` signs people in with their own and guards every
request (``before_request``) and every write (``require_write``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dash
import flask
from dash import Dash, dcc, html

from . import ids
from .api import ApiClient
from .auth import guard, login
from .auth.guard import LOGIN_PATH, LOGOUT_PATH, csrf_token, current_user
from .config import DashboardConfig, from_env
from .state import DashboardState, install

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

_PAGES = (
    # (module, path or path_template, name shown in the navbar or None)
    ("dashboard.pages.runs", "/", "Runs"),
    ("dashboard.pages.run", "/runs/<run_id>", None),
    ("dashboard.pages.compare", "/compare", "Compare"),
)


def _load_pages() -> list[Any]:
    """Import (or re-execute) the page modules so their module-level ``@callback``s register.

    Dash keeps ``@callback`` registrations in a process-global list that the first app to serve a
    request takes; re-executing the modules gives a second app in the same process (tests) its own.
    """
    modules = []
    for name, _, _ in _PAGES:
        module = sys.modules.get(name)
        modules.append(importlib.reload(module) if module else importlib.import_module(name))
    return modules


def create_app(
    api_url: str | None = None,
    *,
    bind_host: str | None = "127.0.0.1",
    check_host: bool = False,
    config: DashboardConfig | None = None,
    api: ApiClient | None = None,
) -> Dash:
    """Build the dashboard for the server at ``api_url`` (default: env / ``server.json``).

    ``bind_host`` is the address people reach it on: beyond loopback everything needs a sign-in.
    ``check_host``: answer only this host's own names (the standalone dashboard; mounted in the
    server, the server's Host check runs first).
    """
    cfg = config or from_env(api_url, bind_host=bind_host, check_host=check_host)
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder="",
        assets_folder=str(Path(__file__).with_name("assets")),
        suppress_callback_exceptions=True,  # page components appear only when their page is shown
        title="Optiscope",
        update_title=None,
        serve_locally=True,  # no CDN: works offline and on air-gapped clusters
        # async chunks load when a component needs them: eager loading also fetched MathJax (2.1 MB)
        # and the table's export code that no page uses
        eager_loading=False,
        # gzip/brotli (flask-compress): plotly.js is 4.8 MB raw, ~1.4 MB compressed; a cold page
        # moved ~10 MB before
        compress=True,
    )
    install(app.server, DashboardState(cfg, api or ApiClient(cfg)))
    guard.install(app.server, cfg)
    login.install(app.server)
    modules = _load_pages()
    for (name, path, nav), module in zip(_PAGES, modules):
        kwargs: dict[str, Any] = {"path_template": path} if "<" in path else {"path": path}
        dash.register_page(name, name=nav or name.rsplit(".", 1)[-1], title=module.TITLE,
                           layout=module.layout, **kwargs)
    app.layout = lambda: _shell(cfg)  # per request: the session's CSRF value and who is signed in
    return app


def _account(cfg: DashboardConfig) -> html.Span:
    """Who is signed in, with a sign-out link; or a sign-in link."""
    user = current_user()
    if user is None:
        return html.Span(html.A("Sign in", href=LOGIN_PATH, id="shell-login"), className="nav-account")
    scope = f"project {user.project}" if user.project else "all projects"
    return html.Span([html.Span(f"signed in ({scope})", id="shell-user"), " ",
                      html.A("Sign out", href=LOGOUT_PATH, id="shell-logout")], className="nav-account")


def _shell(cfg: DashboardConfig) -> html.Div:
    in_request = flask.has_request_context()  # Dash also builds the layout once at start-up
    return html.Div(
        [
            html.Nav(
                [
                    dcc.Link("Optiscope", href="/", className="brand"),
                    dcc.Link("Runs", href="/", className="nav-link"),
                    dcc.Link("Compare", href="/compare", className="nav-link", id="shell-compare-link"),
                    html.Span(cfg.api_base, className="nav-api", title="query API this dashboard reads"),
                    _account(cfg),
                ],
                className="navbar",
            ),
            dcc.Store(id=ids.SHELL_SELECTION, storage_type="session", data=[]),
            # memory storage: the value lives in this page only, never in browser storage
            dcc.Store(id=ids.SHELL_CSRF, storage_type="memory", data=csrf_token() if in_request else None),
            html.Main(dash.page_container, className="page"),
        ]
    )


def mount(app: "FastAPI", *, api_url: str, bind_host: str, **_: Any) -> None:
    """``optiscope.mounts`` entry point: serve the dashboard at ``/`` of the server's FastAPI app.

    Called after the API router (and the server's ``/api`` 404 catch-all) are included, so a Mount
    at ``/`` only sees paths the API did not claim. The server hands no token: people sign in.
    """
    from a2wsgi import WSGIMiddleware

    dash_app = create_app(api_url, bind_host=bind_host)
    # Enough threads for a few browsers polling every second while other callbacks wait on the API.
    app.mount("/", WSGIMiddleware(dash_app.server, workers=16), name="dashboard")


def main() -> None:  # pragma: no cover - manual use: python -m dashboard.app
    create_app().run(debug=False)


if __name__ == "__main__":  # pragma: no cover
    main()
