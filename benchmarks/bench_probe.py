"""Probe overhead on a GPT-like model: step time without the probe, at the default cadence, and with
every diagnostic every step; plus ``run.log()`` latency. Figures are printed (a benchmark, not a test).

    python benchmarks/bench_probe.py                 # small GPT on CPU (or GPT-2 small on CUDA if present)
    python benchmarks/bench_probe.py --size small    # force the small model
    python benchmarks/bench_probe.py --optimizer muon

The configurations train identical models side by side, interleaved in short blocks so that machine
noise (other processes, turbo states) hits them alike; each configuration keeps its Monitor for the
whole run, so the cadence and the overhead budget reach their steady state. Medians are the headline
(robust to a noisy neighbour); means include the rare expensive steps (spectra every 50 steps).
Targets (DESIGN.md): default cadence ≤ 1.03×, everything every step ≤ 1.5× (Cockpit "full": 21×,
wandb.watch(log="all"): 2.6×); run.log() ≤ 20 µs.

It ends with the probe-budget issue's figures table (``probe_figures.py``): the GPT ratios above, points
delivered per quantity at default settings (64-wide MLP over ``--points-steps``, the GPT over
``--gpt-points-steps``), the 64-wide MLP's default overhead and training-thread probe time, the overhead
alert raised and absent, the spectra kernel against ``torch.linalg.svdvals``, ``thread_limit`` with and
without, and MLP 784-512-512-512-10 against ``wandb.watch`` when wandb is installed — each with its target
and met / NOT MET; progress lines say how far it got. ``--figures-only`` prints only the rows that need no
GPT run. On the loaded 2-core development machine use ``--threads 1``: at load 10-14, two OpenMP threads
on two busy cores made a no-probe GPT step 6.4 s instead of 0.4 s (spin barriers with a preempted thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import probe
from probe.diagnostics.monitor import Monitor, attach
from probe.diagnostics.quantities import Spectra

try:  # run as a script (benchmarks/ on sys.path) or as a module
    import probe_figures as figures
except ImportError:  # pragma: no cover
    from benchmarks import probe_figures as figures


@dataclass(frozen=True)
class GPTConfig:
    vocab: int
    seq: int
    d: int
    layers: int
    heads: int
    batch: int


SIZES = {
    "small": GPTConfig(vocab=512, seq=64, d=128, layers=4, heads=4, batch=16),
    "gpt2": GPTConfig(vocab=50257, seq=1024, d=768, layers=12, heads=12, batch=8),
}


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d)
        self.qkv = nn.Linear(cfg.d, 3 * cfg.d)
        self.proj = nn.Linear(cfg.d, cfg.d)
        self.ln2 = nn.LayerNorm(cfg.d)
        self.fc = nn.Linear(cfg.d, 4 * cfg.d)
        self.out = nn.Linear(4 * cfg.d, cfg.d)
        self.heads = cfg.heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.d)
        self.pos = nn.Embedding(cfg.seq, cfg.d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.d)
        self.head = nn.Linear(cfg.d, cfg.vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def make_optimizers(model: nn.Module, kind: str) -> list[torch.optim.Optimizer]:
    if kind == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=3e-4)]
    # Muon for hidden matrices, AdamW for embeddings, head and 1-D params (ALGORITHMS.md §1.4)
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("blocks.")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and n.startswith("blocks."))]
    return [torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=3e-4)]


@dataclass
class Setup:
    name: str
    model: nn.Module
    opts: list[torch.optim.Optimizer]
    monitor: Monitor | None
    times: list[float]


def build(name: str, cfg: GPTConfig, kind: str, device: torch.device, run: Any, options: dict | None) -> Setup:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = GPT(cfg).to(device)
    opts = make_optimizers(model, kind)
    monitor = attach(model, opts, run=run, **options) if options is not None else None
    return Setup(name, model, opts, monitor, [])


def run_step(s: Setup, data: torch.Tensor, i: int, device: torch.device, record: bool) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    x = data[i % data.shape[0]]
    logits = s.model(x[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    for opt in s.opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in s.opts:
        opt.step()
    sync()
    if record:
        s.times.append(time.perf_counter() - t0)


def log_latency(run: Any, n: int = 20_000) -> tuple[float, float]:
    lat = []
    for i in range(n):
        metrics = {"loss": 1.0 / (i + 1), "acc": 0.5, "lr": 3e-4}
        t0 = time.perf_counter_ns()
        run.log(metrics, step=i)
        lat.append(time.perf_counter_ns() - t0)
    lat.sort()
    return lat[n // 2] / 1e3, lat[int(n * 0.99)] / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None)
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--block", type=int, default=10, help="steps per configuration before switching")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=None,
                        help="sequences per step (the probe's cost per step does not grow with it)")
    parser.add_argument("--points-steps", type=int, default=3000,
                        help="steps of the 64-wide MLP's points-delivered run")
    parser.add_argument("--gpt-points-steps", type=int, default=300,
                        help="steps of the benchmark GPT's points-delivered run (0.4 s a step on the loaded 2-core host)")
    parser.add_argument("--figures-only", action="store_true",
                        help="only the figures table's MLP, alert and spectra-kernel rows (no GPT runs)")
    parser.add_argument("--fixed-cost", action="store_true",
                        help="only the 64-wide MLP's per-step probe time: hooks alone, grad norms, defaults")
    parser.add_argument("--machine", default="CPU, 2 cores shared with other sessions (loaded)",
                        help="what the figures table says about the machine")
    args = parser.parse_args()
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("gpt2" if device.type == "cuda" else "small")
    cfg = SIZES[size]
    if args.batch:
        cfg = dataclasses.replace(cfg, batch=args.batch)
    steps = args.steps or (50 if device.type == "cuda" else 20)
    if args.fixed_cost:
        figures.fixed_cost()
        return
    if args.figures_only:
        figures.print_table(figures.non_gpt_rows(args.points_steps, t_start),
                            f"{args.machine}; device={device.type}, threads={torch.get_num_threads()}")
        return
    rounds = args.rounds or (6 if device.type == "cuda" else 3)

    with tempfile.TemporaryDirectory() as home:
        os.environ["OPTISCOPE_HOME"] = home
        runs = {name: probe.init(project="bench", name=name, mode="offline") for name in ("default", "full", "topk")}
        # The same Monitor with a disabled run: what the diagnostics cost without the client's sender thread.
        runs["quiet"] = probe.init(project="bench", name="quiet", mode="disabled")
        every = dict(scalars_every=1, update_every=1, neuron_every=1, spectra_every=1, vectors_every=1,
                     internals_every=1, budget=None)
        setups = [
            build("no probe", cfg, args.optimizer, device, None, None),
            build("default cadence", cfg, args.optimizer, device, runs["default"], {}),
            build("default, run disabled", cfg, args.optimizer, device, runs["quiet"], {}),
            build("everything every step", cfg, args.optimizer, device, runs["full"], every),
            build("everything, top-k spectra", cfg, args.optimizer, device, runs["topk"],
                  {**{k: v for k, v in every.items() if k != "spectra_every"},
                   "quantities": [Spectra(every=1, vectors_every=1, full_max=0, top_k=16)]}),
        ]
        gen = torch.Generator().manual_seed(0)
        data = torch.randint(0, cfg.vocab, (16, cfg.batch, cfg.seq + 1), generator=gen).to(device)
        # Interleave short blocks: on a shared machine the load then hits every configuration alike. Not
        # single steps: the Monitor takes the wall time between its own steps as step time (as it should
        # in real training), so other configurations' steps in between would look like a slow model.
        # The first step of each block (after the gap) is not timed.
        block = args.block
        for r in range(args.warmup_rounds + rounds):
            for start in range(0, steps, block):
                for s in setups:
                    for i in range(r * steps + start, r * steps + min(start + block, steps)):
                        run_step(s, data, i, device, record=r >= args.warmup_rounds and i > r * steps + start)
        for s in setups:
            if s.monitor is not None:
                s.monitor.detach()
        figures.stage("benchmark GPT side by side", t_start)
        lat_run = probe.init(project="bench", name="latency", mode="offline")
        p50, p99 = log_latency(lat_run)
        for run in (*runs.values(), lat_run):
            run.finish()

    base = statistics.median(setups[0].times)
    n_params = sum(p.numel() for p in setups[0].model.parameters())
    print(f"device={device.type} size={size} params={n_params / 1e6:.2f}M optimizer={args.optimizer} "
          f"threads={torch.get_num_threads()} tokens/step={cfg.batch * cfg.seq} steps/config={len(setups[0].times)}")
    print(f"{'configuration':<27}{'median step':>12}{'mean step':>12}{'ratio (median)':>16}{'ratio (mean)':>14}"
          f"{'probe ms/step':>15}")
    base_mean = statistics.fmean(setups[0].times)
    for s in setups:
        med, mean = statistics.median(s.times), statistics.fmean(s.times)
        print(f"{s.name:<27}{med * 1e3:>9.2f} ms{mean * 1e3:>9.2f} ms{med / base:>15.3f}×{mean / base_mean:>13.3f}×"
              f"{(med - base) * 1e3:>15.2f}")
    for s in setups[1:]:
        assert s.monitor is not None
        b = s.monitor.budget
        costs = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(b.cost.items()))
        # (the Monitor's own overhead share would count the other configurations' interleaved steps as
        # step time here, so the benchmark prints its probe time per step instead)
        per_step = s.monitor.budget.probe_total / max(s.monitor.steps_closed, 1)
        print(f"  {s.name}: self-measured probe time {per_step * 1e3:.2f} ms/step; diagnostic costs (EMA) "
              f"{costs or '-'}; deferred by budget {dict(b.skipped) or 0}; errors {s.monitor.errors or 0}")
    print(f"run.log() latency: p50 {p50:.2f} µs, p99 {p99:.2f} µs (3 keys, offline mode)")
    print("points lost in a server outage: measured by benchmarks/bench_client.py (bench_outage), target 0")
    print("targets: default ≤ 1.03×, everything ≤ 1.5× (Cockpit full 21×, wandb.watch all 2.6×), run.log ≤ 20 µs")
    if not math.isfinite(base):
        raise SystemExit("no timing")

    default_ratio = statistics.median(setups[1].times) / base
    full_ratio = statistics.median(setups[3].times) / base
    rows: list[figures.Row] = [
        (f"default overhead, benchmark GPT ({n_params / 1e6:.2f} M params)", f"{default_ratio:.3f}×", "≤ 1.03×",
         default_ratio <= 1.03),
        ("every diagnostic every step, benchmark GPT", f"{full_ratio:.3f}×", "≤ 1.5×", full_ratio <= 1.5),
    ]
    gpt_steps = max(args.gpt_points_steps, 1)
    sink = figures.CountingRun()
    g = build("points", cfg, args.optimizer, device, sink, {})
    rows.append(figures.points_delivered("benchmark GPT", lambda: run_step(g, data, 0, device, False), g.monitor,
                                         sink, gpt_steps, figures.NOMINAL))
    figures.stage("benchmark GPT points delivered", t_start)
    rows += figures.non_gpt_rows(args.points_steps, t_start)
    figures.print_table(rows, f"{args.machine}; device={device.type}, threads={torch.get_num_threads()}; "
                              f"whole run {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
