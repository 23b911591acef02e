"""The export file format (``optiscope-run/1``, NDJSON), validated line by line before an import.

An import is a write like any other, so every line is held to the ingest rules: the same field
types and limits as ``server.schemas`` (run ids, keys, tags, int64 steps, nesting depth), and the
binary columns must decode to exactly what their headers say (``n`` points, ``shape`` values).
Anything else would be stored and break every later read of the run.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from server.schemas import NO_NUL, EventIn, Int32, JSONObject, Key, Label, Layer, Project, RunId, Status, Step, Tag

FORMAT = "optiscope-run/1"
I8, F8 = np.dtype("<i8"), np.dtype("<f8")


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64: {exc}") from exc


def _utc(value: dt.datetime) -> dt.datetime:
    """Stored as UTC: a timestamp that has no UTC equivalent (year 9999 at -05:00) is refused here."""
    try:
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is outside the range of UTC datetimes") from exc


UTCDatetime = Annotated[dt.datetime, AfterValidator(_utc)]
Blob = Annotated[bytes, BeforeValidator(_b64)]
OptionalBlob = Annotated[bytes | None, BeforeValidator(lambda v: None if v is None else _b64(v))]


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class RunRecord(_Line):
    id: RunId
    project: Project
    name: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)]
    status: Status
    config: JSONObject = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=1000)
    optimizer: Label | None = None
    host: Label | None = None
    world_size: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1
    rank: Int32 | None = None
    summary: JSONObject = Field(default_factory=dict)
    last_step: Step | None = None
    alerts_count: Int32 = 0
    created_at: UTCDatetime
    updated_at: UTCDatetime
    heartbeat_at: UTCDatetime | None = None
    finished_at: UTCDatetime | None = None


class RunLine(_Line):
    type: Literal["run"]
    format: Literal["optiscope-run/1"]
    run: RunRecord


class SeriesLine(_Line):
    type: Literal["series"]
    key: Key
    count: Annotated[int, Field(ge=0, le=2**63 - 1)]
    first_step: Step | None = None
    last_step: Step | None = None
    first_time: float | None = None
    last_time: float | None = None
    last_value: OptionalBlob = None
    n_chunks: Int32

    @model_validator(mode="after")
    def _value_is_one_float(self) -> SeriesLine:
        if self.last_value is not None and len(self.last_value) != 8:
            raise ValueError(f"last_value must be 8 bytes (one float64), got {len(self.last_value)}")
        return self


class ChunkLine(_Line):
    type: Literal["chunk"]
    key: Key
    seq: Int32
    n: Annotated[int, Field(ge=1, le=2**31 - 1)]
    step_min: Step
    step_max: Step
    time_min: float | None = None
    time_max: float | None = None
    steps: Blob
    times: Blob
    values: Blob

    @model_validator(mode="after")
    def _blobs_match_header(self) -> ChunkLine:
        for name in ("steps", "times", "values"):
            size = len(getattr(self, name))
            if size != self.n * 8:
                raise ValueError(f"{name} holds {size} bytes, but n={self.n} needs {self.n * 8}")
        steps = np.frombuffer(self.steps, I8)
        if int(steps.min()) != self.step_min or int(steps.max()) != self.step_max:
            raise ValueError(f"step_min/step_max ({self.step_min}, {self.step_max}) do not match the "
                             f"steps ({int(steps.min())}, {int(steps.max())})")
        return self


class ArrayLine(_Line):
    type: Literal["array"]
    key: Key
    layer: Layer = ""
    step: Step
    time: float | None = None
    shape: list[Int32] = Field(max_length=32)
    values: Blob

    @model_validator(mode="after")
    def _shape_matches(self) -> ArrayLine:
        if len(self.values) % 8:
            raise ValueError(f"values holds {len(self.values)} bytes, not a whole number of float64")
        size = 1
        for d in self.shape:
            size *= d
        if size != len(self.values) // 8:
            raise ValueError(f"shape {self.shape} needs {size} values, got {len(self.values) // 8}")
        return self


class EventLine(EventIn):
    """An event exactly as ingest accepts it (same limits), tagged with its line type."""

    type: Literal["event"]


BODY_LINES: dict[str, type[BaseModel]] = {"series": SeriesLine, "chunk": ChunkLine, "array": ArrayLine,
                                      "event": EventLine}
