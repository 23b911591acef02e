"""The ``optiscope`` console script.

Each package contributes its own sub-commands through the ``optiscope.cli`` entry-point group
(see ``pyproject.toml``), so this dispatcher imports neither the server nor the dashboard: a
training machine that installed only the ``probe`` extra still gets ``optiscope sync``, and the
server's commands appear once the ``server`` extra is installed. The probe's own HTTP commands
(``optiscope runs``) are built in: they need only what the dispatcher's package needs.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from importlib.metadata import entry_points
from typing import Sequence

# Commands of this package itself, registered without entry-point metadata (an editable install
# made before they existed still has them); an installed entry point of the same name wins.
_BUILT_IN = {"runs": "probe.api.cli"}


def build_parser() -> argparse.ArgumentParser:
    """Build the parser from every installed ``optiscope.cli`` entry point."""
    parser = argparse.ArgumentParser(
        prog="optiscope",
        description="Optimizer diagnostics for PyTorch: probe, store and dashboard.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    installed = sorted(entry_points(group="optiscope.cli"), key=lambda e: e.name)
    for name, module in _BUILT_IN.items():
        if name not in {e.name for e in installed}:
            import_module(module).register(subparsers)
    for entry in installed:
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
