"""Monitor: watch any ``torch.optim`` optimizer through its step hooks and log per-layer diagnostics.

How a step is observed
    ``optimizer.register_step_pre_hook`` / ``register_step_post_hook`` (handles kept, removed by
    :meth:`Monitor.detach`). The pre-hook reads the gradients (our Muon writes its Nesterov blend into
    ``.grad`` during ``step()``, so later would be too late) and, only on steps that need ΔW, clones the
    weights; the post-hook forms ΔW = W_after − W_before and measures. On our optimizers
    (``probe.optim``) the pre-hook switches ``introspect`` on only for steps that read their internals,
    and the post-hook restores it, so introspection costs nothing on the other steps.

Step index
    The k-th training step (k = 0, 1, …) is logged at ``step = start_step + k``, matching the usual
    ``for step in range(n)`` loop. A training step may call several optimizers (e.g. Muon for matrices
    plus AdamW for the rest); it closes at the post-hook of the last optimizer given to ``attach``, or
    when an optimizer that already stepped steps again. Use :meth:`Monitor.set_step` to align with a
    step counter of your own (e.g. after resuming or with gradient accumulation).

What it costs
    Per-step scalars are device tensors; nothing is copied to the host until the logging interval
    ends (``log_every`` steps), when *one* concatenated tensor per device is copied and handed to
    ``run.log`` / ``run.log_array`` / ``run.log_event`` as Python floats and CPU tensors. No ``.item()``
    per step. The expensive diagnostics (ΔW capture, neuron norms, internals, spectra) are scheduled by
    their cadence and then gated by an :class:`OverheadBudget` (default 3 % of step time), which defers
    them when they would exceed it — most overdue first, and never below one run per 10 periods each —
    and thins the per-step grad norms when they alone exceed it; the achieved share is logged as
    ``probe.overhead``, and a ``probe.overhead`` alert says when it stays above twice the budget.
    Diagnostics of the user's own (``quantities=``, see ``probe.diagnostics.quantity``) are scheduled
    and budgeted the same way.

Failure policy
    Diagnostics never crash training: an exception in one diagnostic is caught, counted in
    :attr:`Monitor.errors`, warned about once, and that diagnostic is disabled for the rest of the run.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from probe.diagnostics.alerts import AlertEngine, AlertRules
from probe.diagnostics.budget import MAX_THINNING, OverBudget, OverheadBudget
from probe.diagnostics.gradient_diff import NoiseScale, gradient_difference
from probe.diagnostics.internals import fop_summary, global_internals, layer_internals
from probe.diagnostics.interval import IntervalBuffer
from probe.diagnostics.layers import Layer
from probe.diagnostics.measures import (
    as_matrix,
    clone_all,
    local_shard,
    nonfinite_counts,
    orthogonality_error,
    row_norms,
    spread_stats,
    stack_f32,
)
from probe.diagnostics.quantity import Needs, PostStep, PreStep, Quantity, Records, overrides
from probe.diagnostics.shard_norms import global_norms, sharded_parameters
from probe.diagnostics.sink import RunLike
from probe.diagnostics.schedule import Schedule, as_schedule, period_of
from probe.diagnostics.spectra import not_lifted_fraction
from probe.diagnostics.spectra_pool import SpectraPool, SpectrumRequest

__all__ = ["Monitor", "attach", "RunLike", "SPECTRUM_SOURCES"]

SPECTRUM_SOURCES = ("weight", "update", "pre_orth", "post_orth")
# Budgeted diagnostics in priority order (ties among diagnostics that became due at the same step).
_BUDGETED = ("update", "neuron", "internals", "spectra")
_NEURON_STATS = ("cv", "min", "max", "q50", "frozen_frac")

FisherFactors = Callable[[Tensor], "tuple[Tensor, Tensor] | None"]


@dataclass
class _OptStep:
    """What an optimizer's pre-hook leaves for its post-hook."""

    captured: list[Layer] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    pre: PreStep | None = None
    before: list[Tensor] = field(default_factory=list)
    grad_nonfinite: Tensor | None = None
    introspect_prev: bool | None = None
    step: int = 0
    grad_norms: dict[int, Tensor] = field(default_factory=dict)
    grads_read: bool = True
    """False while the gradients of a ``step(closure)`` call are still to be computed by its closure."""


