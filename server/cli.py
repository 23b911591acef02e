"""``optiscope serve | db | token | export | import`` (registered through the ``optiscope.cli`` group).

``serve`` migrates before listening (the server never calls ``create_all``) and, on a loopback
host with the embedded SQLite default, makes sure a local token exists and writes
``$OPTISCOPE_HOME/local-token`` (0600) and ``server.json`` so a probe on this machine needs no setup.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.config import Settings, is_loopback

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


_DB_HELP = "SQLAlchemy URL (default: SQLite under OPTISCOPE_HOME)"


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the API (and mounted dashboard) on one port")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite under OPTISCOPE_HOME)")
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    serve.set_defaults(func=_serve)

    db = subparsers.add_parser("db", help="database schema commands")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (alembic upgrade)")
    up.add_argument("--db", default=None, help=_DB_HELP)
    up.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    up.set_defaults(func=_db_upgrade)

    token = subparsers.add_parser("token", help="API tokens")
    tok_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = tok_sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--project", default=None, help="restrict writes to this project")
    create.add_argument("--name", default="", help="a label to recognise the token by in `token list`")
    create.add_argument("--db", default=None, help=_DB_HELP)
    create.add_argument(
        "--from-env", action="store_true",
        help="register the secret in $OPTISCOPE_TOKEN instead of minting one (idempotent; for deployments)",
    )
    create.set_defaults(func=_token_create)
    lst = tok_sub.add_parser("list", help="list tokens (never their secrets)")
    lst.add_argument("--db", default=None, help=_DB_HELP)
    lst.set_defaults(func=_token_list)
    revoke = tok_sub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int, help="token id (the first column of `token list`)")
    revoke.add_argument("--db", default=None, help=_DB_HELP)
    revoke.set_defaults(func=_token_revoke)

    export = subparsers.add_parser(
        "export", help="export a run to an NDJSON file",
        description="Reads from a server with --url, else from the database (--db or the default).")
    export.add_argument("run", help="run id, or the exact name of one run")
    export.add_argument("-o", "--output", required=True, help="file to write (.gz compresses)")
    export.add_argument("--project", help="look the name up in this project only")
    _source_flags(export)
    export.set_defaults(func=_export)
    imp = subparsers.add_parser(
        "import", help="import runs: an Optiscope export file, TensorBoard logs or an MLflow store",
        description="An export file goes to a server with --url, else into the database. TensorBoard "
                    "and MLflow runs go to a server (--url, default the local `optiscope serve`); "
                    "importing the same source again stores nothing new.")
    imp.add_argument("source", help="export file; with --from tensorboard a log directory; with --from "
                     "mlflow a tracking URI, optionally ending in /<experiment name or id>")
    imp.add_argument("--from", dest="kind", choices=("optiscope", "tensorboard", "mlflow"),
                     default="optiscope",
                     help="what SOURCE is (default: an Optiscope export file)")
    imp.add_argument("--project", default=None,
                     help="project for TensorBoard/MLflow runs "
                     "(default: 'tensorboard', or the experiment name)")
    _source_flags(imp)
    imp.set_defaults(func=_import)


def _source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="work over HTTP against this server instead of a database")
    parser.add_argument("--token", help="API token for --url (default: OPTISCOPE_TOKEN)")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite under OPTISCOPE_HOME)")


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    settings = Settings()
    update = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "db", None):
        update["database_url"] = args.db
    return settings.model_copy(update=update) if update else settings


def _session(settings: Settings) -> Session:
    from server.db import make_engine, make_sessionmaker
    from server.migrate import upgrade

    upgrade(settings.db_url)
    return make_sessionmaker(make_engine(settings.db_url))()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.access_log import uvicorn_log_config
    from server.auth import ensure_local_token, list_tokens
    from server.main import create_app
    from server.private_files import private_dir, tighten_sqlite_files, write_private_text
    from server.slow_clients import protocol_class

    settings = _settings(args, host=args.host, port=args.port)
    home = private_dir(Path(settings.home).expanduser())
    session = _session(settings)
    try:
        if settings.uses_default_db:
            tighten_sqlite_files(home / "optiscope.db")
        if is_loopback(settings.host) and settings.uses_default_db:
            ensure_local_token(session=session, home=home)
            url_host = "127.0.0.1" if settings.host in ("localhost",) else settings.host
            url_host = f"[{url_host}]" if ":" in url_host else url_host
            server_json = {"url": f"http://{url_host}:{settings.port}"}
            write_private_text(home / "server.json", json.dumps(server_json) + "\n")
        elif not any(t.revoked_at is None for t in list_tokens(session=session)):
            print("optiscope: no API token exists yet; clients need one: optiscope token create"
                  + (f" --db {args.db}" if args.db else ""), file=sys.stderr)
    finally:
        session.close()
    app = create_app(settings)
    print(f"optiscope: serving on http://{settings.host}:{settings.port} "
          f"(database: {settings.db_url.split('@')[-1]})", file=sys.stderr, flush=True)
    # Slow or hostile clients: headers within header_timeout, idle keep-alive closed after
    # keep_alive_timeout, at most limit_concurrency connections (then 503), h11 header cap 64 KiB.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                log_config=uvicorn_log_config(), timeout_graceful_shutdown=5,
                http=protocol_class(settings.header_timeout), timeout_keep_alive=settings.keep_alive_timeout,
                limit_concurrency=settings.limit_concurrency, backlog=settings.backlog,
                h11_max_incomplete_event_size=64 * 1024)
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from server.migrate import upgrade

    from server.private_files import private_dir

    settings = _settings(args)
    if settings.uses_default_db:
        private_dir(Path(settings.home).expanduser())
    upgrade(settings.db_url, args.revision)
    print(f"database at {settings.db_url.split('@')[-1]} is at {args.revision}")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from server.auth import create_token

    given = None
    if args.from_env:
        given = os.environ.get("OPTISCOPE_TOKEN", "")
        if not given:
            print("optiscope: --from-env needs OPTISCOPE_TOKEN to be set", file=sys.stderr)
            return 2
    session = _session(_settings(args))
    try:
        row, plain = create_token(session=session, name=args.name, project=args.project, plain=given)
    except ValueError as exc:
        print(f"optiscope: {exc}", file=sys.stderr)
        return 2
    finally:
        session.close()
    print(f"token id {row.id}" + (f" (project {row.project})" if row.project else " (all projects)"),
          file=sys.stderr)
    if given is None:  # never echo a secret the caller already has (it would land in deploy logs)
        print(plain)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from server.auth import list_tokens

    session = _session(_settings(args))
    try:
        print("\t".join(("ID", "PREFIX", "NAME", "PROJECT", "CREATED", "STATE")))
        for t in list_tokens(session=session):
            state = f"revoked {t.revoked_at.isoformat()}" if t.revoked_at else "active"
            created = t.created_at.isoformat()
            fields = (t.id, f"{t.prefix}…", t.name or "-", t.project or "*", created, state)
            print("\t".join(str(f) for f in fields))
    finally:
        session.close()
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from server.auth import revoke_token

    session = _session(_settings(args))
    try:
        if not revoke_token(session=session, token_id=args.id):
            print(f"no token with id {args.id}", file=sys.stderr)
            return 1
    finally:
        session.close()
    print(f"revoked token {args.id}")
    return 0


def _client_side(name: str) -> Any:
    """The probe-side piece of a transfer over HTTP or from a peer's files (entry-point group
    ``optiscope.transfer``): the server package never imports the probe; the two are composed through entry
    points, like the CLI and the mounted dashboard (docs/ARCHITECTURE.md)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="optiscope.transfer"):
        if ep.name == name:
            return ep.load()
    raise SystemExit(f"optiscope: this needs the probe package's {name!r} (pip install 'optiscope[probe]')")


