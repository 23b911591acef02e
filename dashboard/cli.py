"""``optiscope dashboard --api URL [--host H] [--port N]``: the dashboard as its own process,
reading a (possibly remote) server over HTTP. ``optiscope serve`` does not need this: it mounts
the dashboard on its own port through the ``optiscope.mounts`` entry point.

It takes no token: people sign in with their own. Bound beyond loopback, nothing is served before
a sign-in; it answers only its own Host names, like the server (``OPTISCOPE_ALLOWED_HOSTS``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """``optiscope.cli`` entry point."""
    parser = subparsers.add_parser(
        "dashboard", help="run the dashboard alone against an Optiscope server",
        description="Serve the Optiscope dashboard, reading the server's HTTP query API.",
    )
    parser.add_argument("--api", default=None,
                        help="server base URL (default: $OPTISCOPE_URL, then $OPTISCOPE_HOME/server.json)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else requires a sign-in on every page)")
    parser.add_argument("--port", type=int, default=8050, help="port to listen on (default 8050)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve through uvicorn + a2wsgi (threaded, like the mounted dashboard); uvicorn comes with the
    server extra, so a host with only the dashboard extra falls back to Flask's built-in server."""
    from .app import create_app

    app = create_app(args.api, bind_host=args.host, check_host=True)
    try:
        import uvicorn
        from a2wsgi import WSGIMiddleware
    except ImportError:
        app.run(host=args.host, port=args.port, debug=False)
        return 0
    uvicorn.run(WSGIMiddleware(app.server, workers=16), host=args.host, port=args.port, log_level="warning")
    return 0