class Monitor:
    """Per-layer optimizer diagnostics on a cadence, within an overhead budget. Build it with :func:`attach`.

    What is measured: the parameters the optimizers step that are trainable (``requires_grad``) at that
    step, so a frozen base (LoRA) is never measured, and a group added later with ``add_param_group`` or
    a parameter unfrozen later (progressive unfreezing) is measured from its first step on.

    Args:
        model: the model, for parameter names (``named_parameters``); ``None`` names them ``param<i>``.
        optimizers: one optimizer or several stepped in the same training step.
        run: where the results go (``probe.client.Run`` or anything with its ``log``/``log_array``/``log_event``).
        log_every: steps per logging interval (= per host copy).
        scalars_every: cadence of ``grad_norm``, ``grad_norm/L``, ``step_time`` (cheap, never throttled).
        update_every: cadence of ``update_ratio/L`` and ``nonfinite/L`` (needs a weight copy; budgeted).
        neuron_every: cadence of the per-neuron update-norm spread ``neuron.*/L`` (budgeted).
        spectra_every: cadence of the singular-value measures ``sv.<S>.*/L`` and ``orth_err/L`` (budgeted).
        vectors_every: cadence of the full arrays (``sv.<S>``, ``neuron.update_norm``, ``normuon.v``,
            ``kfac.*_eigs``); logged at the next run of the diagnostic producing them.
        internals_every: cadence of our optimizers' internals (``fop.*``, ``kfac.*``, ``normuon.v_*``).
        budget: target probe time / training time (default 0.03); ``None`` runs everything when due.
        spectra_sources: which of ``weight update pre_orth post_orth`` get spectra.
        svd_full_max, svd_full_max_numel, svd_top_k: exact ``svdvals`` up to these sizes, else top-k.
        neuron_axis: per parameter name, the output-neuron axis (default 0, ``nn.Embedding`` weights 1; use 1
            for layers stored (in, out)).
        frozen_rel_tol: a neuron is frozen when its update norm ≤ this × the layer's mean norm.
        alerts: alert thresholds and rate limits.
        include: ``(name, param) -> bool`` filter of the monitored parameters (default: all).
        infobatch: a ``probe.data.InfoBatch`` whose per-epoch ledger and ``samples_seen`` are logged.
        batch_size: samples per step, for ``samples_seen`` when no InfoBatch is attached, and the B of
            the noise scales (``gdiff.noise_scale``, ``fop.noise_scale``: B is the batch the two halves
            split, so for a distributed FOP, whose halves span the ranks, the global batch).
        gdiff_every: cadence advertised by :attr:`wants_gradient_diff` for the opt-in two-half-batch
            measurement (``None``: off; the user calls :meth:`measure_gradient_diff` when they like).
        fisher_factors: ``param -> (A, G) | None`` K-FAC factors for the Fisher-metric gradient difference;
            by default the factors our KFAC/FOP keep in ``optimizer.state[weight]["A"/"G"]``.
        capture_max_bytes: memory for the pre-step weight copies ΔW needs (default 1 GiB); above it each
            step copies a rotating window of layers, so each layer's update measures come every few steps.
        start_step: step index of the first training step.
        seed: seed of the Monitor's own RNG (randomized SVD); the global RNG is never touched.
        spectra_workers: threads that compute CPU spectra side by side, each with one torch thread,
            the training thread one of them (default: torch's intra-op thread count, at most 8; see
            ``spectra_pool``). GPU spectra are computed from the training thread (their solvers
            synchronize: see ``spectra``).
        quantities: diagnostics of your own (:class:`~probe.diagnostics.quantity.Quantity` subclasses),
            scheduled, budgeted (with the same floor), timed and flushed like the built-in ones.
    """

    def __init__(
        self,
        model: nn.Module | None,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        *,
        run: RunLike,
        log_every: int = 10,
        scalars_every: int | Schedule | None = 1,
        update_every: int | Schedule | None = 1,
        neuron_every: int | Schedule | None = 10,
        spectra_every: int | Schedule | None = 50,
        vectors_every: int | Schedule | None = 200,
        internals_every: int | Schedule | None = 10,
        budget: float | None = 0.03,
        spectra_sources: Sequence[str] = SPECTRUM_SOURCES,
        svd_full_max: int = 1024,
        svd_full_max_numel: int = 1 << 22,
        svd_top_k: int = 32,
        neuron_axis: Mapping[str, int] | None = None,
        frozen_rel_tol: float = 1e-3,
        alerts: AlertRules | None = None,
        include: Callable[[str, Tensor], bool] | None = None,
        infobatch: Any | None = None,
        batch_size: int | None = None,
        gdiff_every: int | Schedule | None = None,
        fisher_factors: FisherFactors | None = None,
        capture_max_bytes: int | None = 1 << 30,
        start_step: int = 0,
        seed: int = 0,
        spectra_workers: int | None = None,
        quantities: Sequence[Quantity] = (),
    ) -> None:
        if isinstance(optimizers, torch.optim.Optimizer):
            optimizers = [optimizers]
        self.optimizers: list[torch.optim.Optimizer] = list(optimizers)
        if not self.optimizers:
            raise ValueError("attach needs at least one optimizer")
        if log_every < 1:
            raise ValueError(f"Invalid log_every: {log_every} (must be >= 1)")
        unknown = set(spectra_sources) - set(SPECTRUM_SOURCES)
        if unknown:
            raise ValueError(f"Invalid spectra_sources: {sorted(unknown)} (allowed: {list(SPECTRUM_SOURCES)})")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size} (must be >= 1)")
        self.run = run
        self._noise: dict[str, NoiseScale] = {}  # running means: the half-batch measurement's, each FOP's
        # log_at keeps the user's implicit step count; a run object of the user's own may have only log()
        self._log_at: Callable[..., None] = getattr(run, "log_at", None) or (
            lambda metrics, *, step: run.log(metrics, step=step))  # type: ignore[attr-defined]
        self.log_every = log_every
        self.scalars_schedule = as_schedule(scalars_every)
        self.schedules: dict[str, Schedule] = {
            "update": as_schedule(update_every),
            "neuron": as_schedule(neuron_every),
            "internals": as_schedule(internals_every),
            "spectra": as_schedule(spectra_every),
        }
        self.vectors_schedule = as_schedule(vectors_every)
        self.quantities: list[Quantity] = list(quantities)
        reserved = set(self.schedules) | {"grad_norm", "gdiff", "capture", "monitor", "flush", "infobatch",
                                          "samples_seen", "device_timing", "probe", "layers"}
        for q in self.quantities:
            if not isinstance(q, Quantity):
                raise TypeError(f"Invalid quantities entry: {q!r} (must be a probe.Quantity)")
            if q.name in reserved or q.name in self.schedules:
                raise ValueError(f"Invalid quantities entry: name {q.name!r} is taken (built-in or repeated)")
            self.schedules[q.name] = q.schedule
        self._user = {q.name: q for q in self.quantities}
        self._closing = [q for q in self.quantities if overrides(q, "at_close")]  # checked once, not per step
        self._order = {n: i for i, n in enumerate(_BUDGETED)}
        self._order.update({q.name: len(_BUDGETED) + q.priority for q in self.quantities})
        self.gdiff_schedule = as_schedule(gdiff_every)
        self.budget = OverheadBudget(budget)
        self.spectra_sources = tuple(spectra_sources)
        self.svd_full_max = svd_full_max
        self.svd_full_max_numel = svd_full_max_numel
        self.svd_top_k = svd_top_k
        self.frozen_rel_tol = frozen_rel_tol
        self.alerts = AlertEngine(alerts)
        self.infobatch = infobatch
        self.batch_size = batch_size
        self.fisher_factors = fisher_factors
        self.capture_max_bytes = capture_max_bytes
        self._capture_cursor: dict[int, int] = {}
        self._all_captured: dict[int, int] = {}  # optimizer -> its layer count, once a copy of all of them fits
        self.seed = seed
        self.errors: dict[str, int] = {}
        self.disabled: set[str] = set()
        self.steps_closed = 0

        self._model = model
        self._neuron_axis = dict(neuron_axis or {})
        self._include = include
        self._anonymous = 0
        self._skipped: set[int] = set()  # parameters left out by ``include`` (or with no local rows)
        self._all_layers: list[list[Layer]] = [[] for _ in self.optimizers]  # every parameter stepped
        self._layers: list[list[Layer]] = [[] for _ in self.optimizers]  # of those, the trainable ones
        self._groups_seen = -1  # param groups (all optimizers) when the layers were last listed
        self._discover_layers()
        for q in self.quantities:
            with self._guard(q.name):
                q.bind(self._layers, self.optimizers)

        self._next_step = start_step
        self._open = False
        self._stepped: set[int] = set()
        self._pending: dict[str, int] = {}  # due diagnostic -> step it became due (deferred by the budget)
        # Nominal period of each budgeted diagnostic (declared by its schedule, else the last gap between
        # two steps it was due at) and the last step it was due at: its floor is one run per 10 periods.
        self._periods: dict[str, int] = {n: period_of(s) or 1 for n, s in self.schedules.items()}
        self._last_due: dict[str, int] = {}
        self._fixed_now = False  # whether the fixed per-step part (grad norms) runs this step
        self._fixed_waited = 0  # due steps the fixed part was thinned out of since it last ran
        self._over_budget: list[tuple[int, OverBudget]] = []  # alerts to log at the next flush
        self._over_budget_at: int | None = None
        self._vectors_pending: set[str] = set()
        self._plan: set[str] = set()
        self._vectors_now: set[str] = set()
        self._opt_state: dict[int, _OptStep] = {}
        self._depth: dict[int, int] = {}
        self._step_grad_norms = False  # whether this step measured per-layer grad norms
        self._grad_norm_steps: list[int] = []  # steps whose global grad_norm the flush derives on the host
        self._costs: dict[str, float] = {}
        self._probe_s = 0.0
        self._hook_t0: float | None = None
        self._last_close: float | None = None
        self._buffer = IntervalBuffer()
        self._records = Records(self._buffer)  # what user quantities write through
        self._steps_in_buffer = 0
        self._samples_seen = 0
        self._logged_epochs: set[int] = set()
        self._spectra_pool = SpectraPool(spectra_workers)
        self._cuda_timing = any(layer.param.is_cuda for group in self._all_layers for layer in group)
        self._device_events: list[tuple[str, Any, Any, float]] = []
        self._warned: set[str] = set()
        self._closure: Callable[[], Any] | None = None  # the closure of the step() whose pre-hook is running
        self._handles: list[Any] = []
        for i, opt in enumerate(self.optimizers):
            self._handles.append(opt.register_step_pre_hook(self._make_hook(i, self._pre)))
            self._handles.append(opt.register_step_post_hook(self._make_hook(i, self._post)))

    # ------------------------------------------------------------------ public
    @property
    def step(self) -> int:
        """Index the next (or current) training step will be logged at."""
        return self._next_step

    @property
    def overhead(self) -> float | None:
        """Probe time / step time over the whole run so far (what ``probe.overhead`` logs per interval)."""
        b = self.budget
        return b.probe_total / b.step_total if b.step_total > 0 else None

    def set_step(self, step: int) -> None:
        """Label the next training step ``step`` (later steps count on from it)."""
        self._next_step = int(step)

    @property
    def wants_gradient_diff(self) -> bool:
        """Whether ``gdiff_every`` asks for a half-batch measurement before the upcoming step."""
        return "gdiff" not in self.disabled and self.gdiff_schedule(self._next_step)

    def detach(self) -> None:
        """Flush what is buffered, remove every hook and leave the optimizers' ``introspect`` as found."""
        for idx, state in list(self._opt_state.items()):
            if state.introspect_prev is not None:
                self.optimizers[idx].introspect = state.introspect_prev  # type: ignore[attr-defined]
        self._opt_state.clear()
        if self._open:
            self._close_step()
        self.flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._spectra_pool.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def measure_gradient_diff(
        self,
        half_losses: tuple[Callable[[], Tensor], Callable[[], Tensor]],
        *,
        set_grad: bool = False,
    ) -> None:
        """Measure ``gdiff.*/L`` from two half-batch losses before the upcoming optimizer step.

        Each callable runs the forward pass of one half and returns its mean loss; gradients are taken
        with ``torch.autograd.grad`` so ``.grad`` is untouched — unless ``set_grad=True``, which writes
        g_avg = (g₁+g₂)/2 into ``.grad`` so the two half passes replace the usual full backward (a
        parameter only one half reaches gets half of that half's gradient; one neither half reaches
        keeps its ``.grad``, None after the usual ``zero_grad()``).

        Raises:
            Whatever the loss callables or ``autograd.grad`` raise: they are the training computation.
            Errors of the measurement itself are caught (failure policy of the Monitor).
        """
        # The two half passes are the training computation (with set_grad they replace the backward), so
        # their errors propagate like any training error; only the measurement itself is guarded.
        # every parameter the optimizers step (not only the monitored ones), so set_grad leaves none without .grad
        params = list({id(p): p for opt in self.optimizers for group in opt.param_groups
                       for p in group["params"] if p.requires_grad}.values())
        g1 = torch.autograd.grad(half_losses[0](), params, allow_unused=True)
        g2 = torch.autograd.grad(half_losses[1](), params, allow_unused=True)
        if set_grad:
            with torch.no_grad():
                for p, a, b in zip(params, g1, g2):
                    if a is not None or b is not None:  # a half that does not reach p contributes 0
                        p.grad = ((a if a is not None else 0) + (b if b is not None else 0)) / 2
        t0 = time.perf_counter()
        try:
            self.record_gradient_diff({p: g for p, g in zip(params, g1) if g is not None},
                                      {p: g for p, g in zip(params, g2) if g is not None})
        finally:
            self._probe_s += time.perf_counter() - t0

    def record_gradient_diff(self, g1: Mapping[Tensor, Tensor], g2: Mapping[Tensor, Tensor]) -> None:
        """Log ``gdiff.*/L`` from half-batch gradients you computed (keyed by parameter) for the upcoming step."""
        if "gdiff" in self.disabled:
            return
        with self._guard("gdiff"), torch.no_grad():
            keys: list[str] = []
            values: list[Tensor] = []
            avg_norms: list[Tensor] = []
            diff_norms: list[Tensor] = []
            for group in self._layers:
                for layer in group:
                    a, b = g1.get(layer.param), g2.get(layer.param)
                    if a is None or b is None:
                        continue
                    a, b = local_shard(a), local_shard(b)
                    factors = self._factors_of(layer.param)
                    found = gradient_difference(a, b, factors=factors)
                    for q, v in found.items():
                        keys.append(f"gdiff.{q}/{layer.name}")
                        values.append(v)
                    avg_norms.append(found["gavg_norm"])
                    diff_norms.append(found["gdiff_norm"])
            if avg_norms and self.batch_size is not None:
                keys.append("gdiff.noise_scale")
                noise = self._noise.setdefault("gdiff", NoiseScale())
                values.append(noise.update(avg_norms, diff_norms, self.batch_size))
            self._add_record(self._next_step, keys, values)

    def flush(self) -> None:
        """Copy the interval's measurements to the host (once per device) and hand them to the run."""
        t0 = time.perf_counter()
        try:
            self._flush()
        except Exception as exc:  # noqa: BLE001
            self._fail("flush", exc)
        finally:
            self._probe_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ hooks
    def _make_hook(self, idx: int, body: Callable[[int, torch.optim.Optimizer], None]) -> Callable[..., None]:
        """Wrap ``body`` as a step hook: timed into the probe's overhead, never raising into training."""

        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
            self._hook_t0 = t0 = time.perf_counter()
            self._closure = _closure_of(optimizer, args, kwargs) if body == self._pre else None
            try:
                body(idx, optimizer)
                if self._closure is not None and idx in self._opt_state and not self._opt_state[idx].grads_read:
                    return _with_closure(optimizer, args, kwargs, self._measured_closure(idx, self._closure))
            except Exception as exc:  # noqa: BLE001
                self._fail("monitor", exc)
            finally:
                self._closure = None
                self._probe_s += time.perf_counter() - t0
                self._hook_t0 = None
            return None

        return hook

    def _measured_closure(self, idx: int, closure: Callable[[], Any]) -> Callable[[], Any]:
        """``closure`` that reads this step's gradients once its backward has run (Lightning's automatic
        optimization, LBFGS): they do not exist yet when the pre-step hook runs."""

        def measured() -> Any:
            loss = closure()
            self.gradients_ready(idx)
            return loss

        measured._optiscope_measured = True  # type: ignore[attr-defined]  # a nested step() must not wrap again
        return measured

    def gradients_ready(self, index: int | None = None) -> None:
        """Read the gradients of the step in progress now, if they have not been read yet.

        The Monitor calls it itself after a ``step(closure)``'s closure returns. Call it (the Lightning
        integration does, from ``on_before_optimizer_step``) where the gradients are complete but not yet
        clipped, so ``grad_norm`` reports the norm before clipping.
        """
        t0 = time.perf_counter()
        try:
            for idx in [index] if index is not None else list(self._opt_state):
                state = self._opt_state.get(idx)
                if state is not None and not state.grads_read:
                    state.grads_read = True
                    with torch.no_grad():
                        self._read_gradients(idx, state)
        except Exception as exc:  # noqa: BLE001
            self._fail("monitor", exc)
        finally:
            self._probe_s += time.perf_counter() - t0

    def _pre(self, idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self._depth.get(idx, 0):  # the step() calls around this one, not this one
            self._forget_dead_steps(idx, optimizer, _steps_running(sys._getframe(2), optimizer) - 1)
        self._depth[idx] = self._depth.get(idx, 0) + 1
        # A subclass whose step() calls super().step() runs the hooks again inside: observe the outer call only.
        if "monitor" in self.disabled or self._depth[idx] > 1:
            return
        if idx in self._stepped:
            self._close_step()
        if not self._open:
            self._open_step()
        self._stepped.add(idx)
        step = self._next_step
        closure = self._closure
        deferred = closure is not None and not getattr(closure, "_optiscope_measured", False)
        state = _OptStep(step=step, grads_read=not deferred)
        self._opt_state[idx] = state
        if not self._plan:  # most steps: nothing scheduled, at most the grad norms (no copies, no lists)
            if state.grads_read and self._fixed_now:
                self._read_gradients(idx, state)
            return
        # With a closure the gradients are computed inside step(): capture every trainable layer now
        layers = [layer for layer in self._layers[idx]
                  if (layer.param.requires_grad if deferred else layer.param.grad is not None)]
        with torch.no_grad():
            plan = self._plan
            needs = Needs.NONE
            for name in plan & self._user.keys():
                with self._guard(name):
                    needs |= self._user[name].needs(step)
            matrix_users = plan & {"neuron"} or ("spectra" in plan and "update" in self.spectra_sources) or (
                Needs.DELTA_MATRICES in needs)
            if "update" in plan or Needs.DELTA in needs:
                captured = layers
            elif matrix_users:
                captured = [layer for layer in layers if layer.is_matrix]
            else:
                captured = []
            captured = self._within_capture_limit(idx, captured)
            if captured and "capture" not in self.disabled:
                t = time.perf_counter()
                with self._guard("capture"):
                    tensors = [layer.weight() for layer in captured]
                    state.before = clone_all(tensors)
                    state.captured = captured
                owner = next((n for n in ("update", "neuron", "spectra") if n in plan), "update")
                self._costs[owner] = self._costs.get(owner, 0.0) + time.perf_counter() - t
            state.layers = layers
            if state.grads_read:  # else the closure computes them, and _measured_closure reads them
                self._read_gradients(idx, state)
            if plan & self._user.keys():
                norms = state.grad_norms
                state.pre = PreStep(step, idx, optimizer, layers, state.captured,
                                    stack_f32(list(norms.values())) if norms else None)
                for name in sorted(plan & self._user.keys(), key=self._order.__getitem__):
                    q = self._user[name]
                    if overrides(q, "before_step"):
                        self._records.step = step
                        self._timed(name, lambda q=q: q.before_step(state.pre, self._records))
            wants_internals = "internals" in plan or Needs.INTERNALS in needs or (
                "spectra" in plan and {"pre_orth", "post_orth"} & set(self.spectra_sources)
            )
            if wants_internals and hasattr(optimizer, "introspect"):
                state.introspect_prev = bool(optimizer.introspect)  # type: ignore[attr-defined]
                optimizer.introspect = True  # type: ignore[attr-defined]

    def _read_gradients(self, idx: int, state: _OptStep) -> None:
        """Per-layer gradient norms (and the non-finite counts of the captured layers' gradients).

        Sharded (FSDP2) gradients get their true norm, one all-reduce of squared shard norms per mesh
        (``probe.diagnostics.shard_norms``), on every step of the ``scalars_every`` schedule: a collective
        every rank joins, so it follows that rank-independent schedule and not the per-rank budget.
        """
        step = state.step
        layers = [layer for layer in self._layers[idx] if layer.param.grad is not None]
        grad_norms: dict[int, Tensor] = {}
        full: dict[int, Tensor] = {}
        optimizer = self.optimizers[idx]
        sharded = sharded_parameters(p for group in optimizer.param_groups for p in group["params"])
        if sharded and self.scalars_schedule(step):
            with self._guard("grad_norm_sharded"):
                full = global_norms(sharded)
        if self._fixed_now and layers and "grad_norm" not in self.disabled:
            with self._guard("grad_norm"):
                local = torch._foreach_norm([layer.grad() for layer in layers])  # type: ignore[misc]
                norms = [full.get(id(layer.param), n) for layer, n in zip(layers, local)]
                self._step_grad_norms = True
                self._add_record(step, [f"grad_norm/{layer.name}" for layer in layers], norms)
                grad_norms = {id(layer.param): n for layer, n in zip(layers, norms)}
        state.grad_norms = grad_norms
        if "update" in self._plan and state.captured and "capture" not in self.disabled:
            with self._guard("capture"):
                grads = [layer.grad() for layer in state.captured]
                if all(g is not None for g in grads):
                    known = [grad_norms.get(id(layer.param)) for layer in state.captured]
                    state.grad_nonfinite = nonfinite_counts(
                        grads,  # type: ignore[arg-type]
                        stack_f32(known) if all(n is not None for n in known) else None,  # type: ignore[arg-type]
                    )

    def _discover_layers(self) -> None:
        """List the parameters each optimizer steps (again after ``add_param_group``).

        A parameter already listed keeps its :class:`Layer` (and name); a new one is named from the model
        as it is now (a head added for progressive unfreezing has a name only from then on).
        """
        model = self._model
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        # An embedding table is (tokens, features): its output neurons are the columns, and a row is a
        # token that legitimately stops moving when it is not in the batch (not a frozen neuron).
        axes = {f"{prefix}.weight" if prefix else "weight": 1
                for prefix, module in (model.named_modules() if model is not None else [])
                if isinstance(module, nn.Embedding)}
        axes.update(self._neuron_axis)
        known = {id(layer.param): layer for group in self._all_layers for layer in group}
        skipped = self._skipped
        seen: set[int] = set()
        for i, opt in enumerate(self.optimizers):
            layers = []
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in seen or id(p) in skipped:
                        continue
                    seen.add(id(p))
                    if id(p) in known:
                        layers.append(known[id(p)])
                        continue
                    name = names.get(id(p))
                    if name is None:
                        name = f"param{self._anonymous}"
                        self._anonymous += 1
                    if (self._include is not None and not self._include(name, p)) or local_shard(p).numel() == 0:
                        skipped.add(id(p))  # filtered out, or a DTensor with no rows on this rank
                        continue
                    layers.append(Layer(name, p, axes.get(name, 0)))
            self._all_layers[i][:] = layers
        self._all_captured.clear()  # new layers: sizes to check again
        self._groups_seen = sum(len(opt.param_groups) for opt in self.optimizers)
        for i, layers in enumerate(self._all_layers):
            self._layers[i][:] = [layer for layer in layers if layer.param.requires_grad]

    def _refresh_layers(self) -> None:
        """Measure only trainable parameters, and pick up groups added since the last step.

        Called once per training step: a group count and one ``requires_grad`` read per parameter, so a
        frozen base (LoRA) is never measured and a layer unfrozen later (``requires_grad_()`` or
        ``add_param_group``, as in progressive unfreezing) is measured from that step on.
        """
        if sum(len(opt.param_groups) for opt in self.optimizers) != self._groups_seen:
            self._discover_layers()
            for q in self.quantities:
                with self._guard(q.name):
                    q.bind(self._layers, self.optimizers)
            return
        for all_layers, layers in zip(self._all_layers, self._layers):
            trainable = [layer for layer in all_layers if layer.param.requires_grad]
            if len(trainable) != len(layers):  # a subsequence of the same list: same length, same layers
                layers[:] = trainable

    def _within_capture_limit(self, idx: int, layers: list[Layer]) -> list[Layer]:
        """At most ``capture_max_bytes`` of weight copies per step: a rotating window over the layers.

        ΔW needs a copy of the weights taken before the step. For a large model a copy of every layer
        would be a second model in memory, so each step copies the next layers in turn instead, and every
        layer is still measured every few steps.
        """
        limit = self.capture_max_bytes
        if limit is None or not layers:
            return layers
        if len(layers) == self._all_captured.get(idx):  # the common case: every layer, already known to fit
            return layers
        sizes = [layer.weight().numel() * layer.param.element_size() for layer in layers]
        if sum(sizes) <= limit:
            if len(layers) == len(self._all_layers[idx]):
                self._all_captured[idx] = len(layers)
            return layers
        start = self._capture_cursor.get(idx, 0) % len(layers)
        chosen: list[Layer] = []
        total = 0
        for k in range(len(layers)):
            j = (start + k) % len(layers)
            if chosen and total + sizes[j] > limit:
                break
            chosen.append(layers[j])
            total += sizes[j]
        self._capture_cursor[idx] = start + len(chosen)
        return chosen

    def _forget_dead_steps(self, idx: int, optimizer: torch.optim.Optimizer, running: int) -> None:
        """Hooks still awaiting their post-hook beyond the ``running`` step() calls of this optimizer
        belong to calls that raised between their hooks (an out-of-memory caught by the user, or by a
        subclass's step() that retries or falls back): they no longer count. With none running, the
        whole step died: forget it, or every later one would look nested in it."""
        if self._depth.get(idx, 0) <= running:
            return
        self._depth[idx] = running
        if running == 0:
            state = self._opt_state.pop(idx, None)
            if state is not None and state.introspect_prev is not None:
                optimizer.introspect = state.introspect_prev  # type: ignore[attr-defined]

    def _post(self, idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self._depth.get(idx, 0) > 1:  # the step() calls running, this one included
            self._forget_dead_steps(idx, optimizer, _steps_running(sys._getframe(2), optimizer))
        self._depth[idx] = max(self._depth.get(idx, 0) - 1, 0)
        if "monitor" in self.disabled or self._depth[idx] > 0:
            return
        state = self._opt_state.pop(idx, None)
        if state is None:
            return
        step = self._next_step
        plan = self._plan
        if not plan and not state.captured and state.introspect_prev is None:
            if idx == len(self.optimizers) - 1:
                self._close_step()
            return
        deltas: dict[int, Tensor] = {}
        with torch.no_grad():
            if state.captured:
                with self._guard("capture"):
                    after = [layer.weight() for layer in state.captured]
                    for layer, d in zip(state.captured, torch._foreach_sub(after, state.before)):
                        deltas[id(layer.param)] = d
            measures: list[tuple[str, Callable[[], None]]] = []
            if "update" in plan and deltas:
                measures.append(("update", lambda: self._measure_update(step, state, deltas)))
            if "neuron" in plan and deltas:
                measures.append(("neuron", lambda: self._measure_neurons(step, state, deltas)))
            if "spectra" not in plan or self._cuda_timing:
                self._run_measures(measures)
            internals: Mapping[Tensor, Mapping[str, Tensor]] = {}
            if state.introspect_prev is not None:
                internals = getattr(optimizer, "last_internals", {}) or {}
            for name in sorted(plan & self._user.keys(), key=self._order.__getitem__):
                q = self._user[name]
                ctx = PostStep(
                    step, idx, optimizer, state.layers or self._layers[idx], state.captured, state.before,
                    [deltas[id(layer.param)] for layer in state.captured if id(layer.param) in deltas],
                    internals,
                    (getattr(optimizer, "last_global_internals", {}) or {}) if state.introspect_prev is not None
                    else {},
                    frozenset(self._vectors_now), self.seed, state.pre)
                self._records.step = step
                self._timed(name, lambda q=q, ctx=ctx: q.measure(ctx, self._records))
            if "internals" in plan:
                self._timed("internals", lambda: self._measure_internals(step, idx, optimizer, internals))
            if "spectra" in plan:
                # On the CPU the update and neuron measures run while the spectra workers compute.
                meanwhile = (lambda: self._run_measures(measures, within="spectra")) if measures else None
                self._timed("spectra", lambda: self._measure_spectra(step, idx, deltas, internals, meanwhile))
                self._run_measures(measures)  # any the spectra did not get to (they failed first)
            if state.introspect_prev is not None:
                optimizer.introspect = state.introspect_prev  # type: ignore[attr-defined]
                if not state.introspect_prev:
                    # Asked for by the Monitor alone: let go of what it holds (for Muon, the U and O
                    # stacks: two more copies of every matrix) instead of keeping it until the next time.
                    optimizer.last_internals = {}  # type: ignore[attr-defined]
                    optimizer.last_global_internals = {}  # type: ignore[attr-defined]
        state.before = []
        if idx == len(self.optimizers) - 1:
            self._close_step()

    # ------------------------------------------------------------------ step bookkeeping
    def _open_step(self) -> None:
        step = self._next_step
        if "layers" not in self.disabled:
            with self._guard("layers"):
                self._refresh_layers()
        self._fixed_now = False
        if self.scalars_schedule(step):  # the fixed part, thinned when it alone exceeds the budget
            self._fixed_waited += 1
            if self._fixed_waited >= self.budget.fixed_every:
                self._fixed_now = True
                self._fixed_waited = 0
        for q in self.quantities:
            if q.name not in self.disabled and q.vectors_schedule(step):
                self._vectors_pending.add(q.name)
        for name in self.schedules:
            if name in self.disabled or not self.schedules[name](step):
                continue
            last = self._last_due.get(name)
            if last is not None and period_of(self.schedules[name]) is None:
                self._periods[name] = step - last
            self._last_due[name] = step
            self._pending.setdefault(name, step)
        if self.vectors_schedule(step):
            self._vectors_pending |= {"spectra", "neuron", "internals"}
        # Most overdue first, in nominal periods (a deferred diagnostic moves up the line), then the fixed
        # priority order; one overdue by 9 periods more runs whatever the budget (at least 1 run per 10).
        if self._pending:
            waited = {n: (step - since) / self._periods[n] for n, since in self._pending.items()
                      if n not in self.disabled}
            due = sorted(waited, key=lambda n: (-waited[n], self._order[n]))
            forced = [n for n in due if waited[n] >= MAX_THINNING - 1]
            self._plan = self.budget.select(due, forced)
            for name in self._plan:
                del self._pending[name]
            if self._vectors_pending:
                self._vectors_now = self._vectors_pending & self._plan
                self._vectors_pending -= self._vectors_now
            if "update" in self._plan and self.scalars_schedule(step):
                # The gradients' non-finite check reuses their norms (a finite norm: no NaN/inf to count),
                # two passes over every gradient fewer than counting without them.
                self._fixed_now = True
        self._open = True

    def _close_step(self) -> None:
        step = self._next_step
        now = time.perf_counter()
        in_hook = now - self._hook_t0 if self._hook_t0 is not None else 0.0
        probe_s = self._probe_s + in_hook
        if self._last_close is not None:
            step_time = now - self._last_close
            self._buffer.add_host(step, "step_time", step_time)
            fixed_s = probe_s - sum(self._costs.values()) if self._fixed_now else None
            over = self.budget.observe_step(step_time, probe_s, fixed_s)
            # One event when the budget is first missed, then one per 10 blocks while it stays missed.
            if over is not None and (self._over_budget_at is None
                                     or step - self._over_budget_at >= 10 * self.budget.alert_steps):
                self._over_budget_at = step
                self._over_budget.append((step, over))
        for name, seconds in self._costs.items():
            self.budget.charge(name, seconds)
        self._costs.clear()
        # What this hook spends from here on (e.g. the flush) counts towards the next step.
        self._probe_s = -in_hook
        self._last_close = now
        if self._step_grad_norms:  # √Σ‖gᵢ‖² from the per-layer norms once they are floats: no device work
            self._grad_norm_steps.append(step)
        self._step_grad_norms = False
        if self.infobatch is not None or self.batch_size is not None:
            with self._guard("samples_seen"):
                if self.infobatch is not None:
                    self._buffer.add_host(step, "samples_seen", float(self.infobatch.samples_seen))
                else:
                    self._samples_seen += self.batch_size  # type: ignore[operator]
                    self._buffer.add_host(step, "samples_seen", float(self._samples_seen))
        for q in self._closing:
            if q.name not in self.disabled:
                self._records.step = step
                with self._guard(q.name):
                    q.at_close(step, self._records)
        self._open = False
        self._stepped.clear()
        if self._plan:
            self._plan = set()
        if self._vectors_now:
            self._vectors_now = set()
        self._next_step += 1
        self.steps_closed += 1
        self._steps_in_buffer += 1
        if self._steps_in_buffer >= self.log_every:
            self._flush_guarded()

    def _flush_guarded(self) -> None:
        try:
            self._flush()
        except Exception as exc:  # noqa: BLE001
            self._fail("flush", exc)

    # ------------------------------------------------------------------ measurements
    def _measure_update(self, step: int, state: _OptStep, deltas: dict[int, Tensor]) -> None:
        layers = state.captured
        d = [deltas[id(layer.param)] for layer in layers]
        norms = stack_f32(torch._foreach_norm([*d, *state.before]))  # type: ignore[misc]  # one kernel, one stack
        dn, wn = norms[:len(d)], norms[len(d):]
        self._add_record(step, [f"update_ratio/{layer.name}" for layer in layers], dn / wn)
        counts = nonfinite_counts(d, dn)
        if state.grad_nonfinite is not None and state.grad_nonfinite.shape == counts.shape:
            # absent when a closure left a captured layer gradient-less
            counts = counts + state.grad_nonfinite
        self._add_record(step, [f"nonfinite/{layer.name}" for layer in layers], counts)

    def _measure_neurons(self, step: int, state: _OptStep, deltas: dict[int, Tensor]) -> None:
        by_width: dict[tuple[int, torch.device], list[tuple[str, Tensor]]] = {}
        for layer in state.captured:
            if not layer.is_matrix:
                continue
            norms = row_norms(as_matrix(deltas[id(layer.param)], layer.neuron_axis))
            by_width.setdefault((norms.numel(), norms.device), []).append((layer.name, norms))
            if "neuron" in self._vectors_now:
                self._buffer.add_array("neuron.update_norm", layer.name, step, norms)
        for group in by_width.values():  # layers with as many neurons: one batch of reductions
            stats = spread_stats(torch.stack([norms for _, norms in group]), frozen_rel_tol=self.frozen_rel_tol)
            keys = [f"neuron.{q}/{name}" for q in _NEURON_STATS for name, _ in group]
            self._add_record(step, keys, torch.cat([stats[q] for q in _NEURON_STATS]))

    def _measure_internals(
        self, step: int, idx: int, optimizer: torch.optim.Optimizer, internals: Mapping[Tensor, Mapping[str, Tensor]]
    ) -> None:
        keys: list[str] = []
        values: list[Tensor] = []
        vectors = "internals" in self._vectors_now
        entries = []
        for layer in self._layers[idx]:
            entry = internals.get(layer.param)
            if not entry:
                continue
            entries.append(entry)
            found = layer_internals(layer.name, entry)
            keys += found.keys
            values += found.values
            if vectors:
                for key, array in found.arrays.items():
                    self._buffer.add_array(key, layer.name, step, array)
        for found in (global_internals(getattr(optimizer, "last_global_internals", {}) or {}),
                      fop_summary(entries, self._noise.setdefault(f"fop{idx}", NoiseScale()), self.batch_size)):
            keys += found.keys
            values += found.values
        self._add_record(step, keys, values)

    def _measure_spectra(
        self,
        step: int,
        idx: int,
        deltas: dict[int, Tensor],
        internals: Mapping[Tensor, Mapping[str, Tensor]],
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """Spectra of the optimizer's matrices; ``meanwhile``: other work for this thread, run while
        the spectra workers compute (see ``SpectraPool.compute_groups``)."""
        keys: list[str] = []
        values: list[Tensor] = []
        jobs: list[tuple[str, str]] = []  # (source, layer name) of each request
        requests: list[SpectrumRequest] = []
        for layer in self._layers[idx]:
            if not layer.is_matrix:
                continue
            sources: dict[str, Tensor] = {}
            if "weight" in self.spectra_sources:
                sources["weight"] = as_matrix(layer.weight(), layer.neuron_axis)
            delta = deltas.get(id(layer.param))
            if "update" in self.spectra_sources and delta is not None:
                sources["update"] = as_matrix(delta, layer.neuron_axis)
            entry = internals.get(layer.param) or {}
            for src in ("pre_orth", "post_orth"):
                if src in self.spectra_sources and src in entry:
                    sources[src] = entry[src].reshape(entry[src].shape[0], -1)
            for src, mat in sources.items():
                jobs.append((src, layer.name))
                requests.append(SpectrumRequest(
                    mat,
                    full_max_dim=self.svd_full_max if mat.numel() <= self.svd_full_max_numel else 0,
                    top_k=self.svd_top_k,
                    seed=self._request_seed(step, len(requests)),
                ))
            if "post_orth" in entry:
                keys.append(f"orth_err/{layer.name}")
                values.append(orthogonality_error(entry["post_orth"]))
        self._add_record(step, keys, values)  # the orthogonality errors
        vectors = "spectra" in self._vectors_now
        by_device: dict[torch.device, tuple[list[str], list[Tensor]]] = {}  # one record per device
        for group in self._spectra_pool.compute_groups(requests, meanwhile):
            rows = [jobs[i] for i in group.indices]
            dev_keys, parts = by_device.setdefault(group.spectrum.values.device, ([], []))
            dev_keys += [f"sv.{src}.{q}/{name}" for q in group.stats for src, name in rows]
            parts.append(torch.stack(list(group.stats.values())).reshape(-1))  # measure-major, as the keys
            pre_orth = [b for b, (src, _) in enumerate(rows) if src == "pre_orth"]
            if pre_orth and not group.spectrum.truncated:
                dev_keys += [f"sv.pre_orth.not_lifted/{rows[b][1]}" for b in pre_orth]
                fractions = not_lifted_fraction(group.spectrum)
                parts.append(torch.stack([fractions[b] for b in pre_orth]))  # views: no index tensor to copy
            if vectors:
                names = [(f"sv.{src}", name) for src, name in rows]
                self._buffer.add_arrays(names, step, group.spectrum.values)
        for dev_keys, parts in by_device.values():
            self._add_record(step, dev_keys, torch.cat(parts))

    # ------------------------------------------------------------------ flush
    def _flush(self) -> None:
        self._steps_in_buffer = 0
        per_step, arrays = self._buffer.drain()
        if self._device_events:  # the drain's copy synchronized: the interval's CUDA events are complete
            with self._guard("device_timing"):
                self._settle_device_timing()
        for step in self._grad_norm_steps:
            metrics = per_step.get(step, {})
            if "grad_norm" not in self.disabled:
                metrics["grad_norm"] = math.sqrt(sum(
                    v * v for k, v in metrics.items() if k.startswith("grad_norm/")))
        self._grad_norm_steps.clear()
        overhead = self.budget.take_overhead()
        if overhead is not None and per_step:
            per_step[max(per_step)]["probe.overhead"] = overhead
        self.alerts.start_flush()
        for step, over in self._over_budget:
            self.run.log_event("probe.overhead", over.message(), step=step, level="warning", kind="alert",
                               data=over.data())
        self._over_budget.clear()
        for step in sorted(per_step):
            metrics = per_step[step]
            if metrics:
                self._log_at(metrics, step=step)
            for key, value in metrics.items():
                alert = self.alerts.check_metric(key, step, value)
                if alert is not None:
                    self.run.log_event(
                        alert.key, alert.message, step=alert.step, layer=alert.layer, level=alert.level,
                        kind="alert", data=alert.data,
                    )
        for arr in arrays:
            self.run.log_array(arr.key, arr.values, step=arr.step, layer=arr.layer)
        if self.infobatch is not None:
            with self._guard("infobatch"):
                self._log_infobatch()
        for q in self.quantities:
            if q.name not in self.disabled and overrides(q, "at_flush"):
                with self._guard(q.name):
                    q.at_flush(self.run, self._log_at)

    def _log_infobatch(self) -> None:
        # the sampler keeps the record (and saves it in its state_dict), so a resumed run does not re-log
        logged = getattr(self.infobatch, "logged_epochs", self._logged_epochs)
        for stats in self.infobatch.ledger:
            if stats.epoch in logged:
                continue
            logged.add(stats.epoch)
            self._log_at(stats.as_metrics(), step=stats.epoch)
            if stats.class_pruned_frac is not None:
                self.run.log_array("infobatch.class_pruned_frac", list(stats.class_pruned_frac), step=stats.epoch)
            if stats.scores_hist is not None:
                self.run.log_array("infobatch.scores_hist", list(map(float, stats.scores_hist)), step=stats.epoch)

    # ------------------------------------------------------------------ helpers
    def _add_record(self, step: int, keys: list[str], values: Sequence[Tensor] | Tensor) -> None:
        self._buffer.add_scalars(step, keys, values)

    def _timed(self, name: str, fn: Callable[[], None]) -> None:
        if name in self.disabled:
            return
        events = None
        if self._cuda_timing and "device_timing" not in self.disabled:
            # Host time only measures kernel launches on a GPU: bracket the work with CUDA events and
            # read them after the interval's host copy has synchronized (no extra sync).
            with self._guard("device_timing"):
                events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                events[0].record()
        t0 = time.perf_counter()
        with self._guard(name):
            fn()
        host_s = time.perf_counter() - t0
        if events is not None:
            with self._guard("device_timing"):
                events[1].record()
                self._device_events.append((name, events[0], events[1], host_s))
                return
        self._costs[name] = self._costs.get(name, 0.0) + host_s

    def _run_measures(self, pending: list[tuple[str, Callable[[], None]]], within: str | None = None) -> None:
        """Run and time each pending (name, measure), emptying the list. ``within``: the diagnostic
        whose timing they ran inside of, which gets their time taken back from its own."""
        t0 = time.perf_counter()
        while pending:
            self._timed(*pending.pop(0))
        if within is not None:
            self._costs[within] = self._costs.get(within, 0.0) - (time.perf_counter() - t0)

    def _settle_device_timing(self) -> None:
        """Charge the budget with the device time of the interval's diagnostics (events are complete now)."""
        pending, self._device_events = self._device_events, []
        for name, start, end, host_s in pending:
            if not end.query():  # not reached yet (nothing was copied this interval): settle next time
                self._device_events.append((name, start, end, host_s))
                continue
            device_s = start.elapsed_time(end) / 1e3
            self.budget.charge(name, max(device_s, host_s))
            self.budget.debit(max(device_s - host_s, 0.0))

    def _factors_of(self, param: Tensor) -> tuple[Tensor, Tensor] | None:
        """K-FAC factors (A, G) of ``param``: the user's callable, else our KFAC/FOP state (keys "A", "G")."""
        if self.fisher_factors is not None:
            return self.fisher_factors(param)
        for opt in self.optimizers:
            st = opt.state.get(param)
            if st and isinstance(st.get("A"), Tensor) and isinstance(st.get("G"), Tensor):
                return st["A"], st["G"]
        return None

    def _request_seed(self, step: int, index: int) -> int:
        """Seed of the randomized SVD of the ``index``-th matrix at ``step``: reproducible for a given
        ``seed``, independent of which worker thread runs it, and never drawn from the global RNG."""
        return (self.seed * 1_000_003 + step * 4_099 + index) % (1 << 63)

    @contextmanager
    def _guard(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # noqa: BLE001
            self._fail(name, exc)

    def _fail(self, name: str, exc: BaseException) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        self.disabled.add(name)
        if name not in self._warned:
            self._warned.add(name)
            try:
                warnings.warn(
                    f"optiscope: diagnostic {name!r} failed and is disabled for this run: {exc!r}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            except Exception:  # noqa: BLE001 - warnings turned into errors (-W error) must not reach training
                pass


def _closure_of(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Callable[[], Any] | None:
    """The closure passed to ``step`` (``step(closure)`` or ``step(closure=...)``), if any.

    torch hands step pre-hooks the wrapper's ``args``, which start with the optimizer itself.
    """
    closure = kwargs.get("closure") if kwargs else None
    positional = tuple(args)[1:] if args and args[0] is optimizer else tuple(args)
    if closure is None and positional:
        closure = positional[0]
    return closure if callable(closure) else None


def _with_closure(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any,
                  closure: Callable[[], Any]) -> tuple[Any, Any]:
    """``(args, kwargs)`` for ``step`` with its closure replaced (what a step pre-hook may return)."""
    if kwargs and "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    args = tuple(args)
    head = 1 if args and args[0] is optimizer else 0
    return (*args[:head], closure, *args[head + 1:]), kwargs


def _steps_running(caller: FrameType, optimizer: torch.optim.Optimizer) -> int:
    """How many step() calls of ``optimizer`` are in progress on this thread.

    ``caller`` is the frame that runs the step hooks (torch's wrapper around ``step``); each call in
    progress is a frame running that same code for this optimizer. No frame is kept: a frame holds its
    locals, and after a failed step those may be the very tensors the user wants freed.
    """
    count = 0
    frame: FrameType | None = caller
    while frame is not None:
        if frame.f_code is caller.f_code and frame.f_locals.get("self") is optimizer:
            count += 1
        frame = frame.f_back
    return count


def attach(
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    *,
    run: RunLike,
    **options: Any,
) -> Monitor:
    """Attach diagnostics to ``optimizer`` (any ``torch.optim.Optimizer``, or several) and return the Monitor.

    Wrappers that expose the real optimizer as ``.optimizer`` (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``) are seen through; anything else raises ``TypeError`` naming its type.
    DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.`` wrappers are seen through too, so layer names are
    the user's model's. Attaching to an optimizer that is still attached raises ``RuntimeError``.

    ``options`` are :class:`Monitor`'s keyword arguments (``log_every``, ``spectra_every``, ``budget``,
    ``neuron_axis``, ``infobatch``, ``batch_size``, …). Call ``monitor.detach()`` (or use it as a context
    manager) to flush and remove the hooks.
    """
    from probe.integrations.wrappers import unwrap_model, unwrap_optimizer

    optimizers = [unwrap_optimizer(opt) for opt in ([optimizer] if not isinstance(optimizer, Sequence) else optimizer)]
    for opt in optimizers:
        previous = _ATTACHED.get(opt)
        if previous is not None and previous._handles:
            raise RuntimeError(f"probe.attach: this {type(opt).__name__} is already attached (every point would be "
                               "stored twice); call monitor.detach() on the first Monitor before attaching again")
    monitor = Monitor(unwrap_model(model) if model is not None else None, optimizers, run=run, **options)
    for opt in optimizers:
        _ATTACHED[opt] = monitor
    return monitor


_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Monitor] = weakref.WeakKeyDictionary()
"""Which Monitor watches an optimizer, so a second ``attach`` fails instead of logging everything twice."""
