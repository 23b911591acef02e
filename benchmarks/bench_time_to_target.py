"""Time-to-target with seeds: the README's table, from the demo's real trainings and the server's statistics.

Run: ``python benchmarks/bench_time_to_target.py --seeds 5`` (the full demo 5 times over, one seed each
time: about 4 minutes on an idle 2-core CPU, 10+ when the machine is shared); ``--quick`` for the
demo's tiny budgets (easier targets). ``--home DIR`` keeps the runs for the dashboard afterwards.

It runs ``optiscope demo --seeds N --exit-when-done`` in-process (``probe.demo.run_demo``), so the
numbers are the ones the demo prints and the compare page shows: ``GET /analysis/time-to-target`` per
comparison — steps and wall seconds to the target as mean ± sd over seeds, the evaluation interval
(the resolution of every crossing), and the speedup against the baseline group with its bootstrap 95 %
interval, paired by seed; an interval that contains 1 reads "no difference at this n". Then the top
"why" lines (``GET /analysis/why``) for NorMuon vs AdamW and NorMuon vs Muon on the GPT task, matched
where each run first reached the target. Prints Markdown tables and the machine they ran on.

Wall time is what a user waits for on *this* machine with two trainings sharing the CPU: a step
speedup becomes a smaller wall speedup when the optimizer step costs more (Newton–Schulz).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from probe.demo.orchestrator import DemoConfig, format_group_table, format_speedup, format_spread, run_demo


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f} at the start"


def markdown(table: dict[str, Any]) -> str:
    """One comparison as a Markdown table (the README's format)."""
    sign = "≥" if table["direction"] == "above" else "≤"
    lines = [f"**{table['group']}** — {table['key']} {sign} {table['target']:g}", "",
             "| group | n | steps (mean ± sd) | eval every | wall s (mean ± sd) | ×steps [95 % CI] "
             "| ×wall time [95 % CI] | ×samples [95 % CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table["rows"]:
        n = f"{row['n_reached']}/{row['n']}" if row["n_reached"] != row["n"] else str(row["n"])
        cells = [format_spread(row, "steps", ".0f"), str(row.get("eval_interval") or "—"),
                 format_spread(row, "time_s", ".1f"), *(format_speedup(row, m) for m in ("steps", "time", "samples"))]
        lines.append(f"| {row['group']} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the demo's tiny budgets (a smoke run)")
    parser.add_argument("--home", type=Path, default=None, help="keep the runs here (default: a temporary dir)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be >= 2: an interval needs two seeds per group")
    machine = _machine()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-ttt-"))
    log = io.StringIO()  # the demo's own output; the tables are printed below
    started = time.monotonic()
    result = run_demo(DemoConfig(home=home, quick=args.quick, exit_when_done=True, workers=args.workers,
                                 gpu=False, seeds=args.seeds, port=0, out=log))
    wall = time.monotonic() - started
    if not result.ok:
        print(log.getvalue(), file=sys.stderr)
        print("some runs failed: the table below would be wrong", file=sys.stderr)
        return 1
    print(f"Time to target, {args.seeds} seeds per group, {'quick' if args.quick else 'full'} demo "
          f"({len(result.runs)} runs, {wall:.0f} s) on {machine}; data in {home}\n")
    for table in result.tables:
        print(markdown(table))
        print()
        for line in table.get("why") or []:
            print(f"* {line}")
        if table.get("why"):
            print()
    print("Plain-text tables as the demo prints them:\n")
    for table in result.tables:
        print(format_group_table(table))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
