"""Rank policy with a real gloo process group of 2 processes.

Default: only rank 0 logs. ``log_all_ranks=True``: both ranks log into rank 0's run (the id is
broadcast), rank 1's keys tagged ``rank1.``. Offline mode keeps the processes free of sockets;
the spools are then synced into the real server in-process.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from probe.client.sync import sync_home
from probe.client.transport import Transport
from tests.gloo_ranks import run_two_ranks

from .conftest import InProcess

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    import probe
    from probe.client.config import ClientConfig

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    settings = ClientConfig.from_env(flush_interval=0.01)
    default = probe.init("dist", mode="offline", settings=settings)
    shared = probe.init("dist", mode="offline", settings=settings, log_all_ranks=True)
    for step in range(10):
        loss = torch.tensor(float(rank * 100 + step))
        default.log({"loss": loss}, step=step)
        shared.log({"loss": loss}, step=step)
    shared.log_event("nonfinite", "per-rank alert", step=3)
    default.finish()
    shared.finish()
    dist.barrier()
    print(json.dumps({"rank": rank, "default": [default.id, default.mode], "shared": [shared.id, shared.mode],
                      "world_size": shared.world_size}))
    dist.destroy_process_group()
    """
)


@pytest.mark.distributed
def test_rank_policy_with_two_gloo_processes(server: InProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    rank0, rank1 = run_two_ranks(WORKER, home)

    assert rank0["default"][1] == "offline" and rank1["default"][1] == "disabled"
    assert rank0["shared"][0] == rank1["shared"][0]  # one run id, broadcast by rank 0
    assert rank1["shared"][1] == "offline" and rank0["world_size"] == 2
    spooled = sorted(p.name for p in (home / "spool").iterdir())
    assert spooled == sorted([rank0["default"][0], rank0["shared"][0], rank0["shared"][0] + ".r1"])

    reports = sync_home(home / "spool", Transport("http://testserver/api/v1", server.token, client=server.client))
    assert all(r.ok for r in reports) and len(reports) == 3
    shared_id, default_id = rank0["shared"][0], rank0["default"][0]
    assert server.counts(default_id) == {"loss": 10}
    assert server.counts(shared_id) == {"loss": 10, "rank1.loss": 10}
    (series,) = server.get("/series", run_id=shared_id, key="rank1.loss")["series"]
    assert series["y"] == [100.0 + s for s in range(10)]
    stored = server.get(f"/runs/{shared_id}")
    assert stored["status"] == "finished" and stored["rank"] == 0 and stored["world_size"] == 2
    events = server.get(f"/runs/{shared_id}/events")["data"]
    assert sorted(e["data"].get("rank", 0) for e in events) == [0, 1]
    shutil.rmtree(home, ignore_errors=True)