def _over_http(args: argparse.Namespace, action) -> int:  # noqa: ANN001 - (HttpSession) -> str
    ApiError, HttpSession = _client_side("api_error"), _client_side("http_session")  # noqa: N806

    try:
        with HttpSession(args.url, args.token) as http:
            print(action(http))
    except (ApiError, OSError, ValueError) as exc:
        print(f"optiscope: {exc}", file=sys.stderr)
        return 1
    return 0


def _db_run(session: Session, name_or_id: str, project: str | None):  # noqa: ANN202 - a Run
    """The run with this id, else the one run with this exact name (an ambiguous name is an error)."""
    from server import store
    from server.errors import RunNotFound

    try:
        run = store.get_run(session=session, run_id=name_or_id)
        if project is None or store.runs.project_name(session=session, run=run) == project:
            return run
    except RunNotFound:
        pass
    rows, _count = store.list_runs(session=session, q=name_or_id, project=project, limit=1000)
    exact = [r for r, _p in rows if r.name == name_or_id]
    if len(exact) != 1:
        where = f" in project {project!r}" if project else ""
        if not exact:
            raise LookupError(f"no run named or with id {name_or_id!r}{where} (list them: optiscope runs)")
        raise LookupError(f"{len(exact)} runs are named {name_or_id!r}{where}: "
                          f"{', '.join(r.id for r in exact[:10])}; pass the id instead")
    return exact[0]


def _export(args: argparse.Namespace) -> int:
    if args.url:
        export_to_file = _client_side("export_to_file")
        return _over_http(args, lambda http: "exported run {id} ({name}) to ".format_map(
            export_to_file(http, args.run, args.output, project=args.project)) + args.output)
    from server import store

    session = _session(_settings(args))
    try:
        run = _db_run(session, args.run, args.project)
        opener = gzip.open if args.output.endswith(".gz") else open
        with opener(args.output, "wb") as fh:
            for line in store.export_run(session=session, run=run):
                fh.write(line)
    except (LookupError, OSError) as exc:
        print(f"optiscope: {exc}", file=sys.stderr)
        return 1
    finally:
        session.close()
    print(f"exported run {run.id} ({run.name}) to {args.output}")
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.kind != "optiscope":
        return _client_side("import_peer")(args)
    if args.url:
        import_from_file = _client_side("import_from_file")
        return _over_http(args, lambda http: "imported run {id} ({name})".format_map(
            import_from_file(http, args.source)))
    from server import store
    from server.errors import OptiscopeError

    try:
        raw = Path(args.source).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as exc:
        print(f"optiscope: {exc}", file=sys.stderr)
        return 1
    session = _session(_settings(args))
    try:
        run = store.import_run(session=session, data=raw)
    except OptiscopeError as exc:
        print(f"import failed: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        session.close()
    print(f"imported run {run.id} ({run.name})")
    return 0
