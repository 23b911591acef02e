"""Two real processes in a gloo process group, for the tests of rank-aware code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.pg_cluster import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_two_ranks(script: str, home: Path, timeout: float = 120) -> list[dict[str, Any]]:
    """Run the Python source ``script`` as ranks 0 and 1 (``torchrun``'s environment, ``OPTISCOPE_HOME``
    = ``home``); return what each rank printed last, parsed as JSON, in rank order."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "WORLD_SIZE": "2", "OPTISCOPE_HOME": str(home)}
        env.pop("OPTISCOPE_RUN_ID", None)
        procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs
