"""Statistics over runs: seed groups, time-to-target with confidence intervals, the ranked "why".

Pure functions over plain numbers (no database, no HTTP): ``server.store.analysis`` reads the runs and
``server.api.analysis`` serves the answers, so every statistic here is unit-testable on constructed data.

* ``groups``: runs grouped by config keys / tags (by default everything but the seed).
* ``crossing``: where one run first crossed a target, and how finely the logging cadence resolves it.
* ``speedup``: baseline ÷ run, and its bootstrap 95 % interval over seeds (paired by seed when possible).
* ``time_to_target``: the group table that composes the three.
* ``layers`` and ``why``: per-layer diagnostics at matched progress, grouped by layer role and ranked.
"""

from server.analysis.crossing import Crossing, first_crossing, run_crossing
from server.analysis.groups import Group, RunData, group_runs, matches, parse_filters
from server.analysis.speedup import SpeedupCI, bootstrap_speedup, speedup_ratio
from server.analysis.time_to_target import GroupRow, group_time_to_target
from server.analysis.why import WhyResult, WhyRow, why

__all__ = [
    "Crossing", "first_crossing", "run_crossing", "Group", "RunData", "group_runs", "matches", "parse_filters",
    "SpeedupCI", "bootstrap_speedup", "speedup_ratio", "GroupRow", "group_time_to_target", "WhyResult",
    "WhyRow", "why",
]
