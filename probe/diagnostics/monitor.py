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

import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn

from probe.diagnostics.alerts import AlertEngine, AlertRules
from probe.diagnostics.budget import MAX_THINNING, OverBudget, OverheadBudget
from probe.diagnostics.interval import IntervalBuffer
from probe.diagnostics.layers import Layer
from probe.diagnostics.measures import clone_all, local_shard
from probe.diagnostics.quantities import CADENCES, MOVED, SOURCES, GradientDiff, assemble
from probe.diagnostics.quantity import Needs, PostStep, PreStep, Quantity, Records, overrides
from probe.diagnostics.schedule import never, period_of
from probe.diagnostics.sink import RunLike

__all__ = ["Monitor", "attach", "RunLike", "SPECTRUM_SOURCES"]

SPECTRUM_SOURCES = SOURCES
# Failure domains of the Monitor's own work, which no quantity may be named after.
_RESERVED = frozenset({"capture", "monitor", "flush", "device_timing", "probe", "layers"})
# attach's options that are the Monitor's own (the rest are the quantities' shorthands).
_MONITOR_OPTIONS = frozenset({"log_every", "budget", "alerts", "include", "neuron_axis", "capture_max_bytes",
                              "start_step", "seed"})


@dataclass
class _OptStep:
    """What an optimizer's pre-hook leaves for its post-hook."""

    captured: list[Layer] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    pre: PreStep | None = None
    before: list[Tensor] = field(default_factory=list)
    introspect_prev: bool | None = None
    step: int = 0
    grads_read: bool = True
    """False while the gradients of a ``step(closure)`` call are still to be computed by its closure."""


