"""Colours on the compare page: every run in its own colour (``colors.run_color``) in every panel
and table, every group in ``colors.group_color``; shared by the sections' figure builders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import html

from ... import colors
from ... import figures as F
from ...colors import run_color

__all__ = ["group_color", "paint", "swatch"]


def group_color(group: Mapping[str, Any]) -> str:
    """The colour of a group from ``/analysis/groups`` (``colors.group_color``)."""
    return colors.group_color(group["group"], group.get("run_ids") or [])


def swatch(run_id: str) -> html.Span:
    """A dot in the run's colour, before its name in tables (``data-color`` for tests and tools)."""
    c = run_color(run_id)
    return html.Span("● ", className="run-swatch", style={"color": c}, **{"data-color": c})


def paint(fig, colors: Sequence[str]):
    """Give the first ``len(colors)`` traces of ``fig`` these colours (line and marker): the figure
    builders colour traces by position, the compare page by run (``colors.run_color``)."""
    if F.is_empty(fig):
        return fig
    for trace, c in zip(fig.data, colors):
        if trace.type == "box":
            trace.marker = {"color": c}
            trace.line = {"color": c}
        else:
            trace.line = {**(trace.line.to_plotly_json() if trace.line else {}), "color": c}
            if getattr(trace, "marker", None) is not None and trace.mode and "markers" in trace.mode:
                trace.marker = {**trace.marker.to_plotly_json(), "color": c}
    return fig
