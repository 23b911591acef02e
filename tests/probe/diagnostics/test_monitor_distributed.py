"""The Monitor on FSDP2 (DTensor) parameters, 2 gloo processes.

Ranks do not measure the same steps (here forced by different cadences; in training the overhead
budget decides per rank from its own timings), so any collective inside a measurement would leave one
rank waiting for the other. The Monitor measures each rank's local shard: no collective, no hang, and
the numbers are the shard's.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.gloo_ranks import run_two_ranks

WORKER = textwrap.dedent(
    """
    import datetime, json, math
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    import probe
    from tests.probe.diagnostics.conftest import RecordingRun

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
    rank = dist.get_rank()
    torch.manual_seed(0)
    # FSDP2 shards rows: 8 of the first layer's 16 on each rank; the last layer's single row leaves
    # rank 1 an empty shard
    model = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    for module in (model[0], model[2], model):
        fully_shard(module)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    every = 1 if rank == 0 else 2  # the ranks disagree on which steps are measured
    run = RecordingRun()
    mon = probe.attach(model, opt, run=run, budget=None, log_every=1, scalars_every=1, update_every=every,
                       neuron_every=every, spectra_every=every, vectors_every=every)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):  # rank 1 measures steps 0, 2 and 4
        opt.zero_grad()
        model(torch.randn(4, 8, generator=gen)).square().mean().backward()
        opt.step()
    mon.detach()
    local = model[0].weight.to_local().detach()
    last = run.logs[-1][1]
    result = {
        "rank": rank,
        "errors": mon.errors,
        "steps": [s for s, _ in run.logs],
        "spectral_norm": last.get("sv.weight.spectral_norm/0.weight"),
        "expected_spectral_norm": torch.linalg.svdvals(local.double())[0].item(),
        "update_ratio_logged": "update_ratio/0.weight" in last,
        "one_row_layer_logged": any(k.endswith("/2.weight") for _, m in run.logs for k in m),
        "neuron_rows": [len(a["values"]) for a in run.arrays if a["key"] == "neuron.update_norm" and a["layer"] == "0.weight"][:1],
    }
    dist.barrier()
    print(json.dumps(result))
    dist.destroy_process_group()
    """
)


@pytest.mark.distributed
def test_fsdp2_parameters_are_measured_per_local_shard_without_collectives(tmp_path: Path) -> None:
    for result in run_two_ranks(WORKER, tmp_path / "home"):
        assert result["errors"] == {}, result
        assert result["steps"] == [0, 1, 2, 3, 4]
        assert result["spectral_norm"] == pytest.approx(result["expected_spectral_norm"], rel=1e-5)
        assert result["update_ratio_logged"]
        assert result["neuron_rows"] == [8]  # this rank's 8 of the 16 output neurons
        assert result["one_row_layer_logged"] == (result["rank"] == 0)  # an empty shard is left out
