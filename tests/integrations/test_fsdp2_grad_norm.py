"""FSDP2 (``fully_shard``) under real ``torchrun`` (2 gloo CPU processes) into a real server: the stored
``grad_norm`` and every ``grad_norm/L`` are the norms of the whole gradient, not of rank 0's shard."""

from __future__ import annotations

import pytest

from tests.integrations.stored import stored_series
from tests.integrations.torchrun import client_env, torchrun

pytestmark = pytest.mark.distributed

STEPS = 4

JOB = '''
import json, torch, torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
import probe

STEPS = %d
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
mesh = init_device_mesh("cpu", (2,))
g = torch.Generator().manual_seed(0)
# 7 rows: uneven shards (4 + 3); the (1, 16) head: rank 1 holds none of its rows
model = nn.Sequential(nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 1))
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.5)
for layer in (model[0], model[2], model[4]):
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
run = probe.init(project="fsdp2")
monitor = probe.attach(model, opt, run=run, log_every=2, budget=None, spectra_every=None, neuron_every=None)
data = torch.Generator().manual_seed(10 + rank)  # each rank its own batch
truth, shard0 = {"grad_norm": []}, []
for step in range(STEPS):
    x, y = torch.randn(8, 8, generator=data), torch.randn(8, 1, generator=data)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    full = {n: p.grad.full_tensor() for n, p in model.named_parameters()}  # the whole gradient, gathered
    for n, gr in full.items():
        truth.setdefault(f"grad_norm/{n}", []).append(float(gr.norm()))
    truth["grad_norm"].append(float(torch.cat([gr.reshape(-1) for gr in full.values()]).norm()))
    shard0.append(float(torch.cat([p.grad.to_local().reshape(-1) for p in model.parameters()]).norm()))
    opt.step()
monitor.detach()
run.finish()
dist.barrier()
dist.destroy_process_group()
if rank == 0:
    print(json.dumps({"run_id": run.id, "truth": truth, "shard0": shard0}))
''' % STEPS


def test_fsdp2_grad_norm_is_the_global_norm(live_server, tmp_path) -> None:  # noqa: ANN001
    srv = live_server()
    out = torchrun(JOB, tmp_path, client_env(srv))
    series = stored_series(srv.api, srv.headers, out["run_id"])
    truth = out["truth"]
    assert len(truth) == 1 + 6  # the total and 6 parameters (3 weights, 3 biases)
    for key, values in truth.items():
        assert series[key][0] == list(range(STEPS)), key  # every step once, every layer present
        assert series[key][1] == pytest.approx(values, rel=1e-5), key
    # rank 0's shard norm, what was stored before, is materially different: the check has teeth
    assert not out["shard0"] == pytest.approx(truth["grad_norm"], rel=1e-2)
