"""GPU readiness of the optimizers and the probe at GPT-2-small shapes (124 M: d = 768, 12 layers,
vocab 50,257), one H100 in mind (issue #22). Every ratio is measured side by side in one run.

    python benchmarks/bench_gpu.py            # CUDA, GPT-2-small shapes, about 5-8 minutes on one H100
    python benchmarks/bench_gpu.py --quick    # tiny shapes on the CPU, every section (what the test runs)

Sections (each writes benchmarks/out/bench_gpu.json and .md as soon as it finishes, so a run cut short
keeps what it measured):

1. ``gemm``: bf16 (CPU: fp32) matmul throughput at the NS shapes -- calibrates the card.
2. ``newton_schulz``: our batched NS per same-shape bucket vs ``torch.optim.Muon``'s per-matrix NS.
3. ``optimizer_step``: full hybrid step (Muon + AdamW groups) vs ``torch.optim.Muon`` + fused
   ``torch.optim.AdamW``: device time (CUDA events over many steps, no per-step sync) and host time
   (the ``step()`` call returning).
4. ``sync_audit``: host syncs counted (``torch.cuda.set_sync_debug_mode("warn")``) in an ordinary
   step of Muon, NorMuon, KFAC, FOP and ``InfoBatch.update`` (single process and its DDP path on a
   one-process NCCL group), and per step over a GPT-2-small run
   with ``probe.attach`` at its defaults, where only flush/spectra steps may sync (CUDA only; on the
   CPU the section says n/a).
5. ``normuon_vs_muon``: NorMuon / Muon step-time ratio.
6. ``spectra``: cost of the probe's public ``exact_spectra`` over every hidden matrix (one flush's work).
7. ``kfac_fop_block``: KFAC and FOP on one GPT-2 block: ordinary step and eigendecomposition refresh.
8. ``probe_overhead``: a GPT-2-small training step with ``probe.attach`` at the default cadence and
   with every diagnostic every step, timed over many steps without per-step synchronisation.

Targets (issue #22, one H100): NS <= 0.7x torch; hybrid step <= 1.0x torch Muon + fused AdamW;
NorMuon <= 1.05x Muon; probe default <= 1.03x; 0 host syncs on an ordinary step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import probe
from bench_probe import GPT, Block, GPTConfig  # the same GPT-2-shaped model as the probe benchmark
from probe.data.infobatch import InfoBatch
from probe.diagnostics.spectra import exact_spectra
from probe.optim import FOP, KFAC, Muon, NorMuon
from probe.optim._orthogonalize import newton_schulz5

OUT_DIR = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Shapes(GPTConfig):
    """The probe benchmark's GPT shape plus how many timed repetitions each measurement takes."""

    repeats: int = 20


GPT2 = Shapes(vocab=50_257, seq=1024, d=768, layers=12, heads=12, batch=8, repeats=20)
QUICK = Shapes(vocab=96, seq=16, d=32, layers=2, heads=2, batch=2, repeats=2)


