"""``optiscope runs`` (list / search), ``optiscope runs show`` and ``optiscope runs delete``.

These commands talk to a server over HTTP with the read client (:mod:`probe.api`), so they work
from any machine that installed the ``probe`` extra. A run is named by its id or by its exact
name; a name that matches several runs is refused with their ids, since deleting the wrong run
loses work. Every failure (unknown run, server down, refused token) is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from probe.api.http import ApiError, HttpSession
from probe.api.resolve import resolve_run

_COLUMNS = ("ID", "NAME", "PROJECT", "STATUS", "LAST_STEP", "CREATED", "TAGS")


def connection_flags(*, nested: bool = False) -> argparse.ArgumentParser:
    """``--url`` and ``--token``, shared by every command that talks to a server over HTTP.

    ``nested``: for an action under a command that has the flags too; its unset flags then leave
    the command's value alone (``optiscope runs --url U show X`` keeps ``U``).
    """
    parent = argparse.ArgumentParser(add_help=False)
    unset = {"default": argparse.SUPPRESS} if nested else {}
    parent.add_argument("--url", help="server URL (default: OPTISCOPE_URL, then the local `optiscope serve`)",
                        **unset)
    parent.add_argument("--token", help="API token (default: OPTISCOPE_TOKEN, then the local server's token)",
                        **unset)
    return parent


def _filter_flags(*, nested: bool = False) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS if nested else None)
    parent.add_argument("--name", help="only runs whose name contains this (case-insensitive)")
    parent.add_argument("--project", help="only runs of this project")
    parent.add_argument("--tag", action="append", help="only runs with this tag (repeatable: all)")
    parent.add_argument("--status", choices=("running", "finished", "crashed"),
                        help="only runs in this state")
    parent.add_argument("--config", action="append", metavar="KEY=VALUE",
                        help="only runs whose config has KEY (dotted for nesting) equal to VALUE "
                        "(repeatable)")
    parent.add_argument("--limit", type=int, help="show at most this many runs, newest first "
                        "(default 50)")
    parent.add_argument("--json", action="store_true", help="print the runs as JSON lines instead of a table")
    return parent


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``optiscope runs`` to the ``optiscope`` console script."""
    conn, filters = connection_flags(), _filter_flags()
    nested_conn, nested_filters = connection_flags(nested=True), _filter_flags(nested=True)
    runs = subparsers.add_parser(
        "runs", parents=[conn, filters], help="list, search, show and delete runs on a server",
        description="Without an action, lists the runs matching the filters (newest first) with their ids.")
    runs.set_defaults(func=_guarded(_list), tag=[], config=[], limit=50)
    actions = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    lst = actions.add_parser("list", parents=[nested_conn, nested_filters],
                             help="list runs matching the filters (the default)")
    lst.set_defaults(func=_guarded(_list))
    show = actions.add_parser("show", parents=[nested_conn],
                              help="a run's metadata, config, summary and logged keys")
    show.add_argument("run", help="run id, or the exact name of one run")
    show.add_argument("--project", default=argparse.SUPPRESS, help="look the name up in this project only")
    show.set_defaults(func=_guarded(_show))
    delete = actions.add_parser("delete", parents=[nested_conn], help="delete runs and all their data")
    delete.add_argument("run", nargs="+", help="run id, or the exact name of one run (several allowed)")
    delete.add_argument("--project", default=argparse.SUPPRESS, help="look names up in this project only")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(func=_guarded(_delete))


def _guarded(
    command: Callable[[argparse.Namespace, HttpSession], int],
) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` with a session; an :class:`ApiError` or bad input is one stderr line, exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            with HttpSession(args.url, args.token) as http:
                return command(args, http)
        except (ApiError, ValueError) as exc:
            print(f"optiscope: {exc}", file=sys.stderr)
            return 1

    return run


def _list(args: argparse.Namespace, http: HttpSession) -> int:
    for raw in args.config:
        if "=" not in raw or not raw.partition("=")[0]:
            raise ValueError(f"--config expects KEY=VALUE, got {raw!r}")
    if args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    answer = http.get("/runs", project=args.project, status=args.status, q=args.name, tag=args.tag,
                      config=args.config, limit=min(args.limit, 1000))
    runs = answer["data"][: args.limit]
    if args.json:
        for run in runs:
            print(json.dumps(run))
        return 0
    rows = [(r["id"], r["name"], r["project"], r["status"],
             "-" if r["last_step"] is None else str(r["last_step"]),
             r["created_at"][:19].replace("T", " "), ",".join(r["tags"])) for r in runs]
    _table(_COLUMNS, rows)
    shown = f"{len(runs)} of {answer['count']}" if answer["count"] > len(runs) else str(len(runs))
    print(f"{shown} runs" + (" (more with --limit)" if answer["count"] > len(runs) else ""), file=sys.stderr)
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    for line in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


def _show(args: argparse.Namespace, http: HttpSession) -> int:
    run = resolve_run(http, args.run, project=args.project)
    keys = http.get(f"/runs/{run['id']}/keys")
    for field in ("id", "name", "project", "status", "optimizer", "host", "world_size", "created_at",
                  "finished_at", "last_step", "alerts_count"):
        print(f"{field + ':':<14}{_text(run.get(field))}")
    print(f"{'tags:':<14}{', '.join(run['tags']) or '-'}")
    print("config:" + ("" if run["config"] else " -"))
    for key, value in _flat(run["config"]):
        print(f"  {key} = {_text(value)}")
    print("summary (last values):" + ("" if run["summary"] else " -"))
    for key, value in sorted(run["summary"].items()):
        print(f"  {key} = {_text(value)}")
    print(f"scalars: {len(keys['scalars'])} keys")
    for series in keys["scalars"]:
        print(f"  {series['key']}  {series['count']} points, "
              f"steps {series['first_step']}..{series['last_step']}")
    if keys["arrays"]:
        print(f"arrays: {len(keys['arrays'])} keys")
        for array in keys["arrays"]:
            print(f"  {array['key']} [{array['layer'] or '-'}]  {array['count']} records, "
                  f"steps {array['first_step']}..{array['last_step']}")
    return 0


def _flat(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in sorted(mapping.items()):
        if isinstance(value, dict) and value:
            out.extend(_flat(value, f"{prefix}{key}."))
        else:
            out.append((prefix + key, value))
    return out


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _delete(args: argparse.Namespace, http: HttpSession) -> int:
    runs = [resolve_run(http, name, project=args.project) for name in args.run]  # all resolve, or none goes
    runs = list({r["id"]: r for r in runs}.values())
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("deleting needs confirmation: pass --yes (stdin is not a terminal)")
        listing = ", ".join(f"{r['id']} ({r['name']})" for r in runs)
        if input(f"delete {len(runs)} run(s) and all their data: {listing}? [y/N] ").strip().lower() != "y":
            print("nothing deleted", file=sys.stderr)
            return 1
    for run in runs:
        http.request("DELETE", f"/runs/{run['id']}")
        print(f"deleted run {run['id']} ({run['name']})")
    return 0
