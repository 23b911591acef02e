"""How long ``optiscope demo`` takes, as a user runs it: the README's demo times.

    python benchmarks/bench_demo.py               # the full demo and --quick, once each
    python benchmarks/bench_demo.py --reps 3 --only quick

Each run is ``optiscope demo [--quick] --exit-when-done --cpu`` in a fresh ``OPTISCOPE_HOME`` and on a
free port, its output read through a pipe (as in CI: one progress line per run and quarter, no bars).
Timed from the command's start (server start, imports and all) to its exit. The load average before
and after is printed beside each time, because on a shared machine it decides the figure more than
the code does.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_once(quick: bool) -> tuple[float, float, float, str]:
    """One demo: (wall seconds, load before, load after, the demo's own "Demo took" line)."""
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTISCOPE_")}
        argv = [sys.executable, "-m", "probe.cli", "demo", "--exit-when-done", "--cpu", "--home", home,
                "--port", str(_free_port())] + (["--quick"] if quick else [])
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - started
        if done.returncode:
            raise SystemExit(f"demo failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        said = re.search(r"Demo took [\d.]+ s", done.stdout)
        return wall, load_before, os.getloadavg()[0], said.group(0) if said else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1, help="runs of each variant (default 1)")
    parser.add_argument("--only", choices=("full", "quick"), help="run one variant only")
    args = parser.parse_args()
    variants = [v for v in ("quick", "full") if args.only in (None, v)]
    print(f"{os.cpu_count()} CPUs")
    for variant in variants:
        for rep in range(args.reps):
            wall, before, after, said = run_once(variant == "quick")
            print(f"optiscope demo{' --quick' if variant == 'quick' else ''}: {wall:.1f} s "
                  f"(load average {before:.1f} before, {after:.1f} after; the demo says: {said})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