class Timer:
    """Device time of a repeated callable (CUDA events around all repetitions, one sync at the end)
    and the host time of the calls themselves (how long the Python side takes to enqueue them)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], repeats: int, warmup: int = 2) -> dict[str, float]:
        for _ in range(warmup):
            fn()
        self.sync()
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        host = (time.perf_counter() - t0) / repeats
        if self.device.type == "cuda":
            end.record()
            end.synchronize()
            device_ms = start.elapsed_time(end) / repeats
        else:
            device_ms = host * 1e3  # the CPU runs the kernels inside the call
        return {"device_ms": device_ms, "host_ms": host * 1e3}


def _hidden_and_rest(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("blocks.")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and n.startswith("blocks."))]
    return hidden, rest


def _fill_grads(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, device=p.device, dtype=p.dtype, generator=gen) * 1e-3


def _buckets(s: Shapes) -> dict[str, tuple[int, int, int]]:
    """GPT-2's hidden matrices, (count, rows, cols) per same-shape bucket (nn.Linear's (out, in))."""
    return {"qkv": (s.layers, 3 * s.d, s.d), "proj": (s.layers, s.d, s.d), "fc": (s.layers, 4 * s.d, s.d),
            "out": (s.layers, s.d, 4 * s.d)}


# ---------------------------------------------------------------------- sections
def sec_gemm(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for m, k, n in ((s.d, s.d, s.d), (4 * s.d, s.d, 4 * s.d), (8 * s.d, 8 * s.d, 8 * s.d)):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        t = timer.time(lambda: a @ b, s.repeats * 5)
        rows.append({"shape": f"{m}x{k}x{n}", "dtype": str(dtype), **t,
                     "tflops": 2 * m * k * n / (t["device_ms"] * 1e-3) / 1e12})
    return {"rows": rows}


def sec_newton_schulz(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    from torch.optim._muon import _zeropower_via_newtonschulz

    coeffs = (3.4445, -4.775, 2.0315)
    rows = []
    total_ours = total_torch = 0.0
    for name, (count, r, c) in _buckets(s).items():
        G = torch.randn(count, r, c, device=device)
        ours = timer.time(lambda: newton_schulz5(G), s.repeats)
        mats = list(G.unbind(0))
        theirs = timer.time(lambda: [_zeropower_via_newtonschulz(m, coeffs, 5, 1e-7) for m in mats], s.repeats)
        total_ours += ours["device_ms"]
        total_torch += theirs["device_ms"]
        rows.append({"bucket": f"{name} {count}x({r}x{c})", "ours_ms": ours["device_ms"],
                     "torch_ms": theirs["device_ms"], "ratio": ours["device_ms"] / theirs["device_ms"]})
    return {"rows": rows, "total_ours_ms": total_ours, "total_torch_ms": total_torch,
            "ratio": total_ours / total_torch, "target": "<= 0.7"}


def _build_model(s: Shapes, device: torch.device, seed: int = 0) -> GPT:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return GPT(s).to(device)


def _hybrid(cls: type[Muon], model: nn.Module) -> Muon:
    hidden, rest = _hidden_and_rest(model)
    return cls([{"params": hidden, "use_muon": True, "lr": 0.02},
                {"params": rest, "use_muon": False, "lr": 3e-4}], lr=0.02)


def sec_optimizer_step(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    model_a, model_b = _build_model(s, device), _build_model(s, device)
    _fill_grads(model_a)
    _fill_grads(model_b)
    ours = _hybrid(Muon, model_a)
    hidden, rest = _hidden_and_rest(model_b)
    torch_opts = [torch.optim.Muon(hidden, lr=0.02),
                  torch.optim.AdamW(rest, lr=3e-4, fused=device.type == "cuda")]
    t_ours = timer.time(ours.step, s.repeats)
    t_torch = timer.time(lambda: [o.step() for o in torch_opts], s.repeats)
    return {"ours": t_ours, "torch_muon_plus_fused_adamw": t_torch,
            "device_ratio": t_ours["device_ms"] / t_torch["device_ms"],
            "host_ratio": t_ours["host_ms"] / t_torch["host_ms"], "target": "<= 1.0"}


def _syncs(fn: Callable[[], Any]) -> list[str]:
    """The host syncs ``fn`` makes, one message each: sync-debug "warn" mode, so the call completes
    (the "error" mode would abort it halfway, leaving the optimizer or the Monitor mid-step)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message).lower()]


def _sync_free(fn: Callable[[], Any], device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    found = _syncs(fn)
    return "0 syncs" if not found else f"{len(found)} syncs, first: {found[0]}"


def _infobatch_ddp_syncs(device: torch.device) -> str:
    """``InfoBatch.update`` on its DDP path: a one-process NCCL group with ``num_replicas=2`` keeps the
    pairs on the device and exchanges them at the plan, as each rank of a multi-GPU run does."""
    if device.type != "cuda" or not dist.is_nccl_available() or dist.is_initialized():
        return "n/a (CPU)" if device.type != "cuda" else "n/a (no NCCL, or a process group already exists)"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=device if device.index is not None else torch.device("cuda", 0))
    try:
        ib = InfoBatch(list(range(1024)), num_epochs=4, num_replicas=2, rank=0)
        idx = torch.arange(64)
        losses = torch.rand(64, device=device, requires_grad=True)
        result = _sync_free(lambda: [ib.update(idx, losses).backward() for _ in range(4)], device)
        ib.set_epoch(1)  # the exchange itself (one wait, at planning) must work over NCCL
        return result
    finally:
        dist.destroy_process_group()


