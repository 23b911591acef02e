"""JSON on the wire: orjson, with non-finite floats written as "NaN"/"Infinity"/"-Infinity".

orjson (like Starlette's encoder) would write NaN as null or refuse it; the contract says they are
data and come back as those strings. ``WireList`` marks a list already encoded (series vectors) so
the recursive pass skips it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

NAN, POS_INF, NEG_INF = "NaN", "Infinity", "-Infinity"


class WireList(list):
    """A list whose floats are already wire-encoded."""


def encode_float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return NAN
    return POS_INF if x > 0 else NEG_INF


def encode_array(values: np.ndarray) -> WireList:
    """float64 vector → list with non-finite entries as strings (vectorised scan)."""
    out = WireList(values.tolist())
    bad = np.flatnonzero(~np.isfinite(values))
    for i in bad.tolist():
        out[i] = encode_float(out[i])
    return out


def sanitize(obj: Any) -> Any:
    """Recursively encode non-finite floats in plain JSON-like data."""
    if isinstance(obj, float):
        return encode_float(obj)
    if isinstance(obj, WireList):
        return obj
    if isinstance(obj, dict):
        return {k: sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def dumps(obj: Any) -> bytes:
    return orjson.dumps(sanitize(obj), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class WireJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
