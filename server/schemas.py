"""Wire schemas (pydantic). Floats accept numbers or "NaN"/"Infinity"/"-Infinity" strings.

pydantic's lax ``float`` already parses those strings, so ``list[float]`` validates a whole
vector in Rust without a Python call per point.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

# PostgreSQL text cannot hold NUL; refusing it here gives a 422 naming the field, not a 500.
NO_NUL = r"^[^\x00]*$"
RunId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Key = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=NO_NUL)]
Layer = Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
Project = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
Label = Annotated[str, StringConstraints(max_length=255, pattern=NO_NUL)]
Status = Literal["running", "finished", "crashed"]
# Steps are stored as int64 (numpy and BIGINT); counts and ranks as 32-bit INTEGER.
Step = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]


MAX_DEPTH = 200
"""Nesting allowed in free-form objects (config, summary, event data): deep enough for any real
config, and below orjson's 255-level limit so everything stored can be written back out."""


def bounded_depth(value: dict[str, Any]) -> dict[str, Any]:
    """Raise ValueError when ``value`` nests deeper than ``MAX_DEPTH`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        children = obj.values() if isinstance(obj, dict) else obj
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return value


JSONObject = Annotated[dict[str, Any], AfterValidator(bounded_depth)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResumeIn(_Strict):
    """Continue an existing run (``probe.init(run_id=..., resume=True)``); see server/store/resume.py."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    from_step: Step | None = None


class RunCreate(_Strict):
    id: RunId | None = None
    project: Project = "default"
    name: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)] | None = None
    config: JSONObject = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list)
    optimizer: Label | None = None
    host: Label | None = None
    world_size: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1
    rank: Int32 | None = None
    resume: ResumeIn | None = None
    """Only meaningful for an id that exists: rewind it to ``from_step`` and merge ``config`` (once per id)."""


class RunUpdate(_Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=NO_NUL)] | None = None
    tags: list[Tag] | None = None
    config: JSONObject | None = None
    optimizer: Label | None = None
    status: Status | None = None
    summary: JSONObject | None = None


class RunFinish(_Strict):
    status: Literal["finished", "crashed"] = "finished"


class RunRead(BaseModel):
    # ``extra`` lets a run read from a damaged row carry ``damaged``/``errors`` (see
    # server.store.damaged_rows); sound rows have neither key.
    model_config = ConfigDict(from_attributes=True, extra="allow")

    id: str
    project: str
    name: str
    status: Status
    config: dict[str, Any]
    tags: list[str]
    optimizer: str | None
    host: str | None
    world_size: int
    rank: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None
    last_step: int | None
    alerts_count: int
    summary: dict[str, Any]


class ScalarIn(_Strict):
    key: Key
    steps: list[Step]
    times: list[float] | None = None
    values: list[float]

    @model_validator(mode="after")
    def _same_lengths(self) -> ScalarIn:
        if len(self.values) != len(self.steps):
            raise ValueError(f"values has {len(self.values)} items but steps has {len(self.steps)}")
        if self.times is not None and len(self.times) != len(self.steps):
            raise ValueError(f"times has {len(self.times)} items but steps has {len(self.steps)}")
        return self


class ArrayIn(_Strict):
    key: Key
    layer: Layer = ""
    step: Step
    time: float | None = None
    shape: list[Int32] | None = None
    values: list[float]

    @model_validator(mode="after")
    def _shape_matches(self) -> ArrayIn:
        if self.shape is None:
            self.shape = [len(self.values)]
        size = 1
        for d in self.shape:
            size *= d
        if size != len(self.values):
            raise ValueError(f"shape {self.shape} needs {size} values, got {len(self.values)}")
        return self


class EventIn(_Strict):
    kind: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)] = "alert"
    level: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=NO_NUL)] = "warning"
    key: Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)] | None = None
    layer: Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)] | None = None
    step: Step | None = None
    time: float | None = None
    message: Annotated[str, StringConstraints(pattern=NO_NUL)] = ""
    data: JSONObject = Field(default_factory=dict)


class BatchIn(_Strict):
    batch_id: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)] | None = None
    scalars: list[ScalarIn] = Field(default_factory=list)
    arrays: list[ArrayIn] = Field(default_factory=list)
    events: list[EventIn] = Field(default_factory=list)
