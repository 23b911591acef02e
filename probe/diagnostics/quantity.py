"""The quantity protocol: one diagnostic is one small class that the Monitor schedules, budgets and flushes.

A quantity says what it is called (its key prefix and failure domain), when it is due, what it needs
captured around the optimizer step (ΔW, our optimizers' internals) and how it measures. The Monitor
keeps the shared work — the weight copy for ΔW, the ``introspect`` switch, the timing, the budget and
the one host copy per interval — so that two quantities asking for ΔW still cost one copy. Every
hook is optional (the base class does nothing), the cockpit shape.

A quantity of your own, a per-layer metric that shows up on the run page like the built-in ones::

    import probe, torch

    class WeightNorm(probe.Quantity):
        name = "weight_norm"  # logs weight_norm/<layer>

        def measure(self, ctx, out, *, meanwhile=None):
            norms = torch._foreach_norm([layer.weight() for layer in ctx.layers])
            out.scalars([f"weight_norm/{layer.name}" for layer in ctx.layers], torch.stack(norms))

    probe.attach(model, opt, run=run, quantities=[WeightNorm(every=10)])

Values stay device tensors until the interval ends (no ``.item()``): a quantity never synchronizes
a GPU. An exception in a quantity disables it (and only it) for the rest of the run.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from probe.diagnostics.interval import IntervalBuffer
from probe.diagnostics.layers import Layer
from probe.diagnostics.schedule import Schedule, as_schedule
from probe.diagnostics.sink import RunLike

__all__ = ["Needs", "PreStep", "PostStep", "Records", "Quantity"]


class Needs(enum.Flag):
    """What a quantity needs the Monitor to capture around the step it measures."""

    NONE = 0
    DELTA = enum.auto()
    """ΔW = W_after − W_before of every layer with a gradient (one batched copy before the step)."""
    DELTA_MATRICES = enum.auto()
    """ΔW of the ≥2-D layers only."""
    INTERNALS = enum.auto()
    """Our optimizers' ``last_internals`` for this step (``introspect`` switched on for it)."""
    GRAD_NORMS = enum.auto()
    """The per-layer gradient norms of this step in :attr:`PreStep.grad_norms` (the fixed part runs
    this step even when the budget thins it)."""


@dataclass
class PreStep:
    """The step about to run, seen from an optimizer's pre-step hook (the gradients are complete)."""

    step: int
    index: int
    """Which of the attached optimizers (0, 1, …)."""
    optimizer: torch.optim.Optimizer
    layers: list[Layer]
    """This optimizer's monitored layers that have a gradient."""
    captured: list[Layer]
    """The layers whose weights are copied for ΔW this step (a subset of ``layers``)."""
    thinned: bool = False
    """The budget thins the fixed part out of this step: a quantity with ``budgeted = False`` does only
    what every rank must do (a collective) and records nothing."""
    grad_norms: list[Tensor] | None = None
    """0-d norms, one per ``layers``, once ``GradNorm`` ran (later quantities reuse them)."""

    def grad_norms_of(self, layers: Sequence[Layer]) -> list[Tensor] | None:
        """The gradient norms of ``layers`` (a subset of :attr:`layers`), if all were measured."""
        if self.grad_norms is None:
            return None
        by_param = {id(layer.param): n for layer, n in zip(self.layers, self.grad_norms)}
        found = [by_param.get(id(layer.param)) for layer in layers]
        return found if all(n is not None for n in found) else None  # type: ignore[return-value]


@dataclass
class PostStep:
    """The step that just ran, seen from an optimizer's post-step hook."""

    step: int
    index: int
    optimizer: torch.optim.Optimizer
    layers: list[Layer]
    """This optimizer's monitored layers (with or without a gradient this step)."""
    captured: list[Layer]
    """The layers whose weights were copied before the step (ΔW exists for these)."""
    before: list[Tensor]
    """Weights before the step, one per ``captured``."""
    deltas: list[Tensor]
    """ΔW, one per ``captured``."""
    internals: Mapping[Tensor, Mapping[str, Tensor]]
    """``optimizer.last_internals`` when it was introspected this step, else empty."""
    global_internals: Mapping[str, Tensor]
    vectors: frozenset[str]
    """Names of the quantities that should also log their full arrays this step (``vectors_every``)."""
    seed: int = 0
    pre: PreStep | None = None
    _by_param: dict[int, Tensor] | None = field(default=None, repr=False)

    def delta_of(self, layer: Layer) -> Tensor | None:
        """ΔW of ``layer`` if it was captured this step."""
        if self._by_param is None:
            self._by_param = {id(layer.param): d for layer, d in zip(self.captured, self.deltas)}
        return self._by_param.get(id(layer.param))

    def seed_for(self, index: int) -> int:
        """Seed of the ``index``-th randomized measurement of this step: reproducible for a given
        Monitor ``seed``, independent of which thread runs it, never drawn from the global RNG."""
        return (self.seed * 1_000_003 + self.step * 4_099 + index) % (1 << 63)


