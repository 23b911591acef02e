"""A tiny model trained through ``accelerate.Accelerator().prepare(model, opt, loader)`` with
``probe.attach``, checked through a real server's HTTP API: the true gradient norm, every layer once, steps contiguous.

Gradient accumulation (2 micro-batches per update) makes the check sharp: ``AcceleratedOptimizer.step``
runs the real optimizer on every second call only, so the probe must log one step per real update, with
the norm of the accumulated gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

import probe
from tests.integrations.stored import stored_run, stored_series

UPDATES = 5
ACCUMULATE = 2


def test_accelerate_prepared_model_and_optimizer(live_server) -> None:  # noqa: ANN001
    srv = live_server()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(UPDATES * ACCUMULATE * 4, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    assert type(opt).__name__ == "AcceleratedOptimizer"

    run = probe.init(project="accelerate", url=srv.url, token=srv.token, home=srv.home / "client")
    monitor = probe.attach(model, opt, run=run, log_every=2, budget=None)
    truth: list[float] = []
    for xb, yb in loader:
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            if accelerator.sync_gradients:  # the real update: what the probe must see
                truth.append(float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()))
            opt.step()
            opt.zero_grad()
    monitor.detach()
    run.finish()

    assert len(truth) == UPDATES
    series = stored_series(srv.api, srv.headers, run.id)
    assert series["grad_norm"][0] == list(range(UPDATES))  # one step per real update, contiguous
    assert series["grad_norm"][1] == pytest.approx(truth, rel=1e-5)
    names = {n for n, _ in accelerator.unwrap_model(model).named_parameters()}
    assert {k.split("/", 1)[1] for k in series if k.startswith("grad_norm/")} == names
    for name in names:
        assert series[f"grad_norm/{name}"][0] == list(range(UPDATES)), name  # every layer, every step once
    assert stored_run(srv.api, srv.headers, run.id)["status"] == "finished"


TORCHRUN_JOB = '''
import json, torch
from torch import nn
import accelerate
import probe

UPDATES, ACCUMULATE = %d, %d
accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
assert accelerator.num_processes == 2 and torch.distributed.get_backend() == "gloo"
g = torch.Generator().manual_seed(0)
x = torch.randn(UPDATES * ACCUMULATE * 4 * 2, 8, generator=g)  # 4 per rank and micro-batch
y = x @ torch.randn(8, 1, generator=g)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
model, opt, loader = accelerator.prepare(model, opt, loader)
run = probe.init(project="accelerate-ddp")  # on every rank: rank 0 logs, the others get a disabled run
monitor = probe.attach(model, opt, run=run, log_every=2, budget=None)
truth = []
for xb, yb in loader:
    with accelerator.accumulate(model):
        accelerator.backward(nn.functional.mse_loss(model(xb), yb))
        if accelerator.sync_gradients:  # DDP has averaged the accumulated gradients: the real update's
            truth.append(float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()))
        opt.step()
        opt.zero_grad()
monitor.detach()
run.finish()
accelerator.wait_for_everyone()
if accelerator.is_main_process:
    print(json.dumps({"run_id": run.id, "truth": truth, "wrapped": type(model).__name__,
                      "names": [n for n, _ in accelerator.unwrap_model(model).named_parameters()]}))
''' % (UPDATES, ACCUMULATE)


@pytest.mark.distributed
def test_accelerate_under_torchrun_two_gloo_processes(live_server, tmp_path) -> None:  # noqa: ANN001
    import httpx

    from tests.integrations.torchrun import torchrun

    srv = live_server()
    env = {"OPTISCOPE_URL": srv.url, "OPTISCOPE_TOKEN": srv.token, "OPTISCOPE_HOME": str(srv.home / "client")}
    out = torchrun(TORCHRUN_JOB, tmp_path, env)
    assert out["wrapped"] == "DistributedDataParallel" and len(out["truth"]) == UPDATES
    runs = httpx.get(f"{srv.api}/runs", headers=srv.headers, params={"project": "accelerate-ddp"})
    assert [r["id"] for r in runs.raise_for_status().json()["data"]] == [out["run_id"]]  # one run per job
    series = stored_series(srv.api, srv.headers, out["run_id"])
    assert series["grad_norm"][0] == list(range(UPDATES))
    assert series["grad_norm"][1] == pytest.approx(out["truth"], rel=1e-5)
    layers = {k.split("/", 1)[1] for k in series if k.startswith("grad_norm/")}
    assert layers == set(out["names"])  # no module.
    for name in out["names"]:
        assert series[f"grad_norm/{name}"][0] == list(range(UPDATES)), name
