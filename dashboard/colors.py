"""One colour per run, derived from its id: the same run has the same colour in every panel, on
every page and after every reload (the position-based palette made one run orange in one panel and
blue in the next, and repeated from the 11th run).

A hash of the id picks from 24 colours chosen to be told apart on white (plotly's Dark24); the
dash style comes from other bits of the same hash, so two runs of a 20-run comparison that share a
colour still differ in dash 3 times out of 4.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

RUN_PALETTE = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86",
    "#EB663B", "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE",
    "#862A16", "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
)
RUN_DASHES = ("solid", "dash", "dot", "dashdot")


def _run_hash(run_id: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and the colour must survive reloads
    return int.from_bytes(hashlib.blake2b(run_id.encode("utf-8"), digest_size=8).digest(), "big")


def run_color(run_id: str) -> str:
    """The run's colour (``#RRGGBB``), a pure function of its id."""
    return RUN_PALETTE[_run_hash(run_id) % len(RUN_PALETTE)]


def run_dash(run_id: str) -> str:
    """The run's plotly line dash, independent of its colour's choice."""
    return RUN_DASHES[(_run_hash(run_id) // len(RUN_PALETTE)) % len(RUN_DASHES)]


def group_color(label: str, run_ids: Sequence[str]) -> str:
    """A seed group's colour: its run's colour when it holds one run (ungrouped, a run keeps its
    colour), else one derived from the group's label, so a group too looks the same in every panel."""
    ids = list(run_ids)
    return run_color(ids[0]) if len(ids) == 1 else run_color(f"group:{label}")
