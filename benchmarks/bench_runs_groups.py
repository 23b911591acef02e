"""Runs-table grouping benchmark: how long the "group by" rows take over a 10,000-run sweep.

A real ``optiscope serve`` (SQLite) holds the sweep of ``tests/server/test_run_query.seed_sweep``
(10,000 runs, 4 optimizers, 200 learning rates); the dashboard's grouping reads every matching run
through ``GET /runs`` in pages of 1,000 (``dashboard.pages.runs_groups.fetch_matching``) and groups
them. Printed: the read, the grouping, and the whole, median of ``--repeat``, for "group by
optimizer" and "everything but the seed" (one group per learning rate and optimizer in the config).

Run: ``.venv/bin/python benchmarks/bench_runs_groups.py [--runs 10000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from dashboard.api import ApiClient  # noqa: E402
from dashboard.config import DashboardConfig  # noqa: E402
from dashboard.pages import runs_groups as RG  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402
from tests.pg_cluster import free_port  # noqa: E402
from tests.server.test_run_query import seed_sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-rgroups-"))
    server = LiveServer(port=free_port(), home=home, db_url=None, env={}).start()
    try:
        engine = create_engine(f"sqlite:///{home / 'optiscope.db'}")
        project, _ = seed_sweep(sessionmaker(engine), n=args.runs)
        engine.dispose()
        api = ApiClient(DashboardConfig(api_url=server.api)).as_user(server.token)
        print(f"{args.runs:,} runs; median of {args.repeat}")
        print(f"{'group by':<26}{'groups':>8}{'read (s)':>10}{'group (s)':>11}{'total (s)':>11}")
        for label, keys in (("optimizer", ["optimizer"]), ("everything but the seed", [RG.ALL_BUT_SEED])):
            reads, groups_t, n = [], [], 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                runs, _total = RG.fetch_matching(api, project=project, status=None, tag=None, q=None, filters=[],
                                                 limit=args.runs)
                t1 = time.perf_counter()
                groups = RG.group_runs(runs, keys, "loss")
                RG.group_table_rows(groups, keys, "loss")
                t2 = time.perf_counter()
                reads.append(t1 - t0)
                groups_t.append(t2 - t1)
                n = len(groups)
            r, g = statistics.median(reads), statistics.median(groups_t)
            print(f"{label:<26}{n:>8}{r:>10.2f}{g:>11.2f}{r + g:>11.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
