"""Distributed Muon/NorMuon equal the single-process result.

Two CPU processes, gloo backend, 127.0.0.1 on a free port (torch.multiprocessing spawn), one spawn for
both checks (process start-up dominates the cost):
* DDP-style round-robin ownership + all-gather: both ranks see the same gradients, which is what DDP's
  averaged gradients give the optimizer.
* FSDP2 (``fully_shard``, parameters are DTensors sharded on dim 0, uneven shards): v local per row
  shard, NS work split round-robin, exact Frobenius rescale by all-reduce; compared with an unsharded
  copy of the model.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from probe.optim import Muon, NorMuon, hybrid_param_groups

pytestmark = pytest.mark.distributed

WORLD = 2
# Same kernels, same inputs, same order inside a rank's batched NS: the owner computes exactly what the
# single process computes, except that a rank's share of a bucket is a smaller batch (bmm blocking).
DIST_ATOL = 1e-6
# FSDP2: forward/backward through sharded modules and norms summed from two partial sums; float32.
FSDP_ATOL = 1e-5
SHAPES = [(16, 8), (16, 8), (16, 8), (8, 24), (8, 24), (12, 12), (4, 2, 3, 3)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _build(cls: type, distributed: bool) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(0)
    mats = [nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    vec = nn.Parameter(torch.randn(5, generator=g))
    opt = cls(
        [{"params": mats}, {"params": [vec], "use_muon": False, "lr": 1e-2}],
        lr=0.05,
        weight_decay=0.01,
        distributed=distributed,
        introspect=distributed,
    )
    return mats + [vec], opt


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results: dict[str, object] = {}
        for cls in (Muon, NorMuon):
            dist_params, dist_opt = _build(cls, distributed=True)
            ref_params, ref_opt = _build(cls, distributed=False)
            g = torch.Generator().manual_seed(1)  # same on both ranks: the DDP-averaged gradient
            gathers = {"n": 0}
            real_all_gather = dist.all_gather

            def counting(*args, **kwargs):
                gathers["n"] += 1
                return real_all_gather(*args, **kwargs)

            ref_opt.introspect = True
            for _ in range(3):
                for p, q in zip(dist_params, ref_params):
                    grad = torch.randn(p.shape, generator=g)
                    p.grad, q.grad = grad.clone(), grad.clone()
                dist.all_gather = counting
                try:
                    dist_opt.step()
                finally:
                    dist.all_gather = real_all_gather
                ref_opt.step()
            # rank 0's internals of every matrix (also those another rank orthogonalized) against the
            # single process's: NS input, NS output and (NorMuon) v
            internals_diff = max(
                ((a - b).abs().max().item() for p, q in zip(dist_params, ref_params)
                 if p in dist_opt.last_internals
                 for k, a in dist_opt.last_internals[p].items() if k != "nonfinite_skips"
                 for b in [ref_opt.last_internals[q][k]]),
                default=0.0,
            )
            results[cls.__name__] = {
                "all_gathers_per_step": gathers["n"] / 3,
                "max_diff": max((p - q).abs().max().item() for p, q in zip(dist_params, ref_params)),
                "with_state": sorted(i for i, p in enumerate(dist_params[:-1]) if "momentum_buffer" in dist_opt.state[p]),
                "introspected": sorted(i for i, p in enumerate(dist_params) if p in dist_opt.last_internals),
                "internals_diff": internals_diff,
                "params": [p.detach().clone() for p in dist_params],
                "resume_diff": _resume_from_rank0(cls, dist_opt, dist_params, ref_opt, ref_params, out_dir, g),
            }
        results["fsdp"] = _fsdp_check()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while its peer still communicates (it aborted ~1 run in 20)
    finally:
        dist.destroy_process_group()


def _resume_from_rank0(cls: type, opt: torch.optim.Optimizer, params: list[nn.Parameter],
                       ref_opt: torch.optim.Optimizer, ref_params: list[nn.Parameter], out_dir: str,
                       g: torch.Generator) -> float:
    """Framework-style resume: only rank 0 saves ``state_dict()``; every rank loads that file into a
    fresh optimizer and trains on; the result must match the uninterrupted single-process run."""
    path = os.path.join(out_dir, f"{cls.__name__}_rank0_state.pt")
    if dist.get_rank() == 0:
        torch.save(opt.state_dict(), path)
    dist.barrier()
    resumed_params, resumed = _build(cls, distributed=True)
    with torch.no_grad():
        for p, q in zip(resumed_params, params):
            p.copy_(q)
    resumed.load_state_dict(torch.load(path))
    for _ in range(2):
        for p, q in zip(resumed_params, ref_params):
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad.clone(), grad.clone()
        resumed.step()
        ref_opt.step()
    return max((p - q).abs().max().item() for p, q in zip(resumed_params, ref_params))


def _tiny_model() -> nn.Module:
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(  # two 10×10 matrices: a bucket whose NS work is split across the ranks
        nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(),
        nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 5),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _fsdp_check() -> dict[str, object]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    out: dict[str, object] = {}
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(4))  # same batch on both ranks
    y = torch.randn(16, 5, generator=torch.Generator().manual_seed(5))
    for cls in (Muon, NorMuon):
        sharded, reference = _tiny_model(), _tiny_model()
        fully_shard(sharded, mesh=mesh)
        opt_s = cls(hybrid_param_groups(sharded, adamw_lr=1e-2, exclude=()), lr=0.05, weight_decay=0.01, introspect=True)
        opt_r = cls(hybrid_param_groups(reference, adamw_lr=1e-2, exclude=()), lr=0.05, weight_decay=0.01,
                    introspect=True)
        for step in range(3):
            # introspect is per rank (each rank's probe and budget decide): on the last step only rank 0
            # asks, which must neither deadlock nor change what rank 0 reports
            opt_s.introspect = step < 2 or dist.get_rank() == 0
            for model, opt in ((sharded, opt_s), (reference, opt_r)):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
        diffs = [(a.full_tensor() - b).abs().max().item() for a, b in zip(sharded.parameters(), reference.parameters())]
        w = sharded[6].weight  # 7 rows over 2 ranks: 4 + 3
        # The AdamW groups' finiteness flags cross the mesh in one bucketed all-reduce, not one per parameter.
        calls = {"n": 0}
        real_all_reduce = dist.all_reduce

        def counting(*args, **kwargs):
            calls["n"] += 1
            return real_all_reduce(*args, **kwargs)

        dist.all_reduce = counting
        try:
            with torch.no_grad():  # as inside step()
                for group in opt_s.param_groups:
                    if not group["use_muon"]:
                        opt_s._step_adamw(group)
        finally:
            dist.all_reduce = real_all_reduce
        out[cls.__name__ + "_adamw_all_reduces"] = calls["n"]
        out[cls.__name__] = {
            "max_diff": max(diffs),
            "is_dtensor": type(w).__name__ == "DTensor",
            "local_rows": w.to_local().shape[0],
            "v_rows": opt_s.state[w]["v"].shape[0] if "v" in opt_s.state[w] else None,
            "pre_orth_shape": (tuple(opt_s.last_internals[w]["pre_orth"].shape)
                               if w in opt_s.last_internals else None),
            # rank 0 reports every matrix, whole (NorMuon's v and Ô too, not its shard rows), rank 1 none
            "introspected": sorted(i for i, p in enumerate(sharded.parameters()) if p in opt_s.last_internals),
            "internals_shapes": {k: tuple(t.shape) for k, t in opt_s.last_internals.get(w, {}).items()},
            "internals_diff": max(
                ((a - b).abs().max().item() for p, q in zip(sharded.parameters(), reference.parameters())
                 if p in opt_s.last_internals
                 for k, a in opt_s.last_internals[p].items() if k != "nonfinite_skips"
                 for b in [opt_r.last_internals[q][k]]),
                default=float("nan"),
            ),
        }
    return out


def test_round_robin_and_fsdp2_equal_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for name in ("Muon", "NorMuon"):
        assert r0[name]["max_diff"] < DIST_ATOL and r1[name]["max_diff"] < DIST_ATOL
        # every replica holds identical weights after the all-gather
        for a, b in zip(r0[name]["params"], r1[name]["params"]):
            assert torch.equal(a, b)
        # rank 0 reports the internals of EVERY matrix (those rank 1 orthogonalized too: its gathered
        # NS outputs), rank 1 none, so a run stores each matrix once under its own key (issue 17)
        assert r0[name]["introspected"] == list(range(len(SHAPES))) and r1[name]["introspected"] == []
        assert r0[name]["internals_diff"] < DIST_ATOL
        # ...but every rank holds every matrix's state, so rank 0's state_dict is the full state
        assert r0[name]["with_state"] == r1[name]["with_state"] == list(range(len(SHAPES)))
        # saved on rank 0 only, loaded on both ranks: continues exactly like the uninterrupted run
        assert r0[name]["resume_diff"] < DIST_ATOL and r1[name]["resume_diff"] < DIST_ATOL
        # every bucket's NS outputs (and NorMuon's v, recomputed from them) in one collective per step
        assert r0[name]["all_gathers_per_step"] == r1[name]["all_gathers_per_step"] == 1


    for name, local_rows in (("Muon", (4, 3)), ("NorMuon", (4, 3))):
        f0, f1 = r0["fsdp"][name], r1["fsdp"][name]
        assert f0["is_dtensor"] and (f0["local_rows"], f1["local_rows"]) == local_rows
        assert f0["max_diff"] < FSDP_ATOL and f1["max_diff"] < FSDP_ATOL, (f0["max_diff"], f1["max_diff"])
        assert f0["pre_orth_shape"] == (7, 10)  # introspection shows the full matrix fed to NS
        # ...on rank 0 only, for every matrix (the 5 weights are parameters 0, 2, 4, 6, 8), whole, and equal
        # to the single-process optimizer's; rank 1 reports none (no rank1. copies in a shared run)
        assert f0["introspected"] == [0, 2, 4, 6, 8]
        assert f1["introspected"] == [] and f1["pre_orth_shape"] is None
        assert f0["internals_diff"] < FSDP_ATOL, f0["internals_diff"]
    assert r0["fsdp"]["NorMuon"]["internals_shapes"] == {
        "pre_orth": (7, 10), "post_orth": (7, 10), "nonfinite_skips": (), "v": (7,), "normalized": (7, 10)}
    assert (r0["fsdp"]["NorMuon"]["v_rows"], r1["fsdp"]["NorMuon"]["v_rows"]) == (4, 3)  # v local per row shard
    # 5 AdamW (bias) parameters, one all-reduce of their flags
    assert r0["fsdp"]["Muon_adamw_all_reduces"] == r0["fsdp"]["NorMuon_adamw_all_reduces"] == 1
