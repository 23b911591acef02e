"""Our optimizers' internals (``fop.*``, ``kfac.*``, ``normuon.v_*``) as per-layer and global scalars."""

from __future__ import annotations

from probe.diagnostics.gradient_diff import NoiseScale
from probe.diagnostics.internals import fop_summary, global_internals, layer_internals
from probe.diagnostics.quantity import Needs, PostStep, Quantity, Records, option_error
from probe.diagnostics.schedule import Schedule


class OptimizerInternals(Quantity):
    """What ``probe.optim``'s optimizers expose as ``last_internals`` on a step with ``introspect`` on.

    The Monitor switches ``introspect`` on only for the steps this (or the spectra of ``pre_orth`` /
    ``post_orth``) is planned at, so introspection costs nothing otherwise. Full arrays
    (``normuon.v``, ``kfac.*_eigs``) are logged on ``vectors_every``. FOP's per-layer gradient-noise
    measures are summarised into ``fop.noise_scale`` (needs ``batch_size``: B is the batch the two
    halves split, for a distributed FOP the global batch).
    """

    name = "internals"
    priority = 30

    def __init__(self, every: int | Schedule | None = 10, *, vectors_every: int | Schedule | None = 200,
                 batch_size: int | None = None) -> None:
        super().__init__(every, vectors_every=vectors_every)
        if batch_size is not None and batch_size < 1:
            raise option_error(self.name, "batch_size", batch_size, "must be >= 1")
        self.batch_size = batch_size
        self._noise: dict[int, NoiseScale] = {}  # optimizer index -> FOP's running noise-scale means

    def needs(self, step: int) -> Needs:
        return Needs.INTERNALS

    def measure(self, ctx: PostStep, out: Records, *, meanwhile=None) -> None:  # type: ignore[no-untyped-def]
        keys: list = []
        values: list = []
        vectors = self.name in ctx.vectors
        entries = []
        for layer in ctx.layers:
            entry = ctx.internals.get(layer.param)
            if not entry:
                continue
            entries.append(entry)
            found = layer_internals(layer.name, entry)
            keys += found.keys
            values += found.values
            if vectors:
                for key, array in found.arrays.items():
                    out.array(key, layer.name, array)
        for found in (global_internals(ctx.global_internals),
                      fop_summary(entries, self._noise.setdefault(ctx.index, NoiseScale()), self.batch_size)):
            keys += found.keys
            values += found.values
        out.scalars(keys, values)
