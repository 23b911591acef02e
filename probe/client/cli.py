"""``optiscope sync``: deliver spooled runs (offline mode, or data kept through an outage)."""

from __future__ import annotations

import argparse
import sys

from probe.client.config import ClientConfig
from probe.client.sync import sync_home
from probe.client.transport import Transport


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``optiscope sync`` to the ``optiscope`` console script (entry point ``optiscope.cli``)."""
    parser = subparsers.add_parser(
        "sync",
        help="send spooled runs (offline runs, data kept during an outage) to the server",
        description=(
            "Replays every run spooled under $OPTISCOPE_HOME/spool, oldest first. Safe to repeat: "
            "batches already on the server are recognised by id and not stored twice."
        ),
    )
    parser.add_argument("--url", help="server URL (default: OPTISCOPE_URL, then $OPTISCOPE_HOME/server.json)")
    parser.add_argument("--token", help="API token (default: OPTISCOPE_TOKEN, then $OPTISCOPE_HOME/local-token)")
    parser.add_argument("--home", help="data directory holding spool/ (default: OPTISCOPE_HOME or ~/.optiscope)")
    parser.add_argument("--run", action="append", dest="runs", metavar="RUN_ID", help="only this run (repeatable)")
    parser.set_defaults(func=_sync)


def _sync(args: argparse.Namespace) -> int:
    config = ClientConfig.from_env(args.url, args.token, args.home)
    transport = Transport(config.api, config.token, timeout=config.timeout, max_attempts=config.max_attempts)
    try:
        reports = sync_home(config.spool_dir, transport, args.runs)
    finally:
        transport.close()
    if not reports:
        print(f"optiscope sync: nothing to send in {config.spool_dir}")
        return 0
    for report in reports:
        print(report.line())
        for note in report.notes[:5]:
            print(f"    {note}")
    sent = [r for r in reports if r.ok and not r.skipped]
    failed = [r for r in reports if not r.ok]
    print(
        f"optiscope sync: {len(sent)} runs synced to {config.url}, {sum(r.records for r in sent)} records, "
        f"{len(failed)} failed, {sum(1 for r in reports if r.skipped)} skipped"
    )
    if failed:
        print("optiscope sync: failed runs stay on disk; fix the cause and run it again", file=sys.stderr)
        return 1
    return 0
