"""Demo training runs, out of the server's process: ``python -m probe.demo.train --spec JSON | --worker``.

It is written like a user's own training loop — a model, an optimizer by name, ``probe.init`` and
``probe.attach``, and ``run.log`` for the user metrics — so the demo shows (and tests) the path a real
user takes. Two things are demo-specific:

* Progress goes to stdout as ``@@optiscope {json}`` lines for the orchestrator's progress bars.
* Every point handed to the probe is counted (:class:`CountingRun`), and the counts are written to
  ``--report`` when the run ends, so the orchestrator and the tests can prove that points sent equal
  points stored (``GET /runs/{id}/keys``).

Determinism: the global seed is set once at start (model init); every data draw uses an explicit
``torch.Generator`` seeded from the spec.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probe.demo.specs import PROGRESS_PREFIX, RunSpec

__all__ = ["CountingRun", "main", "train"]

_PROGRESS_INTERVAL_S = 0.25


def _emit(event: str, **fields: Any) -> None:
    print(PROGRESS_PREFIX + json.dumps({"event": event, **fields}), flush=True)


class CountingRun:
    """Forwards to a :class:`probe.client.Run` and counts every point handed to it, per key.

    The probe's monitor and the training loop both log through this object, so the counts are
    exactly what the training *sent*; comparing them with the server's ``/keys`` counts proves that
    nothing was lost or duplicated on the way (the issue's "points sent = points stored").
    """

    def __init__(self, run: Any) -> None:
        self._run = run
        self.scalars: Counter[str] = Counter()
        self.arrays: Counter[str] = Counter()  # "key|layer"
        self.events = 0

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.scalars.update(metrics.keys())
        self._run.log(metrics, step=step)

    def log_at(self, metrics: Mapping[str, Any], *, step: int) -> None:
        self.scalars.update(metrics.keys())
        self._run.log_at(metrics, step=step)

    def log_array(self, key: str, values: Any, *, step: int, layer: str = "") -> None:
        self.arrays[f"{key}|{layer}"] += 1
        self._run.log_array(key, values, step=step, layer=layer)

    def log_event(self, key: str, message: str, **kwargs: Any) -> None:
        self.events += 1
        self._run.log_event(key, message, **kwargs)

    def __getattr__(self, name: str) -> Any:  # id, project, name, flush, finish, dropped, ...
        return getattr(self._run, name)


# --------------------------------------------------------------------------------------------------
# data


class _ImageData:
    """Whole-dataset tensors on the device; batches are index tensors (no DataLoader: 8×8 images)."""

    def __init__(self, spec: RunSpec, device: torch.device) -> None:
        from probe.demo.datasets import load_digits_split, long_tail

        split = load_digits_split(seed=0)  # the split is part of the benchmark, not of the run's seed
        if spec.task == "digits_lt":
            split = long_tail(split, imbalance=10.0)
        self.num_classes = split.num_classes
        self.x = split.x_train.to(device)
        self.y = split.y_train.to(device)
        self.x_test = split.x_test.to(device)
        self.y_test = split.y_test.to(device)
        self.labels_cpu = split.y_train

    def __len__(self) -> int:
        return int(self.y.numel())


class _TextData:
    """Random windows of the stdlib corpus; validation on fixed, evenly spaced windows."""

    def __init__(self, spec: RunSpec, device: torch.device, block_size: int) -> None:
        from probe.demo.datasets import load_stdlib_text

        corpus = load_stdlib_text(max_chars=400_000)
        self.vocab_size = corpus.vocab_size
        self.block = block_size
        self.train = corpus.train.to(device)
        val = corpus.val
        n_val = 32
        starts = torch.linspace(0, val.numel() - block_size - 2, n_val).long()
        self.val_x = torch.stack([val[s : s + block_size] for s in starts]).to(device)
        self.val_y = torch.stack([val[s + 1 : s + 1 + block_size] for s in starts]).to(device)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, self.train.numel() - self.block - 1, (batch_size,), generator=generator)
        offsets = torch.arange(self.block)
        idx = (starts.unsqueeze(1) + offsets).to(self.train.device)
        return self.train[idx], self.train[idx + 1]


# --------------------------------------------------------------------------------------------------
# model and optimizers


def _build_model(spec: RunSpec, num_outputs: int) -> nn.Module:
    from probe.demo.models import CharGPT, DigitsCNN

    if spec.task == "chars":
        return CharGPT(vocab_size=num_outputs, **spec.model)
    return DigitsCNN(num_classes=num_outputs, **spec.model)


def build_optimizers(spec: RunSpec, model: nn.Module) -> list[torch.optim.Optimizer]:
    """The optimizer(s) named by the spec; Muon-family runs route non-matrix params to AdamW (§1.4)."""
    from probe.demo.models import split_hidden_matrices

    kwargs = dict(spec.optimizer_kwargs)
    if spec.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, **kwargs)]
    matrices, others = split_hidden_matrices(model)
    if spec.optimizer == "muon":
        # torch's own Muon (2-D params only) for the hidden matrices, and a separate AdamW for the rest:
        # the "hybrid" recipe a user of torch.optim would write; the probe watches both.
        return [
            torch.optim.Muon(matrices, lr=spec.matrix_lr or 0.02, weight_decay=spec.weight_decay, **kwargs),
            torch.optim.AdamW(others, lr=spec.lr, weight_decay=spec.weight_decay),
        ]
    if spec.optimizer == "normuon":
        from probe.optim import NorMuon

        groups = [
            {"params": matrices, "use_muon": True, "lr": spec.matrix_lr or 0.02},
            {"params": others, "use_muon": False, "lr": spec.lr},
        ]
        return [NorMuon(groups, weight_decay=spec.weight_decay, **kwargs)]
    if spec.optimizer == "kfac":
        from probe.optim import KFAC

        return [KFAC(model, lr=spec.lr, **kwargs)]
    if spec.optimizer == "fop":
        from probe.optim import FOP

        return [FOP(model, lr=spec.lr, **kwargs)]
    raise ValueError(f"Invalid optimizer: {spec.optimizer!r}")


def _warmup(warmup_steps: int) -> Any:
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    return factor


# --------------------------------------------------------------------------------------------------
# training


def _image_batches(
    data: _ImageData, spec: RunSpec, generator: torch.Generator, infobatch: Any | None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(epoch, index batch) for ``spec.epochs`` epochs; InfoBatch decides each epoch's indices when on."""
    for epoch in range(spec.epochs):
        if infobatch is not None:
            infobatch.set_epoch(epoch)
            order = torch.tensor(list(iter(infobatch)), dtype=torch.int64)
        else:
            order = torch.randperm(len(data), generator=generator)
        for start in range(0, order.numel(), spec.batch_size):
            yield epoch, order[start : start + spec.batch_size]


def _total_steps(spec: RunSpec, n_train: int) -> int:
    if spec.task == "chars":
        return spec.steps
    return spec.epochs * math.ceil(n_train / spec.batch_size)  # InfoBatch runs end early; the bar jumps


@torch.no_grad()
def _evaluate_images(model: nn.Module, data: _ImageData) -> dict[str, float]:
    model.eval()
    logits = model(data.x_test)
    model.train()
    return {
        "val_loss": float(F.cross_entropy(logits, data.y_test)),
        "val_acc": float((logits.argmax(1) == data.y_test).float().mean()),
    }


@torch.no_grad()
def _evaluate_text(model: nn.Module, data: _TextData) -> dict[str, float]:
    model.eval()
    logits = model(data.val_x)
    model.train()
    return {"val_loss": float(F.cross_entropy(logits.flatten(0, 1), data.val_y.flatten()))}


def train(
    spec: RunSpec,
    *,
    project: str = "demo",
    tags: Sequence[str] = (),
    report: Path | None = None,
    url: str | None = None,
    token: str | None = None,
) -> int:
    """Run one training with the probe attached; returns a process exit code.

    ``url``/``token`` default to ``OPTISCOPE_URL``/``OPTISCOPE_TOKEN`` and the local server's files,
    exactly as for a user's script.
    """
    import probe

    torch.manual_seed(spec.seed)  # model init; data draws below use their own generator
    device = torch.device(spec.device if spec.device != "cuda" or torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(spec.seed + 1)

    image_data: _ImageData | None = None
    text_data: _TextData | None = None
    if spec.task == "chars":
        text_data = _TextData(spec, device, int(spec.model.get("block_size", 64)))
        model = _build_model(spec, text_data.vocab_size).to(device)
        n_train = 0
    else:
        image_data = _ImageData(spec, device)
        model = _build_model(spec, image_data.num_classes).to(device)
        n_train = len(image_data)
    optimizers = build_optimizers(spec, model)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, _warmup(spec.warmup_steps)) for o in optimizers]

    infobatch = None
    if spec.infobatch:
        from probe.data import InfoBatch

        assert image_data is not None  # noqa: S101 - specs only pair InfoBatch with image tasks
        infobatch = InfoBatch(
            range(n_train), num_epochs=spec.epochs, prune_ratio=0.5, delta=0.875, seed=spec.seed,
            labels=image_data.labels_cpu,
        )

    config = {**asdict(spec), "params": sum(p.numel() for p in model.parameters()), "train_size": n_train}
    optimizer_label = spec.optimizer + ("+infobatch" if spec.infobatch else "")
    real_run = probe.init(
        project=project, name=spec.name, config=config, tags=list(tags), optimizer=optimizer_label,
        url=url, token=token,
    )
    run = CountingRun(real_run)
    _emit("run", id=real_run.id)

    monitor_options = dict(spec.monitor)
    if infobatch is not None:
        monitor_options["infobatch"] = infobatch
    monitor = probe.attach(model, optimizers if len(optimizers) > 1 else optimizers[0], run=run, **monitor_options)

    total = _total_steps(spec, n_train)
    status = "crashed"
    final: dict[str, float] = {}
    started = time.monotonic()
    last_emit = 0.0
    step = 0
    samples_seen = 0
    try:
        batches: Iterator[Any]
        if text_data is not None:
            batches = ((0, None) for _ in range(spec.steps))
        else:
            assert image_data is not None  # noqa: S101
            batches = _image_batches(image_data, spec, generator, infobatch)
        for epoch, index in batches:
            if text_data is not None:
                x, y = text_data.batch(spec.batch_size, generator)
            else:
                assert image_data is not None and index is not None  # noqa: S101
                x, y = image_data.x[index.to(device)], image_data.y[index.to(device)]
            logits = model(x)
            per_sample = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none")
            loss = infobatch.update(index, per_sample) if infobatch is not None else per_sample.mean()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            for sched in schedulers:
                sched.step()
            samples_seen += int(y.shape[0])
            metrics: dict[str, Any] = {
                "loss": loss.detach(),
                "lr": optimizers[0].param_groups[0]["lr"],
                "epoch": epoch,
            }
            if infobatch is None:  # with InfoBatch attached, the monitor logs its own samples_seen
                metrics["samples_seen"] = samples_seen
            if image_data is not None:
                metrics["acc"] = (logits.detach().argmax(1) == y).float().mean()
            if (step + 1) % spec.eval_every == 0 or step + 1 == total:
                metrics.update(_evaluate_images(model, image_data) if image_data else _evaluate_text(model, text_data))  # type: ignore[arg-type]
            # Step k (0-based) is the k-th optimizer step, the index the monitor logs its diagnostics at.
            run.log(metrics, step=step)
            step += 1
            now = time.monotonic()
            if now - last_emit >= _PROGRESS_INTERVAL_S:
                last_emit = now
                _emit("progress", step=step, total=total, loss=float(loss.detach()))
            if now - started > spec.max_seconds:
                print(f"stopping at step {step}: time budget {spec.max_seconds:.0f} s spent", file=sys.stderr)
                break
        # A final evaluation at the last step, whatever the epoch arithmetic was (InfoBatch ends early).
        final = _evaluate_images(model, image_data) if image_data else _evaluate_text(model, text_data)  # type: ignore[arg-type]
        if step % spec.eval_every != 0 and step != total:
            run.log(final, step=step - 1)
        final["loss"] = float(loss.detach())
        _emit("progress", step=step, total=step, loss=final["loss"])
        status = "finished"
    finally:
        monitor.detach()
        real_run.finish(status)
        if report is not None:
            report.write_text(
                json.dumps(
                    {
                        "run_id": real_run.id,
                        "status": status,
                        "steps": step,
                        "samples_seen": samples_seen,
                        "wall_s": time.monotonic() - started,
                        "final": final,
                        "scalars": dict(run.scalars),
                        "arrays": dict(run.arrays),
                        "events": run.events,
                        "dropped": int(getattr(real_run, "dropped", 0)),
                    },
                    sort_keys=True,
                ),
                encoding="utf-8",
            )
    return 0


