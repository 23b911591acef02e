"""DDP + Muon/NorMuon (``distributed=True``) under real ``torchrun`` (2 gloo processes) into a real server:
every matrix's internals are stored once, under the layer's own key, also those rank 1 orthogonalized."""

from __future__ import annotations

import pytest

from tests.integrations.stored import stored_series
from tests.integrations.torchrun import client_env, torchrun

pytestmark = pytest.mark.distributed

STEPS = 4

JOB = '''
import json, torch, torch.distributed as dist
from torch import nn
import probe
from probe.optim import Muon, NorMuon, hybrid_param_groups
from probe.diagnostics.quantities import Spectra

STEPS = %d
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)


def net():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16),
                          nn.Tanh(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return model


out = {"rank": rank}
for cls in (Muon, NorMuon):
    model, reference = net(), net()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = cls(hybrid_param_groups(model, adamw_lr=1e-2, exclude=()), lr=0.05, distributed=True)
    ref = cls(hybrid_param_groups(reference, adamw_lr=1e-2, exclude=()), lr=0.05, introspect=True)
    run = probe.init(project="ddp-internals", name=cls.__name__, log_all_ranks=True)
    monitor = probe.attach(ddp, opt, run=run, log_every=2, internals_every=1, vectors_every=None, budget=None,
                           quantities=[Spectra(every=1, vectors_every=None, workers=1)])
    g = torch.Generator().manual_seed(10 + rank)  # each rank its own batch: DDP averages the gradients
    expected = {}
    for step in range(STEPS):
        x, y = torch.randn(8, 8, generator=g), torch.randn(8, 4, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        for p, q in zip(model.parameters(), reference.parameters()):
            q.grad = p.grad.clone()  # the averaged gradient, for a single-process reference
        opt.step()
        ref.step()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            entry = ref.last_internals.get(q)
            if entry is None:
                continue
            for src in ("pre_orth", "post_orth"):
                m = entry[src].reshape(entry[src].shape[0], -1).double()
                sigma = float(torch.linalg.matrix_norm(m, 2))
                expected.setdefault(f"sv.{src}.spectral_norm/{name}", []).append(sigma)
            if "v" in entry:
                expected.setdefault(f"normuon.v_max/{name}", []).append(float(entry["v"].max()))
                expected.setdefault(f"normuon.v_min/{name}", []).append(float(entry["v"].min()))
    monitor.detach()
    run.finish()
    out[cls.__name__] = {"run_id": run.id, "expected": expected,
                         "matrices": [n for n, p in model.named_parameters() if p.ndim == 2]}
dist.barrier()
dist.destroy_process_group()
if rank == 0:
    print(json.dumps(out))
''' % STEPS

INTERNAL = ("sv.pre_orth.", "sv.post_orth.", "orth_err/", "normuon.")  # the optimizer's internals


def test_ddp_muon_family_stores_every_matrix_internals_once_under_its_own_key(  # noqa: ANN001
        live_server, tmp_path) -> None:
    srv = live_server()
    out = torchrun(JOB, tmp_path, client_env(srv))
    for cls in ("Muon", "NorMuon"):
        result = out[cls]
        series = stored_series(srv.api, srv.headers, result["run_id"])
        matrices = result["matrices"]
        assert len(matrices) == 4  # 4 matrices over 2 ranks: rank 1 orthogonalizes 2 of them
        # internals only under plain keys: nothing under rank1. (a shared run with log_all_ranks)
        assert [k for k in series if k.startswith("rank1.") and k[len("rank1."):].startswith(INTERNAL)] == []
        assert any(k.startswith("rank1.grad_norm/") for k in series)  # rank 1 did log into the same run
        assert not any("module." in k for k in series)
        wanted = [f"orth_err/{n}" for n in matrices] + [f"sv.{src}.{q}/{n}" for n in matrices
                                                         for src in ("pre_orth", "post_orth")
                                                         for q in ("spectral_norm", "cond", "stable_rank")]
        if cls == "NorMuon":
            wanted += [f"normuon.{q}/{n}" for n in matrices
                       for q in ("v_cv", "v_min", "v_max", "row_rms_cv_after")]
        for key in wanted:
            assert key in series, key
            assert series[key][0] == list(range(STEPS)), key  # every step once: no second copy of any point
        # the values are the single-process optimizer's (σ_max of its NS input and output, NorMuon's v), also
        # for the matrices rank 1 orthogonalized
        assert {k.split("/", 1)[1] for k in result["expected"]} == set(matrices)
        for key, values in result["expected"].items():
            assert series[key][1] == pytest.approx(values, rel=1e-4), key
