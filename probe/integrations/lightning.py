"""Lightning integration: ``Trainer(callbacks=[OptiscopeCallback()])`` — one line.

``OptiscopeCallback`` attaches the probe to the trainer's optimizers when training starts and installs an
``OptiscopeLogger`` (unless one was passed as ``Trainer(logger=...)``), so ``self.log(...)`` metrics,
hyperparameters and the probe's diagnostics land in one run. The logger also works alone, as any Lightning
logger does, for metrics only.

Why a callback and a logger: a Lightning ``Logger`` sees metrics but never the optimizers; a ``Callback``
sees the optimizers but not the logging calls. Steps are Lightning's ``global_step`` (optimizer steps), the
value it passes to ``log_metrics``, so the probe's per-step records and ``self.log`` line up.

Resume: the callback saves the run id in Lightning checkpoints; ``fit(ckpt_path=...)`` continues that run,
dropping what it logged after the checkpoint's step (``probe.init(resume_from=...)``), so steps trained
again are stored once.

Distributed (``strategy="ddp"``): Lightning calls loggers on rank 0 only; ``probe.init`` gives the other
ranks a disabled run, so one run per job with no collective.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

import probe
from probe.integrations.wrappers import unwrap_model, unwrap_optimizer

__all__ = ["OptiscopeCallback", "OptiscopeLogger"]


class OptiscopeLogger(Logger):
    """A Lightning ``Logger`` writing to one Optiscope run (created on first use).

    Args:
        project, name, tags, config: run metadata; hyperparameters Lightning reports
            (``save_hyperparameters``) are merged into ``config`` when the run is created.
        init_options: passed to ``probe.init`` (``url``, ``token``, ``mode``, ``run_id``…).
    """

    def __init__(self, *, project: str = "default", name: str | None = None, tags: Sequence[str] | None = None,
                 config: Mapping[str, Any] | None = None, init_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.project = project
        self._name = name
        self.tags = list(tags or [])
        self.config: dict[str, Any] = dict(config or {})
        self.init_options = dict(init_options or {})
        self.optimizer_name: str | None = None
        self._run: Any | None = None
        self.last_run_id: str | None = None
        """Id of the run this logger writes (or last wrote) to."""

    @property
    def name(self) -> str:
        return self._name or "optiscope"

    @property
    def version(self) -> str:
        return self.last_run_id or ""

    @property
    def experiment(self) -> Any:
        """The ``probe`` run (created on first access)."""
        if self._run is None:
            self._run = probe.init(project=self.project, name=self._name, config=self.config, tags=self.tags,
                                   optimizer=self.optimizer_name, **self.init_options)
            self.last_run_id = self._run.id
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        values = vars(params) if isinstance(params, Namespace) else dict(params or {})
        if self._run is None:
            self.config.update(values)  # the run is created with them
        elif values:
            self._run.log_event("hyperparams", "hyperparameters reported after the run started",
                                level="info", kind="config", data={k: str(v) for k, v in values.items()})

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.experiment.log(dict(metrics), step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._run is not None:
            self._run.finish("finished" if status == "success" else "crashed")
            self._run = None


class OptiscopeCallback(pl.Callback):
    """Attach the probe to a Lightning run's optimizers; installs an :class:`OptiscopeLogger` if needed.

    Args:
        logger_options: for the ``OptiscopeLogger`` it creates (``project``, ``name``, ``config``…).
        attach_options: passed to ``probe.attach`` (``spectra_every``, ``budget``…).
    """

    def __init__(self, *, attach_options: Mapping[str, Any] | None = None, **logger_options: Any) -> None:
        self.attach_options = dict(attach_options or {})
        self.logger_options = logger_options
        self.logger: OptiscopeLogger | None = None
        self.monitor: Any | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        found = [lg for lg in trainer.loggers if isinstance(lg, OptiscopeLogger)]
        if found:
            self.logger = found[0]
        else:
            self.logger = OptiscopeLogger(**self.logger_options)
            trainer.loggers = [*trainer.loggers, self.logger]

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.logger is not None and self.logger.last_run_id:
            checkpoint["optiscope"] = {"run_id": self.logger.last_run_id, "global_step": trainer.global_step}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("optiscope")
        if self.logger is None or not isinstance(saved, dict) or self.logger._run is not None:
            return
        if "run_id" not in self.logger.init_options and isinstance(saved.get("run_id"), str):
            # Lightning logs batch k at step k: the first step trained again is the checkpoint's global_step
            self.logger.init_options.update(run_id=saved["run_id"], resume_from=int(saved["global_step"]))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.logger is not None
        optimizers = [unwrap_optimizer(opt) for opt in trainer.optimizers]
        if not optimizers:
            return
        if self.logger._run is None:
            self.logger.optimizer_name = "+".join(type(opt).__name__ for opt in optimizers)
        run = self.logger.experiment if trainer.is_global_zero else probe.init(mode="disabled")
        self.monitor = probe.attach(unwrap_model(pl_module), optimizers, run=run, start_step=trainer.global_step,
                                    **self.attach_options)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # Lightning calls this after backward and before clipping: the moment the gradients are complete
        if self.monitor is not None:
            self.monitor.gradients_ready()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.detach()
            self.monitor = None
