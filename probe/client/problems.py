"""Counting and reporting the client's own failures without ever raising into training.

Every failure inside the probe is caught, counted by kind, and reported with one warning per kind
per run: a training loop that logs 10,000 times a second must not print 10,000 identical lines, and
must not die because the dashboard is down.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter


class OptiscopeWarning(UserWarning):
    """Category of every warning the probe's client emits (filterable with ``warnings``)."""


class Problems:
    """Thread-safe per-kind counters plus warn-once.

    Args:
        prefix: put in front of every message (the run id) so several runs can be told apart.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._warned: set[str] = set()

    def report(self, kind: str, message: str, n: int = 1) -> None:
        """Count ``n`` occurrences of ``kind``; warn the first time ``kind`` is seen."""
        with self._lock:
            self.counts[kind] += n
            first = kind not in self._warned
            self._warned.add(kind)
        if first:
            try:
                warnings.warn(f"optiscope{self.prefix}: {message}", OptiscopeWarning, stacklevel=2)
            except Exception:  # noqa: BLE001 - warnings turned into errors must not escape
                pass

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())
