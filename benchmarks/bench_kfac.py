"""KFAC vs FOP step time and optimizer state size on a small MLP and CNN (CPU; printed, not a timed test).

Run: ``python benchmarks/bench_kfac.py`` (about a minute on 2 CPU cores); ``--quick`` for a smoke run.

What is timed: one full training step, ``zero_grad`` + forward + backward + ``step()``, because FOP's extra
work (the half-batch gradient S_1) happens inside the backward hooks, not in ``step()``. KFAC and FOP run at
the same cadence (factors every 10 steps, eigendecomposition every 100, the defaults) over windows of 100
steps, so each window contains exactly one inverse refresh and 10 factor updates. The optimizers are timed in
interleaved windows (SGD, KFAC, FOP, SGD, ...) so slow drift of a shared machine hits all of them alike.
Both process CPU time (with one intra-op thread: the compute itself, insensitive to other load on a shared
machine) and wall time are reported, as medians over windows, with the FOP/KFAC ratio of each.
Target: FOP <= 1.3x KFAC.

State bytes: the sum of all tensors in ``optimizer.state`` (factors, eigenbases, eigenvalues, momentum).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.optim import FOP, KFAC


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def _init(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    return model


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if isinstance(t, Tensor))


def bench(name: str, make_model: Callable[[], nn.Module], x: Tensor, y: Tensor, windows: int,
          window: int) -> None:
    builders: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "SGD": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
        "KFAC": lambda m: KFAC(m, lr=0.01),
        "FOP": lambda m: FOP(m, lr=0.01),
    }
    runs = {}
    for key, build in builders.items():
        model = _init(make_model(), 0)
        runs[key] = (model, build(model))

    def one_window(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(window):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return (time.perf_counter() - w0) / window, (time.process_time() - c0) / window

    for model, opt in runs.values():  # warm-up: first eigendecomposition, allocator, kernels
        one_window(model, opt)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(windows):
        for key, (model, opt) in runs.items():
            w, c = one_window(model, opt)
            wall[key].append(w)
            cpu[key].append(c)

    n_params = sum(p.numel() for p in runs["SGD"][0].parameters())
    print(f"\n{name}: batch {x.shape[0]}, {n_params:,} parameters, {windows} windows x {window} steps")
    print(f"{'optimizer':<10}{'CPU ms/step':>13}{'wall ms/step':>14}{'wall min':>10}{'state bytes':>14}")
    for key in runs:
        print(f"{key:<10}{1e3 * statistics.median(cpu[key]):>13.2f}{1e3 * statistics.median(wall[key]):>14.2f}"
              f"{1e3 * min(wall[key]):>10.2f}{state_bytes(runs[key][1]):>14,}")
    for label, t in (("CPU", cpu), ("wall", wall)):
        ratios = [f / k for f, k in zip(t["FOP"], t["KFAC"])]
        print(f"FOP/KFAC ({label} time, median of per-window ratios): {statistics.median(ratios):.3f}"
              f"   KFAC/SGD: {statistics.median(t['KFAC']) / statistics.median(t['SGD']):.3f}"
              + ("   (target FOP/KFAC <= 1.3)" if label == "CPU" else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 window of 20 steps per model")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    windows, window = (1, 20) if args.quick else (5, 100)
    gen = torch.Generator().manual_seed(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; factors every 10 steps, "
          "eigendecomposition every 100")
    bench("MLP 256-512-256-10", mlp, torch.randn(128, 256, generator=gen),
          torch.randint(0, 10, (128,), generator=gen), windows, window)
    bench("CNN 3x16x16 (2 conv + 2 linear)", cnn, torch.randn(64, 3, 16, 16, generator=gen),
          torch.randint(0, 10, (64,), generator=gen), windows, window)


if __name__ == "__main__":
    main()
