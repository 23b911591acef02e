"""The probe's copy of the wire format (``docs/ARCHITECTURE.md``, "HTTP API").

The probe must not import the server, so the payload shapes live here a second time, on
purpose, as ``TypedDict``s; a contract test feeds payloads built here to the server's pydantic
schemas so the two copies cannot drift apart silently.

Non-finite floats are data (a diverging run is exactly what a diagnostics tool must show), but
JSON has no spelling for them, so they travel as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``. Everything here is stdlib + numpy so it runs on a bare training machine.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any, Iterable, Literal, NotRequired, TypedDict

import numpy as np

NAN, POS_INF, NEG_INF = "NaN", "Infinity", "-Infinity"
_DECODE = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Run ids are client-chosen so that an offline run can be created on the server later."""

Status = Literal["finished", "crashed"]


class ScalarSeries(TypedDict):
    """Points of one scalar key, column-wise (one JSON array per field is ~3x smaller than rows)."""

    key: str
    steps: list[int]
    times: list[float]
    values: list[float | str]


class ArrayRecord(TypedDict):
    """One vector (a spectrum, per-neuron norms, a histogram) of one key/layer at one step."""

    key: str
    layer: str
    step: int
    time: float
    shape: list[int]
    values: list[float | str]


class EventRecord(TypedDict):
    """An alert or other discrete occurrence."""

    kind: str
    level: str
    key: str | None
    layer: str | None
    step: int | None
    time: float
    message: str
    data: dict[str, Any]


class Batch(TypedDict):
    """The body of ``POST /runs/{id}/batches``; ``batch_id`` makes a resend a no-op on the server."""

    batch_id: str
    scalars: list[ScalarSeries]
    arrays: list[ArrayRecord]
    events: list[EventRecord]


class Resume(TypedDict):
    """``RunCreate.resume``: continue an existing run, dropping what it logged at ``step >= from_step``."""

    id: str
    from_step: int | None


class RunCreate(TypedDict):
    """The body of ``POST /runs``."""

    id: str
    project: str
    name: str
    config: dict[str, Any]
    tags: list[str]
    optimizer: NotRequired[str | None]
    host: NotRequired[str | None]
    world_size: int
    rank: NotRequired[int | None]
    resume: NotRequired[Resume]


def new_run_id() -> str:
    """A fresh run id; uuid4 hex matches ``RUN_ID_PATTERN`` and never collides across machines."""
    return uuid.uuid4().hex


def batch_id(run_id: str, seq: int, rank: int | None = None, session: str | None = None) -> str:
    """``"<run_id>:<seq>"``, unique for every batch ever sent to the run.

    Other ranks of a shared run add ``r<rank>-``; a process that logs into a run id it did not
    mint (``init(run_id=...)``, a resumed run) adds its own ``session`` nonce, because its
    ``seq`` restarts at 1 and the server would otherwise discard its batches as resends.
    """
    tag = (f"r{rank}-" if rank else "") + (f"{session}-" if session else "")
    return f"{run_id}:{tag}{seq}"


def encode_float(x: float) -> float | str:
    """A float as it goes on the wire: itself, or ``"NaN"``/``"Infinity"``/``"-Infinity"``."""
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return NAN
    return POS_INF if x > 0 else NEG_INF


def decode_float(value: float | int | str) -> float:
    """The inverse of :func:`encode_float` (also accepts JSON ints)."""
    if isinstance(value, str):
        try:
            return _DECODE[value]
        except KeyError:
            raise ValueError(f"not a wire float: {value!r}") from None
    return float(value)


def encode_floats(values: list[float]) -> list[float | str]:
    """Encode a list of Python floats, in place when any is non-finite.

    The common case (all finite) costs one C-level ``sum``: a NaN or an infinity anywhere makes the
    sum non-finite, and an overflowing sum of finite values merely takes the slow path.
    """
    if math.isfinite(sum(values)):
        return values  # type: ignore[return-value]
    out: list[float | str] = values  # type: ignore[assignment]
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out[i] = encode_float(v)
    return out


