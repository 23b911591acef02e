"""``infobatch.*``: an InfoBatch sampler's per-epoch ledger (pruned fraction, threshold, class balance)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from probe.diagnostics.quantity import Quantity
from probe.diagnostics.sink import RunLike


class InfoBatchLedger(Quantity):
    """Logs each finished epoch of ``probe.data.InfoBatch``'s ledger once, at the flush after it ends.

    The sampler keeps the record of what was logged (and saves it in its ``state_dict``), so a resumed
    run does not log an epoch again.
    """

    name = "infobatch"
    budgeted = False

    def __init__(self, infobatch: Any) -> None:
        super().__init__(None)
        self.infobatch = infobatch
        self._logged: set[int] = set()

    def at_flush(self, run: RunLike, log_at: Callable[..., None]) -> None:
        logged = getattr(self.infobatch, "logged_epochs", self._logged)
        for stats in self.infobatch.ledger:
            if stats.epoch in logged:
                continue
            logged.add(stats.epoch)
            log_at(stats.as_metrics(), step=stats.epoch)
            if stats.class_pruned_frac is not None:
                run.log_array("infobatch.class_pruned_frac", list(stats.class_pruned_frac), step=stats.epoch)
            if stats.scores_hist is not None:
                run.log_array("infobatch.scores_hist", list(map(float, stats.scores_hist)), step=stats.epoch)
