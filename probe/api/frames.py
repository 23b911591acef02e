"""pandas, imported only when a DataFrame is asked for (it is the optional ``notebook`` extra)."""

from __future__ import annotations

import math
from typing import Any


def pandas() -> Any:
    """The pandas module, or an ImportError that says which extra brings it."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("the read API returns pandas DataFrames: pip install 'optiscope[notebook]' "
                          "(or pip install pandas)") from None
    return pd


_WIRE_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def wire_float(value: Any) -> Any:
    """A wire value as a Python float: the server sends non-finite floats as strings."""
    if isinstance(value, str):
        return _WIRE_FLOATS.get(value, value)
    return math.nan if value is None else value


def flatten(prefix: str, mapping: dict[str, Any], out: dict[str, Any]) -> None:
    """``{"a": {"b": 1}}`` -> ``out["prefix.a.b"] = 1`` (config columns as in ``mlflow.search_runs``)."""
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and value:
            flatten(name, value, out)
        else:
            out[name] = wire_float(value) if isinstance(value, str) and value in _WIRE_FLOATS else value
