"""The ``optiscope`` console script.

Each package contributes its own sub-commands through the ``optiscope.cli`` entry-point group
(see ``pyproject.toml``), so this dispatcher imports neither the server nor the dashboard: a
training machine that installed only the ``probe`` extra still gets ``optiscope sync``, and the
server's commands appear once the ``server`` extra is installed.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Build the parser from every installed ``optiscope.cli`` entry point."""
    parser = argparse.ArgumentParser(
        prog="optiscope",
        description="Optimizer diagnostics for PyTorch: probe, store and dashboard.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group="optiscope.cli"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:  # an extra that is not installed: say so instead of crashing
            stub = subparsers.add_parser(entry.name, help=f"(unavailable: {exc.name} is not installed)")
            stub.set_defaults(func=_missing_extra(entry.name, exc))
            continue
        register(subparsers)
    return parser


def _missing_extra(name: str, exc: ImportError):
    def run(_args: argparse.Namespace) -> int:
        print(
            f"optiscope: the '{name}' commands need a package that is not installed ({exc}). "
            "Install the matching extra, e.g. pip install 'optiscope[all]'.",
            file=sys.stderr,
        )
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
