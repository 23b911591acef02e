"""Data-side algorithms: InfoBatch dynamic data pruning."""

from __future__ import annotations

from typing import Any

__all__ = ["InfoBatch"]


def __getattr__(name: str) -> Any:
    if name == "InfoBatch":
        from probe.data.infobatch import InfoBatch

        return InfoBatch
    raise AttributeError(f"module 'probe.data' has no attribute {name!r}")
