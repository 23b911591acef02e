"""What an importer produces: one run as wire-format bodies, plus the problems met reading it."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_POINTS_PER_BATCH = 20_000  # well under the server's body limit, as the probe's own batches


def stable_run_id(prefix: str, *parts: str) -> str:
    """``<prefix>-<24 hex>`` from the source's identity: the same source always maps to the same run."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]
    return f"{prefix}-{digest}"


def parse_param(text: str) -> Any:
    """A peer's string param as the number/bool it spells (so config filters compare numerically)."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text  # "NaN" stays a string: config is plain JSON
    return value if isinstance(value, (int, float, bool)) else text


def wire(value: float) -> float | str:
    """A float for the JSON body: non-finite values travel as the wire strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


@dataclass
class ImportedRun:
    """One run read from a peer.

    ``scalars[key]`` is a list of ``(step, unix_time, value)``; ``arrays`` are ``ArrayIn`` bodies.
    ``source`` names the file or URI in messages.
    """

    run: dict[str, Any]
    source: str
    scalars: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    arrays: list[dict[str, Any]] = field(default_factory=list)
    status: str = "finished"

    @property
    def id(self) -> str:
        return self.run["id"]

    @property
    def n_points(self) -> int:
        return sum(len(v) for v in self.scalars.values())

    def drop_stored(self, scalars_last: dict[str, int], arrays_last: dict[tuple[str, str], int]) -> None:
        """Keep only points after what the server already holds for each key (and layer).

        A second import of the same source then sends nothing, and one of a log directory that
        training has since extended sends only the new steps.
        """
        for key, last in scalars_last.items():
            if key in self.scalars:
                self.scalars[key] = [p for p in self.scalars[key] if p[0] > last]
        self.scalars = {k: v for k, v in self.scalars.items() if v}
        self.arrays = [a for a in self.arrays
                       if a["step"] > arrays_last.get((a["key"], a["layer"]), -(2**63))]

    def batches(self) -> Iterator[dict[str, Any]]:
        """``Batch`` bodies whose ids hash their content: a re-sent batch is recognised as a duplicate."""
        pending: list[dict[str, Any]] = []
        size = 0
        for key in sorted(self.scalars):
            points = sorted(self.scalars[key])  # by step, then time: TB files may interleave
            for start in range(0, len(points), _POINTS_PER_BATCH):
                part = points[start:start + _POINTS_PER_BATCH]
                pending.append({"key": key, "steps": [p[0] for p in part], "times": [p[1] for p in part],
                                "values": [wire(p[2]) for p in part]})
                size += len(part)
                if size >= _POINTS_PER_BATCH:
                    yield self._batch(pending, [])
                    pending, size = [], 0
        arrays = sorted(self.arrays, key=lambda a: (a["key"], a["layer"], a["step"]))
        for start in range(0, len(arrays), 200):
            yield self._batch(pending, arrays[start:start + 200])
            pending = []
        if pending:
            yield self._batch(pending, [])

    def _batch(self, scalars: list[dict[str, Any]], arrays: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"scalars": scalars, "arrays": arrays}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
        return {"batch_id": f"import:{digest}", **body}


@dataclass
class ReadResult:
    """Runs read from a source and one message per file or run that could not be read (fully)."""

    runs: list[ImportedRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
