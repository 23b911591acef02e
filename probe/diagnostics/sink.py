"""Where the Monitor's results go: the part of ``probe.client.Run`` it calls (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["RunLike", "log_at_of"]


class RunLike(Protocol):
    """The part of ``probe.client.Run`` the Monitor uses. An object with ``log(metrics, step=)`` in place
    of ``log_at`` works too."""

    def log_at(self, metrics: Mapping[str, Any], *, step: int) -> None: ...

    def log_array(self, key: str, values: Any, *, step: int, layer: str = "") -> None: ...

    def log_event(
        self,
        key: str,
        message: str,
        *,
        step: int | None = None,
        layer: str | None = None,
        level: str = "warning",
        kind: str = "alert",
        data: Mapping[str, Any] | None = None,
    ) -> None: ...


def log_at_of(run: Any) -> Callable[..., None]:
    """``run.log_at`` (which keeps the user's implicit step count), else an adapter over ``run.log``:
    a run object of the user's own may have only ``log()``."""
    log_at = getattr(run, "log_at", None)
    if log_at is not None:
        return log_at
    return lambda metrics, *, step: run.log(metrics, step=step)
