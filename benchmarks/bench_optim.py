"""Optimizer step time and state bytes on a GPT-like stack of matrices (figures printed; not a test).

Measures ``optimizer.step()`` alone (gradients are set once; no forward/backward inside the timed
region) and the bytes held in ``optimizer.state``, for torch.optim.AdamW (foreach, fused),
torch.optim.Muon, probe.optim.Muon (default NS dtype, and bf16 = torch's arithmetic), NorMuon, and —
when they import — probe.optim.KFAC/FOP (their step needs captured statistics, so one untimed
forward/backward precedes every timed step). Ratios are taken within one run.

Shapes per block (``nn.Linear`` layout, out×in): qkv 3d×d, attn proj d×d, fc 4d×d, fc proj d×4d, all
hidden matrices (the Muon family's job; embeddings/head would go to AdamW in practice).

Usage:
    python benchmarks/bench_optim.py                    # CPU d=256, 4 blocks (+ CUDA GPT-2-small if present)
    python benchmarks/bench_optim.py --device cuda --width 768 --layers 12
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn


class Block(nn.Module):
    """Attention-free GPT block: the matrices of GPT-2 with a cheap forward (needed only by KFAC/FOP)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.fc_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _, _, v = self.qkv(x).chunk(3, dim=-1)
        x = x + self.proj(v)
        return x + self.fc_proj(torch.nn.functional.gelu(self.fc(x)))


def make_model(d: int, layers: int, device: torch.device, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(*[Block(d) for _ in range(layers)])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model.to(device)


def set_grads(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(p.device)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, Tensor):
                total += v.numel() * v.element_size()
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], None], before: Callable[[], None] | None, device: torch.device, steps: int, warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Minimum seconds of ``step()`` over ``steps`` runs (``before()`` runs untimed ahead of each).

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    times = []
    for i in range(warmup + steps):
        if before is not None:
            before()
        _sync(device)
        t0 = clock()
        step()
        _sync(device)
        if i >= warmup:
            times.append(clock() - t0)
    return min(times)


def run(device: torch.device, d: int, layers: int, steps: int, warmup: int, clock_name: str = "wall") -> None:
    """Build every optimizer on its own copy of the model, then time them interleaved, round by round.

    Interleaving (instead of all steps of A, then all of B) exposes every optimizer to the same
    drift of the host (other processes, thermal state); each figure is the minimum over rounds.
    """
    from probe.optim import Muon, NorMuon

    # "cpu": CPU time of the calling thread with one intra-op thread: immune to other processes on a
    # shared host (wall time there measures the neighbours); "wall": perf_counter, for idle hosts/GPUs.
    clock = time.thread_time if clock_name == "cpu" else time.perf_counter
    entries: list[tuple[str, torch.optim.Optimizer, Callable[[], None] | None]] = []

    def add(name: str, make: Callable[[nn.Module], torch.optim.Optimizer], needs_fwd: bool = False) -> None:
        model = make_model(d, layers, device)
        try:
            opt = make(model)
        except Exception as exc:  # noqa: BLE001 - a missing optimizer is reported, not fatal
            print(f"  {name:<28} n/a ({type(exc).__name__}: {exc})")
            return
        x = torch.randn(8, 16, d, generator=torch.Generator().manual_seed(2)).to(device)
        before: Callable[[], None] | None = None
        if needs_fwd:
            def before() -> None:
                opt.zero_grad()
                model(x).pow(2).mean().backward()
        else:
            set_grads(model)
        entries.append((name, opt, before))

    add("torch AdamW (foreach)", lambda m: torch.optim.AdamW(m.parameters(), lr=3e-4, foreach=True))
    add("torch AdamW (fused)", lambda m: torch.optim.AdamW(m.parameters(), lr=3e-4, fused=True))
    add("torch Muon", lambda m: torch.optim.Muon(m.parameters(), lr=0.02))
    add("probe Muon", lambda m: Muon(m.parameters()))
    add("probe Muon (ns bf16)", lambda m: Muon(m.parameters(), ns_dtype=torch.bfloat16))
    add("probe NorMuon", lambda m: NorMuon(m.parameters()))
    add("probe NorMuon (ns bf16)", lambda m: NorMuon(m.parameters(), ns_dtype=torch.bfloat16))
    try:
        from probe.optim import KFAC

        add("probe KFAC (defaults)", lambda m: KFAC(m), needs_fwd=True)
    except (ImportError, AttributeError) as exc:
        print(f"  KFAC n/a ({exc})")
    try:
        from probe.optim import FOP

        add("probe FOP (defaults)", lambda m: FOP(m), needs_fwd=True)
    except (ImportError, AttributeError) as exc:
        print(f"  FOP n/a ({exc})")

    best: dict[str, float] = {}
    failed: set[str] = set()
    for _ in range(warmup + steps):
        for name, opt, before in entries:
            if name in failed:
                continue
            try:
                sec = time_steps(opt.step, before, device, 1, 0, clock)
            except Exception as exc:  # noqa: BLE001
                print(f"  {name:<28} n/a ({type(exc).__name__}: {exc})")
                failed.add(name)
                continue
            best[name] = min(best.get(name, float("inf")), sec)
    rows = [(name, best[name], state_bytes(opt)) for name, opt, _ in entries if name in best]

    by = {name: (sec, nbytes) for name, sec, nbytes in rows}
    n_params = sum(p.numel() for p in make_model(d, layers, torch.device("cpu")).parameters())
    print(f"\n{device.type}: width {d}, {layers} blocks, {4 * layers} matrices, {n_params / 1e6:.2f} M params, "
          f"threads {torch.get_num_threads()}, {clock_name} clock, min of {steps} steps")
    adamw = by.get("torch AdamW (foreach)", (float("nan"), 1))
    tmuon = by.get("torch Muon", (float("nan"), 1))
    print(f"  {'optimizer':<28} {'step ms':>9} {'x AdamW':>8} {'x tMuon':>8} {'state MiB':>10} {'x AdamW':>8}")
    for name, sec, nbytes in rows:
        print(f"  {name:<28} {sec * 1e3:9.2f} {sec / adamw[0]:8.2f} {sec / tmuon[0]:8.2f} "
              f"{nbytes / 2**20:10.2f} {nbytes / adamw[1]:8.2f}")
    for a, b in [("probe NorMuon", "probe Muon"), ("probe Muon", "torch Muon"), ("probe NorMuon (ns bf16)", "probe Muon (ns bf16)"), ("probe Muon (ns bf16)", "torch Muon")]:
        if a in by and b in by:
            print(f"  ratio {a} / {b}: {by[a][0] / by[b][0]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda if present)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default=None,
                    help="cpu = single-thread CPU time (default on CPU; robust on a shared host); wall = elapsed")
    args = ap.parse_args()
    plans = []
    if args.device in (None, "cpu"):
        plans.append((torch.device("cpu"), args.width or 256, args.layers or 4))
    if args.device == "cuda" or (args.device is None and torch.cuda.is_available()):
        plans.append((torch.device("cuda"), args.width or 768, args.layers or 12))
    for device, d, layers in plans:
        clock_name = args.clock or ("cpu" if device.type == "cpu" else "wall")
        if device.type == "cpu" and clock_name == "cpu":
            torch.set_num_threads(1)  # thread_time sees only the calling thread
        run(device, d, layers, args.steps, args.warmup, clock_name)


if __name__ == "__main__":
    main()
