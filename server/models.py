"""Tables. Scalar series are stored in chunks of numpy bytes, not one row per point.

Why chunks: one row per point cannot ingest ≥200k points/s over HTTP nor read 1M points in
100 ms on a small machine. A ``series`` row holds per-key summary (count, first/last step, last
value) so run lists and ``/keys`` never touch the points; ``series_chunk`` rows hold little-endian
int64 steps, float64 times and float64 values (NaN/±Inf are plain IEEE values in the bytes).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow

RUN_ID_LENGTH = 64
KEY_LENGTH = 512


class Project(Base):
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "run"

    id: Mapped[str] = mapped_column(String(RUN_ID_LENGTH), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    optimizer: Mapped[str | None] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(255))
    world_size: Mapped[int] = mapped_column(Integer, default=1)
    rank: Mapped[int | None] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    alerts_count: Mapped[int] = mapped_column(Integer, default=0)


class RunTag(Base):
    """One row per (run, tag) so tag filters are indexed SQL on both engines."""

    __tablename__ = "run_tag"

    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    first_step: Mapped[int | None] = mapped_column(BigInteger)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    first_time: Mapped[float | None] = mapped_column(Float)
    last_time: Mapped[float | None] = mapped_column(Float)
    # Raw IEEE bytes: SQLite turns a NaN REAL into NULL, so floats that may be NaN live in blobs.
    last_value: Mapped[bytes | None] = mapped_column(LargeBinary)
    n_chunks: Mapped[int] = mapped_column(Integer, default=0)


class SeriesChunk(Base):
    __tablename__ = "series_chunk"
    __table_args__ = (
        UniqueConstraint("series_id", "seq"),
        Index("ix_series_chunk_series_id_step_min", "series_id", "step_min"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    step_min: Mapped[int] = mapped_column(BigInteger)
    step_max: Mapped[int] = mapped_column(BigInteger)
    # Steps non-decreasing inside the chunk: lets reads skip a sort check over millions of points.
    ordered: Mapped[bool] = mapped_column(Boolean, default=True)
    time_min: Mapped[float | None] = mapped_column(Float)
    time_max: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[bytes] = mapped_column(LargeBinary)
    times: Mapped[bytes] = mapped_column(LargeBinary)
    values: Mapped[bytes] = mapped_column(LargeBinary)


class ArrayRecord(Base):
    """One vector (spectrum, per-neuron norms, histogram) of one key/layer at one step."""

    __tablename__ = "array_record"
    __table_args__ = (UniqueConstraint("run_id", "key", "layer", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    layer: Mapped[str] = mapped_column(String(KEY_LENGTH), default="")
    step: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[float | None] = mapped_column(Float)
    shape: Mapped[list[int]] = mapped_column(JSON)
    values: Mapped[bytes] = mapped_column(LargeBinary)


class Event(Base):
    __tablename__ = "event"
    __table_args__ = (Index("ix_event_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64), default="alert")
    level: Mapped[str] = mapped_column(String(32), default="warning")
    key: Mapped[str | None] = mapped_column(String(KEY_LENGTH))
    layer: Mapped[str | None] = mapped_column(String(KEY_LENGTH))
    step: Mapped[int | None] = mapped_column(BigInteger)
    time: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Batch(Base):
    """Idempotency ledger: inserted in the same transaction as the batch's data."""

    __tablename__ = "batch"
    __table_args__ = (UniqueConstraint("run_id", "batch_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    batch_id: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    project: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
