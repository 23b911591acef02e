"""``samples_seen``: the x axis that compares runs by data consumed (InfoBatch's pruned epochs included)."""

from __future__ import annotations

from typing import Any

from probe.diagnostics.quantity import Quantity, Records, option_error


class SamplesSeen(Quantity):
    """Samples consumed up to each step: an InfoBatch's own count (pruned samples are not seen), else
    ``batch_size`` per step. Host arithmetic once per step, never budgeted."""

    name = "samples_seen"
    budgeted = False

    def __init__(self, *, batch_size: int | None = None, infobatch: Any | None = None) -> None:
        super().__init__(None)
        if batch_size is not None and batch_size < 1:
            raise option_error(self.name, "batch_size", batch_size, "must be >= 1")
        if batch_size is None and infobatch is None:
            raise option_error(self.name, "batch_size", None, "needs a batch_size or an infobatch")
        self.batch_size = batch_size
        self.infobatch = infobatch
        self._seen = 0

    def at_close(self, step: int, out: Records) -> None:
        if self.infobatch is not None:
            out.host("samples_seen", float(self.infobatch.samples_seen))
        else:
            self._seen += self.batch_size  # type: ignore[operator]
            out.host("samples_seen", float(self._seen))
