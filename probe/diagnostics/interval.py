"""The logging interval's buffer: device tensors in, one device→host copy out.

Per-step measurements are kept as they were computed — 1-D float32 tensors on the device, one per
(step, group of keys), plus arrays (a batch of them as the rows of one tensor) — so a step never
waits for the device. :meth:`IntervalBuffer.drain` concatenates everything on a device into one
tensor and copies it once (``.cpu()``, which is the interval's only synchronization), then hands back
Python floats per step and CPU tensors per array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from probe.diagnostics.measures import stack_f32

__all__ = ["IntervalBuffer", "ArrayValue"]

_PENDING = torch.empty(0)  # placeholder of a fresh group until the drain stacks it


@dataclass(frozen=True)
class ArrayValue:
    """One array record after the copy: ``values`` is a CPU float32 tensor."""

    key: str
    layer: str
    step: int
    values: Tensor


class IntervalBuffer:
    """Measurements of the current logging interval, held on the device until :meth:`drain`."""

    def __init__(self) -> None:
        self._scalars: list[tuple[int, list[str], Tensor]] = []
        # (index into _scalars, 0-d tensors) of groups whose stacking waits for the drain
        self._fresh: list[tuple[int, Sequence[Tensor]]] = []
        # (key, layer) of each array, step, values: one array as is, or a batch as the rows of a 2-D tensor
        self._arrays: list[tuple[list[tuple[str, str]], int, Tensor, bool]] = []
        self._host: dict[int, dict[str, float]] = {}

    def add_scalars(self, step: int, keys: list[str], values: Sequence[Tensor] | Tensor, *,
                    fresh: bool = False) -> None:
        """Keep ``keys`` at ``step``: a 1-D tensor of len(keys) values, or a list of 0-d tensors (stacked).

        ``fresh``: the 0-d tensors are new results of this step (no views of tensors that change later),
        so they are kept as they are and stacked at the drain, one op for the whole interval instead of
        one per step (the per-step grad norms).
        """
        if not keys:
            return
        if fresh and not isinstance(values, Tensor):
            if len(values) != len(keys):
                raise ValueError(f"{len(keys)} keys but {len(values)} values")
            self._fresh.append((len(self._scalars), values))
            self._scalars.append((step, keys, _PENDING))
            return
        stacked = values.detach().reshape(-1).float() if isinstance(values, Tensor) else stack_f32(values)
        if stacked.numel() != len(keys):
            raise ValueError(f"{len(keys)} keys but {stacked.numel()} values")
        self._scalars.append((step, keys, stacked))

    def add_array(self, key: str, layer: str, step: int, values: Tensor) -> None:
        """Keep a 1-D array (spectrum, per-neuron norms) of ``key``/``layer`` at ``step``."""
        self._arrays.append(([(key, layer)], step, values.detach(), False))

    def add_arrays(self, rows: list[tuple[str, str]], step: int, values: Tensor) -> None:
        """Keep the rows of a 2-D tensor as arrays at ``step``, row ``b`` for ``rows[b]`` = (key, layer):
        a batch of spectra without a tensor call per row."""
        if values.ndim != 2 or values.shape[0] != len(rows):
            raise ValueError(f"{len(rows)} rows but values of shape {tuple(values.shape)}")
        if rows:
            self._arrays.append((rows, step, values.detach(), True))

    def add_host(self, step: int, key: str, value: float) -> None:
        """Keep a value already on the host (e.g. a wall-clock step time)."""
        self._host.setdefault(step, {})[key] = value

    def __len__(self) -> int:
        return len(self._scalars) + len(self._arrays) + len(self._host)

    def _stack_fresh(self) -> None:
        """One stack of every fresh group's 0-d tensors, each group a slice of it."""
        fresh, self._fresh = self._fresh, []
        if not fresh:
            return
        stacked = stack_f32([v for _, values in fresh for v in values])
        offset = 0
        for i, values in fresh:
            step, keys, _ = self._scalars[i]
            self._scalars[i] = (step, keys, stacked[offset: offset + len(values)])
            offset += len(values)

    def drain(self) -> tuple[dict[int, dict[str, float]], list[ArrayValue]]:
        """Empty the buffer: ``({step: {key: float}}, [ArrayValue])`` with one host copy per device."""
        self._stack_fresh()
        scalars, arrays, host = self._scalars, self._arrays, self._host
        self._scalars, self._arrays, self._host = [], [], {}
        tensors = [t for _, _, t in scalars] + [t for _, _, t, _ in arrays]
        n_scalars = len(scalars)
        floats: list[list[float]] = [[] for _ in scalars]
        array_values: list[Tensor] = [torch.empty(0)] * len(arrays)
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            by_device.setdefault(t.device, []).append(i)
        for indices in by_device.values():
            # Scalar groups are 1-D float32 already (add_scalars); only odd arrays need a conversion.
            parts = [_flat_f32(tensors[i]) for i in indices]
            joined = torch.cat(parts).cpu()  # the interval's one device→host copy (per device)
            # Python floats for the scalars only (they come first): the arrays, often most of the
            # values, stay tensors.
            values = joined[: sum(part.shape[0] for i, part in zip(indices, parts) if i < n_scalars)].tolist()
            offset = 0
            for i, part in zip(indices, parts):
                n = part.shape[0]
                if i < n_scalars:
                    floats[i] = values[offset : offset + n]
                else:
                    array_values[i - n_scalars] = joined[offset : offset + n]
                offset += n
        per_step: dict[int, dict[str, float]] = {step: dict(v) for step, v in host.items()}
        for (step, keys, _), found in zip(scalars, floats):
            per_step.setdefault(step, {}).update(zip(keys, found))
        out_arrays: list[ArrayValue] = []
        for (rows, step, t, batch), values in zip(arrays, array_values):
            found = values.view(t.shape).unbind(0) if batch else [values]
            out_arrays += [ArrayValue(key, layer, step, row) for (key, layer), row in zip(rows, found)]
        return per_step, out_arrays


def _flat_f32(t: Tensor) -> Tensor:
    if t.dtype == torch.float32:
        return t if t.ndim == 1 else t.reshape(-1)
    return t.reshape(-1).float()