def encode_array(values: np.ndarray) -> list[float | str]:
    """A numpy array, flattened to float64 and wire-encoded (one vectorised finiteness scan)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    out: list[float | str] = flat.tolist()
    finite = np.isfinite(flat)
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            out[i] = encode_float(out[i])  # type: ignore[arg-type]
    return out


def encode_json_value(obj: Any) -> Any:
    """Make user data (run config, event data) JSON-safe: non-finite floats encoded, numpy and
    tensors turned into Python values, tuples into lists, and anything else into ``str(obj)``
    rather than an exception, because a config entry must never stop a training run."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return encode_float(obj)
    if isinstance(obj, dict):
        return {str(k): encode_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [encode_json_value(v) for v in obj]
    if isinstance(obj, np.generic):
        return encode_json_value(obj.item())
    if isinstance(obj, np.ndarray):
        return encode_json_value(obj.tolist())
    tolist = getattr(obj, "tolist", None)  # torch.Tensor without importing torch
    if callable(tolist) and type(obj).__module__.startswith("torch"):
        try:
            return encode_json_value(obj.detach().cpu().tolist())
        except Exception:  # noqa: BLE001 - fall back to the string form below
            pass
    return str(obj)


try:  # ~8x faster than json for metric batches; optional (not in the `probe` extra)
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised on a bare training machine
    _orjson = None


def dumps(obj: Any) -> bytes:
    """Serialise an already wire-encoded payload.

    A non-finite float that slipped through unencoded is an error here (``ValueError``), never
    invalid JSON or a silent ``null`` on the server: orjson writes NaN as null, so a payload it
    produced is checked for that and re-encoded by the strict stdlib encoder.
    """
    if _orjson is not None:
        try:
            data = _orjson.dumps(obj)
        except TypeError:
            data = None
        if data is not None and b"null" not in data:
            return data
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    """Parse a payload written by :func:`dumps` (non-finite floats stay strings)."""
    return json.loads(data)


def batch_size(batch: Batch) -> int:
    """Data records in a batch: scalar points + arrays + events (the unit of ``Run.dropped``)."""
    return sum(len(s["steps"]) for s in batch["scalars"]) + len(batch["arrays"]) + len(batch["events"])


def split_batch(batch: Batch) -> tuple[Batch, Batch] | None:
    """Two halves of a batch the server found too large (413), or None for a single record.

    The halves get the ids ``<batch_id>.0`` and ``<batch_id>.1``: a replay that splits the same
    batch again produces the same ids, so halves already stored are recognised as resends. Records
    are halved by weight (points of a series, values of an array, 1 an event); a batch holding one
    scalar series is split between its points.
    """
    items: list[tuple[str, Any, int]] = (
        [("scalars", s, len(s["steps"])) for s in batch["scalars"]]
        + [("arrays", a, len(a["values"])) for a in batch["arrays"]]
        + [("events", e, 1) for e in batch["events"]]
    )
    halves: tuple[Batch, Batch] = (
        Batch(batch_id=f"{batch['batch_id']}.0", scalars=[], arrays=[], events=[]),
        Batch(batch_id=f"{batch['batch_id']}.1", scalars=[], arrays=[], events=[]),
    )
    if len(items) == 1 and items[0][0] == "scalars" and items[0][2] > 1:
        series: ScalarSeries = items[0][1]
        mid = len(series["steps"]) // 2
        for half, part in zip(halves, (slice(None, mid), slice(mid, None))):
            half["scalars"].append(ScalarSeries(
                key=series["key"], steps=series["steps"][part], times=series["times"][part],
                values=series["values"][part],
            ))
        return halves
    if len(items) < 2:
        return None
    total = sum(weight for _, _, weight in items)
    cut, seen = 1, items[0][2]  # the first half: at least one record, at most all but one
    while cut < len(items) - 1 and seen + items[cut][2] / 2 <= total / 2:
        seen += items[cut][2]
        cut += 1
    for i, (field, record, _) in enumerate(items):
        halves[0 if i < cut else 1][field].append(record)  # type: ignore[literal-required]
    return halves


def scalar_points(batch: Batch) -> Iterable[tuple[str, int, float | str]]:
    """Every ``(key, step, value)`` of a batch; used by tests and the benchmark to count points."""
    for series in batch["scalars"]:
        for step, value in zip(series["steps"], series["values"]):
            yield series["key"], step, value