def _warm_up() -> None:
    """Pay torch's lazy imports now, while the orchestrator waits for the server, not in the first run.

    The first ``Optimizer()`` imports ``torch._dynamo`` (seconds on a busy CPU); the probe's own modules
    and the demo's datasets module are imported here too.
    """
    import probe.client.run  # noqa: F401
    import probe.diagnostics.monitor  # noqa: F401
    import probe.optim.kfac  # noqa: F401
    from probe.demo import datasets, models  # noqa: F401

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def _serve_jobs(lines: Iterator[str]) -> int:
    """Worker mode: train one job per stdin line until stdin closes.

    A job is ``{"spec": RunSpec fields, "project": str, "tags": [str], "report": path}``. The orchestrator
    keeps one such worker per pool slot, so the seconds of ``import torch`` (and of torch's lazy imports
    on the first optimizer) are paid once per slot, not once per run. Each job is still its own run, and
    a job that raises is reported (``done`` with code 1) without ending the worker.
    """
    _warm_up()
    for line in lines:
        if not line.strip():
            continue
        job = json.loads(line)
        spec = RunSpec(**job["spec"])
        print(f"===== {spec.name} =====", file=sys.stderr, flush=True)
        code = 1
        try:
            code = train(
                spec, project=job.get("project", "demo"), tags=job.get("tags", ()),
                report=Path(job["report"]) if job.get("report") else None,
                url=job.get("url"), token=job.get("token"),
            )
        except Exception:  # noqa: BLE001 - one failed run must not stop the others; the traceback is logged
            traceback.print_exc()
        _emit("done", name=spec.name, code=code)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m probe.demo.train``: one ``--spec``, or ``--worker`` jobs from stdin."""
    parser = argparse.ArgumentParser(prog="python -m probe.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="a RunSpec as JSON: train this one run")
    parser.add_argument("--worker", action="store_true", help="train jobs read from stdin, one JSON per line")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--tag", action="append", default=[], help="run tag (repeatable)")
    parser.add_argument("--report", type=Path, default=None, help="where to write the sent-points report")
    args = parser.parse_args(argv)
    if args.worker:
        return _serve_jobs(iter(sys.stdin.readline, ""))
    if not args.spec:
        parser.error("one of --spec or --worker is required")
    return train(RunSpec.from_json(args.spec), project=args.project, tags=args.tag, report=args.report)


if __name__ == "__main__":
    sys.exit(main())
