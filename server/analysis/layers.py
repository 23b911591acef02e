"""Per-layer diagnostic keys: which ones the "why" compares, how they read in a sentence, layer roles.

A 48-layer transformer logs the same diagnostic for ``blocks.0.mlp.fc.weight`` ... ``blocks.47.mlp.fc.weight``;
a ranked list of 48 near-duplicates says less than one line about ``blocks.*.mlp.fc.weight``. The *role*
of a layer is its parameter name with every numeric path component replaced by ``*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Diagnostic", "layer_role", "split_key", "describe", "DERIVED", "is_compared"]

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")
_RANK_PREFIX = re.compile(r"^rank\d+\.")
# Keys with a "/" that are not diagnostics to rank: counts of broken values are alerts, not mechanisms.
_SKIP = ("nonfinite",)


def layer_role(layer: str) -> str:
    """``blocks.3.attn.qkv.weight`` -> ``blocks.*.attn.qkv.weight`` (``0.weight`` -> ``*.weight``)."""
    return _INDEX.sub("*", layer)


def split_key(key: str) -> tuple[str, str] | None:
    """``"neuron.cv/blocks.0.fc.weight"`` -> ``("neuron.cv", "blocks.0.fc.weight")``; None for
    global keys, other ranks' keys and skipped quantities."""
    quantity, sep, layer = key.partition("/")
    if not sep or not layer or _RANK_PREFIX.match(quantity) or quantity in _SKIP:
        return None
    return quantity, layer


def is_compared(key: str) -> bool:
    return split_key(key) is not None


@dataclass(frozen=True)
class Diagnostic:
    """How a quantity reads: its name, the short symbol in parentheses, and the words for lower/higher."""

    name: str
    symbol: str
    lower: str = "lower"
    higher: str = "higher"


# Derived per layer from two logged keys (both must be logged by both sides): KFAC's eigen-spread.
DERIVED: dict[str, tuple[str, str]] = {
    "kfac.A_spread": ("kfac.A_eig_max", "kfac.A_eig_min"),
    "kfac.G_spread": ("kfac.G_eig_max", "kfac.G_eig_min"),
}

_SOURCES = {"weight": "W", "update": "ΔW", "pre_orth": "the momentum before Newton–Schulz",
            "post_orth": "the orthogonalized update"}
_KNOWN: dict[str, Diagnostic] = {
    "neuron.cv": Diagnostic("neuron update norms", "CV", "more even", "less even"),
    "neuron.frozen_frac": Diagnostic("frozen-neuron fraction", "frozen"),
    "neuron.min": Diagnostic("smallest neuron update norm", "min"),
    "neuron.max": Diagnostic("largest neuron update norm", "max"),
    "neuron.q50": Diagnostic("median neuron update norm", "median"),
    "update_ratio": Diagnostic("update/weight ratio", "‖ΔW‖/‖W‖", "smaller", "larger"),
    "grad_norm": Diagnostic("gradient norm", "‖g‖"),
    "orth_err": Diagnostic("orthogonality error of the Newton–Schulz output", "err"),
    "kfac.A_spread": Diagnostic("KFAC input-factor eigen-spread", "λmax/λmin(A)", "narrower", "wider"),
    "kfac.G_spread": Diagnostic("KFAC gradient-factor eigen-spread", "λmax/λmin(G)", "narrower", "wider"),
    "kfac.damping_rel": Diagnostic("KFAC damping relative to the curvature", "γ/λmax"),
}
_SV = {"eff_rank": ("effective rank", "erank"), "stable_rank": ("stable rank", "srank"),
       "cond": ("condition number", "κ"), "spectral_norm": ("spectral norm", "σmax"),
       "not_lifted": ("share of directions Newton–Schulz does not lift", "not lifted")}


def describe(quantity: str) -> Diagnostic:
    """The sentence words for a quantity; unknown ones read as their key."""
    if quantity in _KNOWN:
        return _KNOWN[quantity]
    parts = quantity.split(".")
    if len(parts) == 3 and parts[0] == "sv" and parts[2] in _SV:
        name, symbol = _SV[parts[2]]
        return Diagnostic(f"{name} of {_SOURCES.get(parts[1], parts[1])}", symbol)
    if quantity.startswith(("gdiff.", "fop.")):
        head, _, q = quantity.partition(".")
        return Diagnostic(f"{'two-half-batch' if head == 'gdiff' else 'FOP'} gradient-difference {q}", q)
    return Diagnostic(quantity, quantity)
