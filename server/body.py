"""Request bodies: size-bounded reading, bounded gzip inflation, orjson parsing, pydantic checks.

The limit (``max_body_bytes``) applies to the bytes on the wire *and* after inflation: the
decompressor is asked for at most 1 MiB (and never past limit+1 bytes) at a time, so a gzip bomb
is refused with 413 after inflating just over the limit, never in full.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from server.errors import BodyTooLarge, InvalidBody, validation_details

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, inflated when ``Content-Encoding: gzip``; 413 past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    raw = b"".join(parts)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise InvalidBody([{"loc": ["header", "content-encoding"], "type": "value_error",
                            "msg": f"unsupported encoding {encoding!r}"}])
    return inflate(raw, limit, wbits=31 if "gzip" in encoding else 15)


INFLATE_PIECE = 1 << 20
"""Bytes inflated per step. The pieces are kept apart and joined only once the whole body is known
to fit: a growing buffer would be reallocated (old and new copies alive together), so a refused
bomb would cost twice the limit instead of about the limit."""


def inflate(raw: bytes, limit: int, wbits: int = 31) -> bytes:
    d = zlib.decompressobj(wbits)
    pieces: list[bytes] = []
    size = 0
    data = raw
    try:
        while not d.eof:
            piece = d.decompress(data, min(INFLATE_PIECE, limit + 1 - size))  # max_length ≥ 1
            size += len(piece)
            if size > limit:
                pieces.clear()
                raise BodyTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
            pieces.append(piece)
            data = d.unconsumed_tail
            if not piece and not data:
                break
    except zlib.error as exc:
        raise InvalidBody([{"loc": ["body"], "msg": f"invalid compressed body: {exc}",
                            "type": "value_error"}]) from exc
    if not d.eof:  # a truncated stream (or one missing its CRC/size trailer) is not a body
        raise InvalidBody([{"loc": ["body"], "msg": "truncated compressed body (the stream does not end)",
                            "type": "value_error"}])
    return b"".join(pieces)


def parse_json(raw: bytes) -> Any:
    """orjson first (fast); Python's json as a fallback for bare NaN/Infinity literals."""
    if not raw.strip():
        raise InvalidBody([{"loc": ["body"], "msg": "Field required (empty body)", "type": "missing"}])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except RecursionError as exc:
            raise InvalidBody([{"loc": ["body"], "msg": "JSON nested too deeply",
                                "type": "json_invalid"}]) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidBody([{"loc": ["body"], "msg": f"JSON decode error: {exc}",
                                "type": "json_invalid"}]) from exc


def parse_model(raw: bytes, model: type[M]) -> M:
    data = parse_json(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBody(validation_details(exc)) from exc
