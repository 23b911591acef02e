"""``optiscope demo``: the command a new user runs first (registered through the ``optiscope.cli`` entry point).

Only argument parsing lives here; the work is in :mod:`probe.demo.orchestrator`, imported when the
command runs so that ``optiscope --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

__all__ = ["register"]

# ``kill <demo pid>`` (SIGTERM), a closed terminal (SIGHUP) and Ctrl-C (SIGINT) all stop the demo
# the same way: its trainings and its ``optiscope serve`` child end with it, and the port is freed.
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``optiscope demo`` to the ``optiscope`` console script."""
    parser = subparsers.add_parser(
        "demo",
        help="serve the dashboard and train real models live with every optimizer",
        description=(
            "Start the server and dashboard on localhost (embedded SQLite under OPTISCOPE_HOME), train small "
            "real models live with AdamW, Muon, NorMuon, KFAC, FOP and InfoBatch, then print a time-to-target "
            "comparison. Re-running adds new runs; nothing is deleted."
        ),
    )
    parser.add_argument("--port", type=int, default=None,
                        help="port on 127.0.0.1 (default 8000, or a free one when 8000 is taken)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: all trainings end within a minute")
    parser.add_argument("--exit-when-done", action="store_true",
                        help="stop the server once the trainings and the comparison are done")
    parser.add_argument("--home", type=Path, default=None,
                        help="data directory (default $OPTISCOPE_HOME or ~/.optiscope)")
    parser.add_argument("--workers", type=int, default=None,
                        help="trainings at a time (default 2 on a small CPU machine)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run every comparison with N seeds (default 1); the tables then show groups "
                             "with spreads and bootstrap 95%% intervals")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from probe.demo.orchestrator import DemoConfig, run_demo

    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"optiscope demo: --workers must be >= 1, got {args.workers}")
    if args.seeds < 1:
        raise SystemExit(f"optiscope demo: --seeds must be >= 1, got {args.seeds}")
    home = args.home or Path(os.environ.get("OPTISCOPE_HOME") or "~/.optiscope")
    config = DemoConfig(
        home=Path(home).expanduser(),
        port=args.port,
        quick=args.quick,
        exit_when_done=args.exit_when_done,
        workers=args.workers,
        seeds=args.seeds,
        gpu=False if args.cpu else None,
    )
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt  # unwinds through run_demo's cleanup: workers and server stop too

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        result = run_demo(config)
    except KeyboardInterrupt:
        return 128 + (received[0] if received else signal.SIGINT)
    except RuntimeError as exc:
        print(f"optiscope demo: {exc}")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if result.ok else 1
