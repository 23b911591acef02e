"""Per-epoch pruning record of :class:`probe.data.InfoBatch`.

Kept apart from the sampler so the probe and the dashboard can depend on the record's shape
(and its metric names, ``docs/ARCHITECTURE.md`` "Metric key names") without reading the sampling code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["EpochStats"]

# Scalars logged as ``infobatch.<name>`` with step = epoch, in the contract's order.
_SCALAR_FIELDS = (
    "threshold",
    "d1_frac",
    "pruned_count",
    "pruned_frac",
    "rescale",
    "saved_frac_cum",
    "annealing",
    "samples_seen",
    "nonfinite",
)


@dataclass(frozen=True)
class EpochStats:
    """What InfoBatch decided at the start of one epoch (global over all ranks).

    Every count is over the whole dataset, before the distributed sharding and padding, so all ranks
    hold identical records. The two counters ``samples_seen`` and ``nonfinite`` are snapshots taken
    when the epoch was planned, i.e. at the end of the previous epoch: they put the epoch on a
    samples axis without waiting for it to finish.

    Attributes:
        epoch: The epoch index (``set_epoch`` value).
        num_samples: N, the dataset size.
        kept_count: Samples in this epoch's index list (|D₂| + kept part of D₁).
        threshold: Mean score H̄ over the scored samples; NaN when no sample has a score yet.
        d1_frac: |D₁|/N, the "well learned" fraction (score strictly below H̄).
        pruned_count: Samples skipped this epoch.
        pruned_frac: ``pruned_count / N``.
        rescale: Loss weight of the kept D₁ samples: 1/(1−r) in a pruning epoch, 1 when annealing.
        weight_sum: Σ of the weights over the kept samples; ≈ N when the epoch is unbiased (ALGORITHMS §5.5).
        saved_frac_cum: Σ pruned / (N · epochs planned so far): the forward/backward work saved up to here.
        annealing: True in the final full-data epochs (all weights 1).
        samples_seen: Samples passed to ``update``/``record`` before this epoch (all ranks).
        nonfinite: Non-finite losses excluded from the scores before this epoch (cumulative).
        class_pruned_frac: Per class c, pruned samples of class c / samples of class c
            (NaN for a class with no samples); ``None`` without labels.
        scores_hist: Counts of the scored samples' scores in equal-width bins over ``scores_hist_range``;
            ``None`` when nothing is scored yet.
        scores_hist_range: ``(min, max)`` of the scored samples' scores.
    """

    epoch: int
    num_samples: int
    kept_count: int
    threshold: float
    d1_frac: float
    pruned_count: int
    pruned_frac: float
    rescale: float
    weight_sum: float
    saved_frac_cum: float
    annealing: bool
    samples_seen: int
    nonfinite: int
    class_pruned_frac: tuple[float, ...] | None = None
    scores_hist: tuple[int, ...] | None = None
    scores_hist_range: tuple[float, float] | None = None

    def as_metrics(self, prefix: str = "infobatch.") -> dict[str, float]:
        """The scalar fields under their contract names (``infobatch.threshold`` …), ready for ``run.log``.

        Booleans become 0/1 so every value is a plain number on the wire.
        """
        return {f"{prefix}{name}": float(getattr(self, name)) for name in _SCALAR_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (tuples as lists) used by ``InfoBatch.state_dict``."""
        out = dataclasses.asdict(self)
        for key in ("class_pruned_frac", "scores_hist", "scores_hist_range"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochStats:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so older checkpoints keep loading."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("class_pruned_frac", "scores_hist", "scores_hist_range"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def saved_fraction(records: list[EpochStats]) -> float:
    """Σ pruned / (N · epochs) over ``records``; 0 for no records."""
    if not records:
        return 0.0
    total = sum(r.pruned_count for r in records)
    return total / (records[0].num_samples * len(records))

