"""Hugging Face ``Trainer`` integration: ``Trainer(..., callbacks=[OptiscopeCallback()])``.

What it does, and why each choice:

- **One run per job.** ``probe.init`` runs on every process (rank 0 creates the run and broadcasts its id);
  only rank 0 logs unless ``log_all_ranks=True``, as in a hand-written loop.
- **Config** is ``{"training_args": TrainingArguments, "model": model.config}`` so a sweep over either is
  filterable; the optimizer is recorded by class name (``AdamW``, ``NorMuon``…).
- **The probe hooks the optimizer that really steps**: the Trainer hands callbacks an accelerate
  ``AcceleratedOptimizer``, which cannot carry step hooks; :func:`~probe.integrations.wrappers.unwrap_optimizer`
  sees through it. Works with the Trainer's own AdamW and with ``optimizers=(NorMuon(...), scheduler)``.
- **Steps are the Trainer's ``global_step``**: the k-th optimizer step (1-based, what the Trainer's logs
  say) is logged at step k by the probe too, so its diagnostics and the Trainer's loss line up, also
  after ``resume_from_checkpoint``.
- **Resume continues the run.** Each checkpoint gets an ``optiscope-run.json`` naming the run; a Trainer
  resumed from that checkpoint logs into the same run, and what the run logged after the checkpoint's step
  is dropped first (``probe.init(resume_from=...)``), so the re-trained steps are stored once.
- **The Trainer's logs are forwarded** as ``train/<key>`` and ``eval/<key>`` (the names HF's own W&B and
  MLflow integrations use). ``train/grad_norm`` is the Trainer's value: the norm *before* clipping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import probe
from probe.integrations.wrappers import unwrap_model, unwrap_optimizer

__all__ = ["OptiscopeCallback", "rename_logs"]

_EVAL_PREFIX = "eval_"
RUN_FILE = "optiscope-run.json"
"""Written into every checkpoint folder: which run a Trainer resumed from it continues."""


def rename_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """The Trainer's numeric log entries under ``train/`` or ``eval/`` (``eval_loss`` → ``eval/loss``)."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # e.g. "total_flos" is numeric, a string summary is not
        if key.startswith(_EVAL_PREFIX):
            out["eval/" + key[len(_EVAL_PREFIX):]] = float(value)
        else:
            out["train/" + key] = float(value)
    return out


class OptiscopeCallback(TrainerCallback):
    """Stream a ``transformers.Trainer`` run and its optimizer diagnostics to Optiscope.

    Args:
        project, name, tags: run metadata; ``name`` defaults to ``TrainingArguments.run_name``.
        config: extra config merged over the Trainer's.
        run: a run you created yourself with ``probe.init`` (then you finish it; the callback does not).
        init_options: passed to ``probe.init`` (``url``, ``token``, ``mode``, ``run_id``, ``log_all_ranks``…).
        attach_options: passed to ``probe.attach`` (``spectra_every``, ``budget``…).
    """

    def __init__(
        self,
        *,
        project: str = "default",
        name: str | None = None,
        tags: Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        run: Any | None = None,
        init_options: Mapping[str, Any] | None = None,
        attach_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.project = project
        self.name = name
        self.tags = list(tags or [])
        self.extra_config = dict(config or {})
        self.run = run
        self._owns_run = run is None
        self.init_options = dict(init_options or {})
        self.attach_options = dict(attach_options or {})
        self.monitor: Any | None = None
        self.last_run_id: str | None = run.id if run is not None else None
        """Id of the run this callback logs (or last logged) into: stays set after the run is finished."""

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        if self.monitor is not None:  # a second train() on the same Trainer: reuse the run
            self.monitor.detach()
            self.monitor = None
        inner = unwrap_optimizer(optimizer) if optimizer is not None else None
        if self.run is None:
            init_options = dict(self.init_options)
            saved = _saved_run_id(args, state)
            if saved is not None and "run_id" not in init_options:
                init_options.update(run_id=saved, resume_from=state.global_step + 1)
            config: dict[str, Any] = {"training_args": args.to_dict()}
            model_config = getattr(model, "config", None)
            if model_config is not None and hasattr(model_config, "to_dict"):
                config["model"] = model_config.to_dict()
            config.update(self.extra_config)
            self.run = probe.init(
                project=self.project, name=self.name or args.run_name, config=config, tags=self.tags,
                optimizer=type(inner).__name__ if inner is not None else None, **init_options)
            self.last_run_id = self.run.id
        if inner is not None:
            self.monitor = probe.attach(unwrap_model(model) if model is not None else None, inner,
                                        run=self.run, start_step=state.global_step + 1, **self.attach_options)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.set_step(state.global_step + 1)  # the step about to happen, as the Trainer will log it

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if self.run is not None and logs:
            metrics = rename_logs(logs)
            if metrics:
                self.run.log(metrics, step=state.global_step)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if self.last_run_id is None or not state.is_world_process_zero:
            return
        folder = _checkpoint_folder(args, state.global_step)
        if folder.is_dir():
            (folder / RUN_FILE).write_text(json.dumps({"run_id": self.last_run_id, "step": state.global_step}))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.detach()
            self.monitor = None
        if self.run is not None and self._owns_run:
            self.run.finish()
            self.run = None


def _checkpoint_folder(args: TrainingArguments, step: int) -> Path:
    return Path(args.output_dir) / f"checkpoint-{step}"  # transformers' PREFIX_CHECKPOINT_DIR layout


def _saved_run_id(args: TrainingArguments, state: TrainerState) -> str | None:
    """The run a resumed Trainer continues: named in the checkpoint it resumed from (``global_step > 0``)."""
    if state.global_step <= 0:
        return None
    try:
        saved = json.loads((_checkpoint_folder(args, state.global_step) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    run_id = saved.get("run_id") if isinstance(saved, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None
