"""``optiscope import --from tensorboard LOGDIR`` and ``--from mlflow TRACKING_URI[/experiment]``.

Reads with the peer's own library, then sends each run to the server over HTTP. A file or run
that cannot be read (fully) is named on stderr, one line each, and everything else is imported;
the exit code is then 1 so a script notices.
"""

from __future__ import annotations

import argparse
import sys

from probe.api.http import ApiError, HttpSession
from probe.importers.model import ReadResult
from probe.importers.upload import upload


def _read(kind: str, source: str, project: str | None) -> ReadResult:
    if kind == "tensorboard":
        from probe.importers.tensorboard import read_logdir

        return read_logdir(source, project=project or "tensorboard")
    from probe.importers.mlflow import read_store

    return read_store(source, project=project)


def import_peer(args: argparse.Namespace) -> int:
    """Run the import the parsed ``optiscope import --from ...`` arguments describe."""
    try:
        with HttpSession(args.url, args.token) as http:
            http.get("/whoami")  # fail on a down server or a refused token before reading anything
            try:
                result = _read(args.kind, args.source, args.project)
            except (ImportError, OSError, LookupError):
                raise
            except Exception as exc:  # noqa: BLE001 - the peer's library failed on this source: say so
                raise LookupError(f"{args.source}: {type(exc).__name__}: {exc}") from None
            for problem in result.problems:
                print(f"optiscope import: {problem}", file=sys.stderr)
            created = 0
            for imported in result.runs:
                done = upload(http, imported)
                created += done.created
                state = "new" if done.created else ("updated" if done.points or done.arrays else "unchanged")
                print(f"{done.run_id}  {done.name}  {state}: {done.points} points, {done.arrays} arrays")
    except (ApiError, ImportError, OSError, LookupError, ValueError) as exc:
        print(f"optiscope import: {exc}", file=sys.stderr)
        return 1
    print(f"optiscope import: {len(result.runs)} runs from {args.source} ({created} new) on {http.url}"
          + (f"; {len(result.problems)} problems above" if result.problems else ""), file=sys.stderr)
    return 1 if result.problems else 0
