"""The built-in diagnostics, one :class:`~probe.diagnostics.quantity.Quantity` per module.

``probe.attach(model, opt, run=run)`` measures with :func:`default_quantities`; its cadence shorthands
(``spectra_every=``, …) set the built-ins' ``every``. Anything finer lives with its quantity: pass a
configured built-in to replace the default one, e.g.
``probe.attach(model, opt, run=run, quantities=[Spectra(every=100, top_k=16)])``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from probe.diagnostics.quantities.grad_norm import GradNorm
from probe.diagnostics.quantities.gradient_diff import FisherFactors, GradientDiff
from probe.diagnostics.quantities.infobatch_ledger import InfoBatchLedger
from probe.diagnostics.quantities.neuron_norms import NeuronNorms
from probe.diagnostics.quantities.optimizer_internals import OptimizerInternals
from probe.diagnostics.quantities.samples_seen import SamplesSeen
from probe.diagnostics.quantities.spectra import SOURCES, Spectra
from probe.diagnostics.quantities.update_ratio import UpdateRatio
from probe.diagnostics.quantity import Quantity
from probe.diagnostics.schedule import Schedule

__all__ = [
    "GradNorm", "UpdateRatio", "NeuronNorms", "OptimizerInternals", "Spectra", "GradientDiff", "SamplesSeen",
    "InfoBatchLedger", "FisherFactors", "SOURCES", "CADENCES", "MOVED", "default_quantities", "assemble",
]

CADENCES = ("scalars_every", "update_every", "neuron_every", "internals_every", "spectra_every", "vectors_every",
            "gdiff_every")
"""``attach``'s cadence shorthands (``vectors_every`` sets the arrays of neurons, internals and spectra)."""

MOVED = {
    "spectra_sources": "Spectra(sources=...)",
    "svd_full_max": "Spectra(full_max=...)",
    "svd_full_max_numel": "Spectra(full_max_numel=...)",
    "svd_top_k": "Spectra(top_k=...)",
    "spectra_workers": "Spectra(workers=...)",
    "frozen_rel_tol": "NeuronNorms(frozen_rel_tol=...)",
    "fisher_factors": "GradientDiff(fisher_factors=...)",
}
"""Settings that live with their quantity: where each one went, for a clear error."""

def default_quantities(
    *,
    scalars_every: int | Schedule | None = 1,
    update_every: int | Schedule | None = 1,
    neuron_every: int | Schedule | None = 10,
    internals_every: int | Schedule | None = 10,
    spectra_every: int | Schedule | None = 50,
    vectors_every: int | Schedule | None = 200,
    gdiff_every: int | Schedule | None = None,
    batch_size: int | None = None,
    infobatch: Any | None = None,
) -> list[Quantity]:
    """The built-ins at their default cadences (``None`` turns one off)."""
    found: list[Quantity] = [
        GradNorm(scalars_every),
        UpdateRatio(update_every),
        NeuronNorms(neuron_every, vectors_every=vectors_every),
        OptimizerInternals(internals_every, vectors_every=vectors_every, batch_size=batch_size),
        Spectra(spectra_every, vectors_every=vectors_every),
        GradientDiff(gdiff_every, batch_size=batch_size),
    ]
    if batch_size is not None or infobatch is not None:
        found.append(SamplesSeen(batch_size=batch_size, infobatch=infobatch))
    if infobatch is not None:
        found.append(InfoBatchLedger(infobatch))
    return found


_BUILT_IN = (GradNorm, UpdateRatio, NeuronNorms, OptimizerInternals, Spectra, GradientDiff)


def assemble(shorthands: Mapping[str, Any], quantities: Sequence[Quantity]) -> list[Quantity]:
    """The Monitor's quantities: the defaults with ``shorthands``, a configured built-in in ``quantities``
    replacing its default, then the user's own.

    Raises:
        TypeError: an entry is not a Quantity, or a setting that now lives with its quantity is passed.
        ValueError: a name is taken twice, or a built-in is both configured and given a shorthand.
    """
    for option, where in MOVED.items():
        if option in shorthands:
            raise TypeError(f"Invalid option {option}: it is a setting of its quantity now; pass "
                            f"quantities=[{where}] (from probe.diagnostics.quantities)")
    for q in quantities:
        if not isinstance(q, Quantity):
            raise TypeError(f"Invalid quantities entry: {q!r} (must be a probe.Quantity)")
    found = default_quantities(**shorthands)
    by_name = {q.name: i for i, q in enumerate(found)}
    seen: set[str] = set()
    shorthand_of = {"scalars_every": "grad_norm", "update_every": "update", "neuron_every": "neuron",
                    "internals_every": "internals", "spectra_every": "spectra", "gdiff_every": "gdiff"}
    given = {shorthand_of[k] for k in shorthands if k in shorthand_of}
    for q in quantities:
        if q.name in seen:
            raise ValueError(f"Invalid quantities entry: name {q.name!r} is taken (repeated)")
        seen.add(q.name)
        i = by_name.get(q.name)
        if i is None:
            found.append(q)
        elif isinstance(q, _BUILT_IN) and isinstance(q, type(found[i])):
            if q.name in given:
                raise ValueError(f"Invalid quantities entry: {type(q).__name__} is configured twice "
                                 f"(also by a {q.name} cadence option of attach)")
            found[i] = q
        else:
            raise ValueError(f"Invalid quantities entry: name {q.name!r} is taken (built-in {type(found[i]).__name__})")
    return found