class Monitor:
    """Per-layer optimizer diagnostics on a cadence, within an overhead budget. Build it with :func:`attach`.

    A scheduler over a list of quantities (``probe.diagnostics.quantities``, one diagnostic each, the
    user's own among them): each step it plans the quantities that are due within the budget, does
    the work they share once (the weight copy for ΔW, switching ``introspect`` on, reading the
    gradients when they are complete), times each one, and copies the interval's values to the host
    once per ``log_every`` steps.

    What is measured: the parameters the optimizers step that are trainable (``requires_grad``) at that
    step, so a frozen base (LoRA) is never measured, and a group added later with ``add_param_group`` or
    a parameter unfrozen later (progressive unfreezing) is measured from its first step on.

    Args:
        model: the model, for parameter names (``named_parameters``); ``None`` names them ``param<i>``.
        optimizers: one optimizer or several stepped in the same training step.
        run: where the results go (``probe.client.Run`` or anything with its ``log``/``log_array``/``log_event``).
        quantities: what to measure (default :func:`~probe.diagnostics.quantities.default_quantities`;
            :func:`attach` assembles them from its shorthands).
        log_every: steps per logging interval (= per host copy).
        budget: target probe time / training time (default 0.03); ``None`` runs everything when due.
        alerts: alert thresholds and rate limits.
        include: ``(name, param) -> bool`` filter of the monitored parameters (default: all).
        neuron_axis: per parameter name, the output-neuron axis (default 0, ``nn.Embedding`` weights 1; use 1
            for layers stored (in, out)).
        capture_max_bytes: memory for the pre-step weight copies ΔW needs (default 1 GiB); above it each
            step copies a rotating window of layers, so each layer's update measures come every few steps.
        start_step: step index of the first training step.
        seed: seed of the randomized measurements (``PostStep.seed_for``); the global RNG is never touched.
    """

    def __init__(
        self,
        model: nn.Module | None,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        *,
        run: RunLike,
        quantities: Sequence[Quantity] | None = None,
        log_every: int = 10,
        budget: float | None = 0.03,
        alerts: AlertRules | None = None,
        include: Callable[[str, Tensor], bool] | None = None,
        neuron_axis: Mapping[str, int] | None = None,
        capture_max_bytes: int | None = 1 << 30,
        start_step: int = 0,
        seed: int = 0,
    ) -> None:
        if isinstance(optimizers, torch.optim.Optimizer):
            optimizers = [optimizers]
        self.optimizers: list[torch.optim.Optimizer] = list(optimizers)
        if not self.optimizers:
            raise ValueError("attach needs at least one optimizer")
        if log_every < 1:
            raise ValueError(f"Invalid log_every: {log_every} (must be >= 1)")
        self.quantities: list[Quantity] = assemble({}, ()) if quantities is None else list(quantities)
        names = [q.name for q in self.quantities]
        if len(set(names)) != len(names) or set(names) & _RESERVED:
            raise ValueError(f"Invalid quantities: names must be unique and not {sorted(_RESERVED)} ({names})")
        self.run = run
        # log_at keeps the user's implicit step count; a run object of the user's own may have only log()
        self._log_at: Callable[..., None] = getattr(run, "log_at", None) or (
            lambda metrics, *, step: run.log(metrics, step=step))  # type: ignore[attr-defined]
        self.log_every = log_every
        stepped = sorted((q for q in self.quantities if not q.on_demand), key=lambda q: q.priority)
        self._budgeted = [q for q in stepped if q.budgeted]
        self._fixed = [q for q in stepped if not q.budgeted]
        self._by_name = {q.name: q for q in self.quantities}
        self._order = {q.name: i for i, q in enumerate(stepped)}
        self._hooked = {hook: [q for q in stepped if overrides(q, hook)]  # checked once, not per step
                        for hook in ("before_step", "measure", "at_close")}
        self._fixed_before = [q for q in self._hooked["before_step"] if not q.budgeted]
        self._fixed_measure = [q for q in self._hooked["measure"] if not q.budgeted]
        self._gdiff = next((q for q in self.quantities if isinstance(q, GradientDiff)), None)
        self.budget = OverheadBudget(budget)
        self.alerts = AlertEngine(alerts)
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
        self._bind()

        self._next_step = start_step
        self._open = False
        self._stepped: set[int] = set()
        self._pending: dict[str, int] = {}  # due quantity -> step it became due (deferred by the budget)
        # Nominal period of each budgeted quantity (declared by its schedule, else the last gap between
        # two steps it was due at) and the last step it was due at: its floor is one run per 10 periods.
        self._periods: dict[str, int] = {q.name: period_of(q.schedule) or 1 for q in self._budgeted}
        # (name, schedule, vectors schedule, declared period) of each budgeted quantity, read every step
        # (a quantity turned off, with no arrays either, is left out: nothing to check every step)
        self._schedules = [(q.name, _due_of(q), q.vectors_schedule, period_of(q.schedule)) for q in self._budgeted
                           if _due_of(q) is not never or q.vectors_schedule is not never]
        self._fixed_scheduled = [(q, _due_of(q)) for q in self._fixed if _due_of(q) is not never]
        self._closing = self._hooked["at_close"]
        self._last_due: dict[str, int] = {}
        self._fixed_due: list[Quantity] = []  # fixed quantities due this step (thinned or not)
        self._fixed_now = False  # whether the fixed per-step part runs (is not thinned) this step
        self._fixed_waited = 0  # due steps the fixed part was thinned out of since it last ran
        self._over_budget: list[tuple[int, OverBudget]] = []  # alerts to log at the next flush
        self._over_budget_at: int | None = None
        self._vectors_pending: set[str] = set()
        self._plan: list[Quantity] = []  # the budgeted quantities that run this step, in priority order
        self._needs = Needs.NONE  # what the plan needs captured
        self._capture_owner = ""  # the planned quantity charged with the weight copy
        self._vectors_now: frozenset[str] = frozenset()
        self._opt_state: dict[int, _OptStep] = {}
        self._depth: dict[int, int] = {}
        self._costs: dict[str, float] = {}
        self._probe_s = 0.0
        self._hook_t0: float | None = None
        self._last_close: float | None = None
        self._buffer = IntervalBuffer()
        self._records = Records(self._buffer)
        self._steps_in_buffer = 0
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
        q = self._gdiff
        return q is not None and q.name not in self.disabled and q.is_due(self._next_step)

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
        for q in self.quantities:
            if overrides(q, "close"):
                with self._guard(q.name):
                    q.close()

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
        q = self._gdiff
        if q is None or q.name in self.disabled:
            return
        self._records.step = self._next_step
        with self._guard(q.name), torch.no_grad():
            q.record(g1, g2, self._records)

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
        closure = self._closure
        deferred = closure is not None and not getattr(closure, "_optiscope_measured", False)
        state = _OptStep(step=self._next_step, grads_read=not deferred)
        self._opt_state[idx] = state
        if not self._plan:  # most steps: nothing planned, at most the fixed part (no copies)
            if state.grads_read and self._fixed_due:
                self._read_gradients(idx, state)
            return
        needs = self._needs
        with torch.no_grad():
            if Needs.DELTA in needs or Needs.DELTA_MATRICES in needs:
                # With a closure the gradients are computed inside step(): capture every trainable layer now
                layers = [layer for layer in self._layers[idx]
                          if (layer.param.requires_grad if deferred else layer.param.grad is not None)]
                if Needs.DELTA not in needs:
                    layers = [layer for layer in layers if layer.is_matrix]
                captured = self._within_capture_limit(idx, layers)
                if captured and "capture" not in self.disabled:
                    t = time.perf_counter()
                    with self._guard("capture"):
                        state.before = clone_all([layer.weight() for layer in captured])
                        state.captured = captured
                    owner = self._capture_owner
                    self._costs[owner] = self._costs.get(owner, 0.0) + time.perf_counter() - t
            if state.grads_read:  # else the closure computes them, and _measured_closure reads them
                self._read_gradients(idx, state)
            if Needs.INTERNALS in needs and hasattr(optimizer, "introspect"):
                state.introspect_prev = bool(optimizer.introspect)  # type: ignore[attr-defined]
                optimizer.introspect = True  # type: ignore[attr-defined]

    def _read_gradients(self, idx: int, state: _OptStep) -> None:
        """The quantities' ``before_step`` once this step's gradients are complete: the fixed part
        (grad norms, thinned or not) on each step it is due, then the planned quantities, timed."""
        layers = [layer for layer in self._layers[idx] if layer.param.grad is not None]
        ctx = PreStep(state.step, idx, self.optimizers[idx], layers, state.captured, thinned=not self._fixed_now)
        state.pre = ctx
        self._records.step = state.step
        for q in self._fixed_due:
            if q.name not in self.disabled and q in self._fixed_before:
                try:
                    q.before_step(ctx, self._records)
                except Exception as exc:  # noqa: BLE001
                    self._fail(q.name, exc)
        for q in self._plan:
            if q in self._hooked["before_step"]:
                self._timed(q.name, lambda q=q: q.before_step(ctx, self._records))

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
            self._bind()
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
        plan = self._plan
        if self._fixed_measure and self._fixed_now:
            plan = plan + [q for q in self._fixed_measure if q in self._fixed_due]
        if plan:
            with torch.no_grad():
                self._measure(idx, optimizer, state, plan)
        if state.introspect_prev is not None:
            optimizer.introspect = state.introspect_prev  # type: ignore[attr-defined]
            if not state.introspect_prev:
                # Asked for by the Monitor alone: let go of what it holds (for Muon, the U and O
                # stacks: two more copies of every matrix) instead of keeping it until the next time.
                optimizer.last_internals = {}  # type: ignore[attr-defined]
                optimizer.last_global_internals = {}  # type: ignore[attr-defined]
        if idx == len(self.optimizers) - 1:
            self._close_step()

    def _measure(self, idx: int, optimizer: torch.optim.Optimizer, state: _OptStep, plan: list[Quantity]) -> None:
        """Run the planned quantities' ``measure`` after the step, each timed. On the CPU the one that
        overlaps others (the spectra) runs the rest while its worker threads compute."""
        deltas: list[Tensor] = []
        if state.captured:
            with self._guard("capture"):
                deltas = list(torch._foreach_sub([layer.weight() for layer in state.captured], state.before))
        introspected = state.introspect_prev is not None
        ctx = PostStep(
            state.step, idx, optimizer, self._layers[idx], state.captured if deltas else [],
            state.before if deltas else [], deltas,
            (getattr(optimizer, "last_internals", {}) or {}) if introspected else {},
            (getattr(optimizer, "last_global_internals", {}) or {}) if introspected else {},
            self._vectors_now, self.seed, state.pre)
        state.before = []
        self._records.step = state.step
        measured = [q for q in plan if q in self._hooked["measure"]]
        overlapping = None if self._cuda_timing else next((q for q in measured if q.overlaps_others), None)
        pending = [(q.name, lambda q=q: q.measure(ctx, self._records)) for q in measured if q is not overlapping]
        if overlapping is not None:
            meanwhile = (lambda: self._run_measures(pending, within=overlapping.name)) if pending else None
            self._timed(overlapping.name, lambda: overlapping.measure(ctx, self._records, meanwhile=meanwhile))
        self._run_measures(pending)  # all of them, or any the overlapping one did not get to (it failed first)

    # ------------------------------------------------------------------ step bookkeeping
    def _open_step(self) -> None:
        step = self._next_step
        if "layers" not in self.disabled:
            with self._guard("layers"):
                self._refresh_layers()
        self._fixed_due = [q for q, due in self._fixed_scheduled if due(step) and q.name not in self.disabled]
        self._fixed_now = False
        if self._fixed_due:  # the fixed part, thinned when it alone exceeds the budget
            self._fixed_waited += 1
            if self._fixed_waited >= self.budget.fixed_every:
                self._fixed_now = True
                self._fixed_waited = 0
        disabled = self.disabled
        for name, due, vectors, declared in self._schedules:
            if name in disabled:
                continue
            if vectors(step):
                self._vectors_pending.add(name)
            if not due(step):
                continue
            if declared is None:  # a callable schedule: its period is the last gap between due steps
                last = self._last_due.get(name)
                if last is not None:
                    self._periods[name] = step - last
                self._last_due[name] = step
            self._pending.setdefault(name, step)
        if not self._pending:
            self._open = True
            return
        # Most overdue first, in nominal periods (a deferred quantity moves up the line), then the
        # priority order; one overdue by 9 periods more runs whatever the budget (at least 1 run per 10).
        waited = {n: (step - since) / self._periods[n] for n, since in self._pending.items() if n not in self.disabled}
        due = sorted(waited, key=lambda n: (-waited[n], self._order[n]))
        forced = [n for n in due if waited[n] >= MAX_THINNING - 1]
        chosen = self.budget.select(due, forced)
        self._open = True
        if not chosen:  # all deferred (a small model's usual step under the budget)
            return
        for name in chosen:
            del self._pending[name]
        self._plan = [q for q in self._budgeted if q.name in chosen]
        if self._vectors_pending:
            self._vectors_now = frozenset(self._vectors_pending & chosen)
            self._vectors_pending -= self._vectors_now
        needs = Needs.NONE
        self._capture_owner = ""
        for q in self._plan:
            try:
                wanted = q.needs(step)
            except Exception as exc:  # noqa: BLE001
                self._fail(q.name, exc)
                continue
            needs |= wanted
            if not self._capture_owner and wanted & (Needs.DELTA | Needs.DELTA_MATRICES):
                self._capture_owner = q.name
        self._needs = needs
        if Needs.GRAD_NORMS in needs and self._fixed_due:
            self._fixed_now = True  # e.g. the gradients' non-finite check reuses their norms

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
        closing = self._closing
        if closing:
            self._records.step = step
            for q in closing:
                if q.name not in self.disabled:
                    with self._guard(q.name):
                        q.at_close(step, self._records)
        self._open = False
        self._stepped.clear()
        if self._plan:
            self._plan = []
            self._needs = Needs.NONE
        if self._vectors_now:
            self._vectors_now = frozenset()
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

    # ------------------------------------------------------------------ flush
    def _flush(self) -> None:
        self._steps_in_buffer = 0
        per_step, arrays = self._buffer.drain()
        if self._device_events:  # the drain's copy synchronized: the interval's CUDA events are complete
            with self._guard("device_timing"):
                self._settle_device_timing()
        for q in self.quantities:
            if q.name not in self.disabled and overrides(q, "on_host"):
                with self._guard(q.name):
                    q.on_host(per_step)
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
        for q in self.quantities:
            if q.name not in self.disabled and overrides(q, "at_flush"):
                with self._guard(q.name):
                    q.at_flush(self.run, self._log_at)

    # ------------------------------------------------------------------ helpers
    def _bind(self) -> None:
        for q in self.quantities:
            with self._guard(q.name):
                q.bind(self._layers, self.optimizers)

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