class Records:
    """Where a quantity puts its values: the interval buffer, with the step bound to it."""

    def __init__(self, buffer: IntervalBuffer) -> None:
        self._buffer = buffer
        self.step = 0

    def scalars(self, keys: list[str], values: Sequence[Tensor] | Tensor, *, fresh: bool = False) -> None:
        """One value per key: a 1-D tensor of ``len(keys)`` values, or a list of 0-d tensors.

        ``fresh=True`` promises the 0-d tensors are new results (e.g. of ``torch._foreach_norm``), never
        views of tensors that change later: they are then stacked once per interval, not per call.
        """
        self._buffer.add_scalars(self.step, keys, values, fresh=fresh)

    def array(self, key: str, layer: str, values: Tensor) -> None:
        """A 1-D array (a spectrum, per-neuron norms) of ``key``/``layer``."""
        self._buffer.add_array(key, layer, self.step, values)

    def arrays(self, rows: list[tuple[str, str]], values: Tensor) -> None:
        """The rows of a 2-D tensor as arrays, row ``b`` for ``rows[b]`` = (key, layer)."""
        self._buffer.add_arrays(rows, self.step, values)

    def host(self, key: str, value: float) -> None:
        """A value already on the host."""
        self._buffer.add_host(self.step, key, value)


class Quantity:
    """Base class of a diagnostic (every hook optional).

    Args:
        every: cadence (an int period, a ``step -> bool`` schedule, or ``None`` for off).
        vectors_every: cadence of the full arrays, logged at the quantity's next run after it is due.

    Class attributes:
        name: key prefix and failure domain (``mon.errors[name]``).
        budgeted: whether the overhead budget may defer it (``False``: the cheap per-step part, which
            is only thinned when it alone exceeds the budget; its ``before_step`` then sees
            ``ctx.thinned``). Its ``needs`` are not captured: ΔW and internals are budgeted work.
        priority: order among quantities planned in one step (lower first; built-ins 0–40).
        overlaps_others: its ``measure`` runs the other planned measures through ``meanwhile`` while
            it waits (the CPU spectra); at most one planned quantity has it.
        on_demand: not scheduled on the training steps: the user triggers it (the half-batch gradient
            difference, :meth:`Monitor.measure_gradient_diff`); its schedule only advises when.
    """

    name: ClassVar[str] = "quantity"
    budgeted: ClassVar[bool] = True
    priority: ClassVar[int] = 100
    overlaps_others: ClassVar[bool] = False
    on_demand: ClassVar[bool] = False

    def __init__(self, every: int | Schedule | None = 1, *, vectors_every: int | Schedule | None = None) -> None:
        self.schedule: Schedule = as_schedule(every)
        self.vectors_schedule: Schedule = as_schedule(vectors_every)

    def is_due(self, step: int) -> bool:
        return self.schedule(step)

    def needs(self, step: int) -> Needs:
        return Needs.NONE

    def bind(self, layers: Sequence[Sequence[Layer]], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Called once by the Monitor (and again when an optimizer gains a param group): the monitored
        layers of each optimizer."""

    def before_step(self, ctx: PreStep, out: Records) -> None:
        """Read what only exists before ``step()`` (gradients: some optimizers rewrite ``.grad``)."""

    def measure(self, ctx: PostStep, out: Records, *, meanwhile: Callable[[], None] | None = None) -> None:
        """Measure after the step. ``meanwhile`` (only for ``overlaps_others``): call it exactly once."""
        if meanwhile is not None:
            meanwhile()

    def at_close(self, step: int, out: Records) -> None:
        """Every closed training step (whether or not this quantity ran), after the last optimizer."""

    def on_host(self, per_step: dict[int, dict[str, float]]) -> None:
        """The interval's values on the host, before they are logged: add values derived from them
        without device work (the global ``grad_norm`` from the per-layer norms)."""

    def at_flush(self, run: RunLike, log_at: Callable[..., None]) -> None:
        """After the interval's host copy: logging of its own (e.g. a per-epoch ledger)."""

    def close(self) -> None:
        """At ``detach``: let go of threads or memory of its own."""


def overrides(quantity: Quantity, hook: str) -> bool:
    """Whether ``quantity`` implements ``hook`` (the Monitor skips calling the base class's no-ops)."""
    return getattr(type(quantity), hook) is not getattr(Quantity, hook)


def option_error(quantity: str, option: str, value: Any, rule: str) -> ValueError:
    """The one shape of a bad-option error: it names the option and the quantity that owns it."""
    return ValueError(f"Invalid {option}: {value!r} ({rule}; an option of the {quantity} quantity)")
