"""FSDP2 (``fully_shard``) + Muon/NorMuon under real ``torchrun`` (2 gloo CPU processes) into a real server:
every matrix's optimizer internals (``sv.pre_orth/post_orth``, ``orth_err``, ``normuon.*``) describe the WHOLE
matrix, are stored once per step under the layer's own key by rank 0, and equal what the same probe stores for
a single-process optimizer fed the same gradients; rank 1 (``log_all_ranks=True``) stores no ``rank1.`` copy.

Before (issue 17): NorMuon's ``v`` statistics and ``row_rms_cv_after`` were those of each rank's rows (4 of 7
for the first layer) and both ranks stored every matrix's internals, rank 1 under ``rank1.`` keys.

The single-process reference is replayed on rank 0 after the distributed part, from the gradients the
sharded model produced (``full_tensor()``): its NS inputs are then bit-identical, so any difference is the
optimizer's sharding (batched NS on a rank's share of a bucket, norms summed from two shards).
"""

from __future__ import annotations

import httpx
import pytest

from tests.integrations.stored import stored_series
from tests.integrations.torchrun import client_env, torchrun

pytestmark = pytest.mark.distributed

STEPS = 4
# Same gradients, same kernels; only the row sharding differs (a rank's share of a bucket is a smaller NS
# batch, ‖O‖² and ‖Ô‖² are summed from two shards), in float32: relative 1e-6 (cv: absolute, below).
REL = 1e-6

JOB = '''
import json, torch, torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
import probe
from probe.diagnostics.quantities import Spectra
from probe.optim import Muon, NorMuon, hybrid_param_groups

STEPS = %d


def options():
    return dict(log_every=2, internals_every=1, vectors_every=1, budget=None,
                quantities=[Spectra(every=1, vectors_every=1, workers=1, sources=("pre_orth", "post_orth"))])

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
mesh = init_device_mesh("cpu", (2,))


def net():
    # 7 rows: uneven shards (4 + 3); two 16x16 matrices: one bucket whose NS the ranks split;
    # the (1, 16) head: rank 1 holds none of its rows
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16),
                          nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def build(cls, model):
    return cls(hybrid_param_groups(model, adamw_lr=1e-2, exclude=()), lr=0.05, weight_decay=0.01)


out = {"rank": rank}
grads = {}
for cls in (Muon, NorMuon):
    model = net()
    for i in (0, 2, 4, 6, 8):
        fully_shard(model[i], mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = build(cls, model)
    run = probe.init(project="fsdp2-internals", name=cls.__name__, log_all_ranks=True)
    monitor = probe.attach(model, opt, run=run, **options())
    data = torch.Generator().manual_seed(10 + rank)  # each rank its own batch: FSDP2 averages the gradients
    grads[cls.__name__] = []
    for step in range(STEPS):
        x, y = torch.randn(8, 8, generator=data), torch.randn(8, 1, generator=data)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads[cls.__name__].append([p.grad.full_tensor() for p in model.parameters()])
        opt.step()
    monitor.detach()
    run.finish()
    out[cls.__name__] = {"run_id": run.id, "weights": [p.full_tensor().tolist() for p in model.parameters()],
                         "matrices": [n for n, p in model.named_parameters() if p.ndim == 2],
                         "local_rows": {n: p.to_local().shape[0] for n, p in model.named_parameters()}}
dist.barrier()
dist.destroy_process_group()

if rank == 0:
    # the single-process optimizer on the same model and gradients, with the same probe, in its own run
    for cls in (Muon, NorMuon):
        model = net()
        opt = build(cls, model)
        run = probe.init(project="fsdp2-internals", name=cls.__name__ + "-single")
        monitor = probe.attach(model, opt, run=run, **options())
        v = {}
        for step, step_grads in enumerate(grads[cls.__name__]):
            for p, gr in zip(model.parameters(), step_grads):
                p.grad = gr.clone()
            opt.introspect = True  # also read the optimizer's own v below
            opt.step()
            for (n, p) in model.named_parameters():
                if p in opt.last_internals and "v" in opt.last_internals[p]:
                    v.setdefault(n, []).append(opt.last_internals[p]["v"].tolist())
        monitor.detach()
        run.finish()
        diffs = [max(abs(a - b) for a, b in zip(torch.tensor(w).reshape(-1).tolist(), p.reshape(-1).tolist()))
                 for w, p in zip(out[cls.__name__]["weights"], model.parameters())]
        out[cls.__name__].update(single_run_id=run.id, v=v, weight_diff=max(diffs))
    print(json.dumps(out))
''' % STEPS