def _monitor_syncs(s: Shapes, device: torch.device, steps: int) -> dict[str, Any] | str:
    """Syncs per step of a GPT-2-small training step with ``probe.attach`` at its defaults."""
    if device.type != "cuda":
        return "n/a (CPU)"
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, s.vocab, (s.batch, s.seq + 1), generator=gen).to(device)
    model = _build_model(s, device)
    hidden, rest = _hidden_and_rest(model)
    opts: list[torch.optim.Optimizer] = [torch.optim.Muon(hidden, lr=0.02),
                                         torch.optim.AdamW(rest, lr=3e-4, fused=True)]
    per_step: list[int] = []
    first: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["OPTISCOPE_HOME"] = home
        run = probe.init(project="bench_gpu", name="sync audit", mode="offline")
        monitor = probe.attach(model, opts, run=run)
        try:
            for step in range(steps):
                found = _syncs(lambda: _train_step(model, opts, data))
                per_step.append(len(found))
                if found:
                    first[step] = found[0]
        finally:
            monitor.detach()
            run.finish()
    return {"steps": steps, "syncs_per_step": per_step,
            "steps_with_syncs": sorted(first), "first_sync_of_step": first,
            "note": "default cadence: flushes every log_every = 10 steps, spectra every 50"}


def _train_step(model: nn.Module, opts: list[torch.optim.Optimizer], data: torch.Tensor) -> None:
    logits = model(data[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
    for o in opts:
        o.zero_grad(set_to_none=False)
    loss.backward()
    for o in opts:
        o.step()


def _block_input(s: Shapes, device: torch.device) -> torch.Tensor:
    return torch.randn(s.batch, s.seq, s.d, device=device)


def sec_sync_audit(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    out: dict[str, str] = {}
    x = _block_input(s, device)
    for name in ("Muon", "NorMuon", "KFAC", "FOP"):
        torch.manual_seed(0)
        block = Block(s).to(device)
        if name in ("Muon", "NorMuon"):
            hidden = [p for p in block.parameters() if p.ndim == 2]
            rest = [p for p in block.parameters() if p.ndim != 2]
            cls = Muon if name == "Muon" else NorMuon
            opt: torch.optim.Optimizer = cls([{"params": hidden, "use_muon": True},
                                              {"params": rest, "use_muon": False}], lr=0.01)
        else:
            opt = (KFAC if name == "KFAC" else FOP)(block, lr=0.01, factor_update_interval=1,
                                                     inv_update_interval=1000)

        def step() -> None:
            opt.zero_grad(set_to_none=False)
            block(x).square().mean().backward()
            opt.step()

        step()
        step()
        out[name] = _sync_free(step, device)
    ib = InfoBatch(list(range(1024)), num_epochs=4)
    idx = torch.arange(64)
    losses = torch.rand(64, device=device, requires_grad=True)
    ib.update(idx, losses)
    out["InfoBatch.update"] = _sync_free(lambda: ib.update(idx, losses).backward(), device)
    out["InfoBatch.update (DDP path)"] = _infobatch_ddp_syncs(device)
    return {"results": out, "monitor_default": _monitor_syncs(s, device, steps=60)}


def sec_normuon_vs_muon(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    model_a, model_b = _build_model(s, device), _build_model(s, device)
    _fill_grads(model_a)
    _fill_grads(model_b)
    muon, normuon = _hybrid(Muon, model_a), _hybrid(NorMuon, model_b)
    t_muon = timer.time(muon.step, s.repeats)
    t_normuon = timer.time(normuon.step, s.repeats)
    return {"muon": t_muon, "normuon": t_normuon, "ratio": t_normuon["device_ms"] / t_muon["device_ms"],
            "target": "<= 1.05"}


def sec_spectra(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    model = _build_model(s, device)
    hidden, _ = _hidden_and_rest(model)
    by_side: dict[int, list[torch.Tensor]] = {}
    for p in hidden:
        by_side.setdefault(min(p.shape), []).append(p.detach())
    t = timer.time(lambda: [exact_spectra(mats) for mats in by_side.values()], max(2, s.repeats // 4))
    return {"matrices": len(hidden), "calls": len(by_side), **t,
            "note": "probe.diagnostics.spectra.exact_spectra over every hidden matrix, one flush's work"}


def sec_kfac_fop_block(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    x = _block_input(s, device)
    out: dict[str, Any] = {}
    for name, cls in (("KFAC", KFAC), ("FOP", FOP)):
        torch.manual_seed(0)
        block = Block(s).to(device)
        ordinary = cls(block, lr=0.01, factor_update_interval=1, inv_update_interval=10**9)
        refresh = cls(block, lr=0.01, factor_update_interval=1, inv_update_interval=1)

        def step(opt: KFAC) -> None:
            opt.zero_grad(set_to_none=False)
            block(x).square().mean().backward()
            opt.step()

        out[name] = {"ordinary_step": timer.time(lambda: step(ordinary), s.repeats),
                     "refresh_step": timer.time(lambda: step(refresh), max(2, s.repeats // 4))}
        ordinary.remove_hooks()
        refresh.remove_hooks()
    return out


def sec_probe_overhead(s: Shapes, device: torch.device, timer: Timer) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, s.vocab, (s.batch, s.seq + 1), generator=gen).to(device)
    every = dict(scalars_every=1, update_every=1, neuron_every=1, spectra_every=1, vectors_every=1,
                 internals_every=1, budget=None)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["OPTISCOPE_HOME"] = home
        for name, options in (("no probe", None), ("default", {}), ("everything every step", every)):
            model = _build_model(s, device)
            hidden, rest = _hidden_and_rest(model)
            opts: list[torch.optim.Optimizer] = [
                torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=3e-4, fused=device.type == "cuda")]
            run = monitor = None
            if options is not None:
                run = probe.init(project="bench_gpu", name=name, mode="offline")
                monitor = probe.attach(model, opts, run=run, **options)
            # Every diagnostic every step is slow by design: fewer repetitions keep the section short.
            repeats = s.repeats if name != "everything every step" else max(2, s.repeats // 4)
            results[name] = timer.time(lambda: _train_step(model, opts, data), repeats, warmup=3)
            if monitor is not None:
                monitor.detach()
            if run is not None:
                run.finish()
    base = results["no probe"]["device_ms"]
    return {"steps": results, "default_ratio": results["default"]["device_ms"] / base,
            "every_ratio": results["everything every step"]["device_ms"] / base, "target": "default <= 1.03"}


SECTIONS: dict[str, Callable[[Shapes, torch.device, Timer], dict[str, Any]]] = {
    "gemm": sec_gemm,
    "newton_schulz": sec_newton_schulz,
    "optimizer_step": sec_optimizer_step,
    "sync_audit": sec_sync_audit,
    "normuon_vs_muon": sec_normuon_vs_muon,
    "spectra": sec_spectra,
    "kfac_fop_block": sec_kfac_fop_block,
    "probe_overhead": sec_probe_overhead,
}


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# bench_gpu ({report['machine']})", "", f"mode: {report['mode']}", ""]
    for name, sec in report["sections"].items():
        lines.append(f"## {name} ({sec['status']}, {sec['seconds']:.1f} s)")
        lines.append("")
        lines.append("```")
        lines.append(json.dumps(sec.get("result", sec.get("error")), indent=1, default=str))
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


def _write(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_gpu.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / "bench_gpu.md").write_text(_markdown(report))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (every section)")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="run these sections only")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where bench_gpu.json/.md go")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="sections that would start after this many seconds are skipped (default 420)")
    args = parser.parse_args(argv)
    if args.quick:
        device = torch.device("cpu")
        shapes = QUICK
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu.py needs CUDA (use --quick for the CPU smoke run)")
        device = torch.device("cuda")
        shapes = GPT2
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    report: dict[str, Any] = {"machine": machine, "mode": "quick" if args.quick else "gpt2-small",
                              "torch": torch.__version__, "sections": {}}
    timer = Timer(device)
    started = time.perf_counter()
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        if t0 - started > args.budget_s:
            report["sections"][name] = {"status": "skipped (time budget)", "seconds": 0.0}
            _write(report, args.out)
            continue
        try:
            result = fn(shapes, device, timer)
            entry: dict[str, Any] = {"status": "ok", "result": result}
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            entry = {"status": "error", "error": f"{exc!r}", "traceback": traceback.format_exc()}
        entry["seconds"] = time.perf_counter() - t0
        report["sections"][name] = entry
        _write(report, args.out)  # partial results after every section
        print(f"[{name}] {entry['status']} in {entry['seconds']:.1f} s", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(_markdown(report))
    return report


if __name__ == "__main__":
    main()