def _due_of(q: Quantity) -> Callable[[int], bool]:
    """``q``'s due test read every step: its schedule itself, unless the class overrides ``is_due``."""
    return q.is_due if overrides(q, "is_due") else q.schedule


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
    quantities: Sequence[Quantity] = (),
    **options: Any,
) -> Monitor:
    """Attach diagnostics to ``optimizer`` (any ``torch.optim.Optimizer``, or several) and return the Monitor.

    Wrappers that expose the real optimizer as ``.optimizer`` (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``) are seen through; anything else raises ``TypeError`` naming its type.
    DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.`` wrappers are seen through too, so layer names are
    the user's model's. Attaching to an optimizer that is still attached raises ``RuntimeError``.

    Args:
        quantities: diagnostics of your own (``probe.Quantity`` subclasses), and configured built-ins
            (``probe.diagnostics.quantities.Spectra(top_k=16)``) that replace the default ones.
        options: the :class:`Monitor`'s own (``log_every``, ``budget``, ``alerts``, ``include``,
            ``neuron_axis``, ``capture_max_bytes``, ``start_step``, ``seed``), the built-ins' cadences
            (``scalars_every``, ``update_every``, ``neuron_every``, ``internals_every``, ``spectra_every``,
            ``vectors_every``, ``gdiff_every``; ``None`` turns one off), ``batch_size`` and ``infobatch``.

    Call ``monitor.detach()`` (or use it as a context manager) to flush and remove the hooks.
    """
    from probe.integrations.wrappers import unwrap_model, unwrap_optimizer

    own = {k: v for k, v in options.items() if k in _MONITOR_OPTIONS}
    shorthands = {k: v for k, v in options.items() if k not in _MONITOR_OPTIONS}
    unknown = set(shorthands) - set(CADENCES) - {"batch_size", "infobatch"} - set(MOVED)
    if unknown:
        raise TypeError(f"attach got unknown options {sorted(unknown)} (allowed: "
                        f"{sorted(_MONITOR_OPTIONS | set(CADENCES) | {'batch_size', 'infobatch', 'quantities'})})")
    if own.get("log_every", 1) < 1:  # before the quantities, so the error names the option given
        raise ValueError(f"Invalid log_every: {own['log_every']} (must be >= 1)")
    assembled = assemble(shorthands, quantities)
    optimizers = [unwrap_optimizer(opt) for opt in ([optimizer] if not isinstance(optimizer, Sequence) else optimizer)]
    for opt in optimizers:
        previous = _ATTACHED.get(opt)
        if previous is not None and previous._handles:
            raise RuntimeError(f"probe.attach: this {type(opt).__name__} is already attached (every point would be "
                               "stored twice); call monitor.detach() on the first Monitor before attaching again")
    monitor = Monitor(unwrap_model(model) if model is not None else None, optimizers, run=run,
                      quantities=assembled, **own)
    for opt in optimizers:
        _ATTACHED[opt] = monitor
    return monitor


_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Monitor] = weakref.WeakKeyDictionary()
"""Which Monitor watches an optimizer, so a second ``attach`` fails instead of logging everything twice."""
