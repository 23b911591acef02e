"""Per-app state reachable from callbacks: the config and the API client (per signed-in person).

It hangs off the Flask app that serves the request (``flask.current_app.extensions``) rather than a
module global, so two dashboards in one process each read their own server, and nothing is
created at import.
"""

from __future__ import annotations

from dataclasses import dataclass

import flask

from .api import ApiClient
from .auth.guard import current_user
from .config import DashboardConfig

EXTENSION = "optiscope"


@dataclass(frozen=True, slots=True)
class DashboardState:
    """What callbacks need from the app they serve."""

    config: DashboardConfig
    api: ApiClient


def install(server: flask.Flask, state: DashboardState) -> None:
    """Attach ``state`` to a Flask app (done once by ``create_app``)."""
    server.extensions[EXTENSION] = state


def current_state() -> DashboardState:
    """The state of the app serving the current request."""
    return flask.current_app.extensions[EXTENSION]


def current_api() -> ApiClient:
    """The API client for the person behind the current request: bound to their signed-in token,
    or anonymous (reads only, and only where the server leaves reads open) when nobody is."""
    user = current_user()
    api = current_state().api
    return api.as_user(user.token) if user is not None else api


def current_config() -> DashboardConfig:
    """The config of the app serving the current request."""
    return current_state().config