INTERNAL = ("sv.pre_orth.", "sv.post_orth.", "orth_err/", "normuon.")  # the optimizer's internals


def _arrays(srv, run_id: str, key: str) -> list[dict]:  # noqa: ANN001
    with httpx.Client(headers=srv.headers, timeout=60) as http:
        r = http.get(f"{srv.api}/runs/{run_id}/arrays", params={"key": key, "max_steps": 1000})
        return r.raise_for_status().json()["records"]


def test_fsdp2_muon_family_internals_are_the_whole_matrix_once_on_rank0(  # noqa: ANN001
        live_server, tmp_path) -> None:
    srv = live_server()
    out = torchrun(JOB, tmp_path, client_env(srv))
    for cls in ("Muon", "NorMuon"):
        result = out[cls]
        matrices = result["matrices"]
        assert len(matrices) == 5
        # the sharding the test is about: uneven rows, and a matrix rank 1 holds no row of
        assert result["local_rows"]["0.weight"] == 4 and result["local_rows"]["8.weight"] == 1
        assert result["weight_diff"] < 1e-6  # the sharded optimizer trained like the single process
        series = stored_series(srv.api, srv.headers, result["run_id"])
        single = stored_series(srv.api, srv.headers, result["single_run_id"])
        # nothing under rank1. for the internals (rank 1 did log into the same run: its grad norms)
        assert [k for k in series if k.startswith("rank1.") and k[len("rank1."):].startswith(INTERNAL)] == []
        assert any(k.startswith("rank1.grad_norm/") for k in series)
        wanted = [f"orth_err/{n}" for n in matrices] + [f"sv.{src}.{q}/{n}" for n in matrices
                                                         for src in ("pre_orth", "post_orth")
                                                         for q in ("spectral_norm", "cond", "stable_rank")]
        if cls == "NorMuon":
            wanted += [f"normuon.{q}/{n}" for n in matrices
                       for q in ("v_cv", "v_min", "v_max", "row_rms_cv_before", "row_rms_cv_after")]
        internal = sorted(k for k in series if k.startswith(INTERNAL))
        assert set(wanted) <= set(internal), sorted(set(wanted) - set(internal))
        # the same internal keys as the single process stores, each layer once per step, equal values
        assert internal == sorted(k for k in single if k.startswith(INTERNAL))
        for key in internal:
            assert series[key][0] == list(range(STEPS)), key  # every step once: no second copy of any point
            # a spread (cv) is dimensionless and of order 1 at most; where the rows are equal (NorMuon's Ô at
            # step 0) it is float32 noise (~1e-7) in both runs, so it is compared to 1e-6 absolute
            tol = dict(abs=REL) if "_cv" in key else dict(rel=REL, abs=1e-12)
            assert series[key][1] == pytest.approx(single[key][1], **tol), key
        if cls == "NorMuon":
            # the stored v arrays are whole (7 rows, not rank 0's 4), rank 0's only, and the optimizer's own
            records = _arrays(srv, result["run_id"], "normuon.v")
            assert _arrays(srv, result["run_id"], "rank1.normuon.v") == []
            assert sorted((r["layer"], r["step"]) for r in records) == sorted(
                (n, s) for n in matrices for s in range(STEPS))
            for record in records:
                expected = result["v"][record["layer"]][record["step"]]
                assert record["values"] == pytest.approx(expected, rel=REL, abs=1e-12), record["layer"]
            assert {len(r["values"]) for r in records if r["layer"] == "0.weight"} == {7}
            v_max = [max(v) for v in result["v"]["0.weight"]]
            assert series["normuon.v_max/0.weight"][1] == pytest.approx(v_max, rel=REL)
