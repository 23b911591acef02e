"""Run a script under real ``torchrun`` (2 CPU processes, gloo) and collect what rank 0 printed last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.pg_cluster import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def client_env(srv: Any) -> dict[str, str]:
    """The environment a job's ``optiscope`` client needs to log to the live server ``srv``
    (``tests.conftest.LiveServer``): its URL, a token, and a client home of its own."""
    return {"OPTISCOPE_URL": srv.url, "OPTISCOPE_TOKEN": srv.token, "OPTISCOPE_HOME": str(srv.home / "client")}


def torchrun(script: str, tmp_path: Path, env: dict[str, str], timeout: float = 240) -> dict[str, Any]:
    path = tmp_path / "job.py"
    path.write_text(script)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(path)]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1"}
    full_env.pop("OPTISCOPE_RUN_ID", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])
