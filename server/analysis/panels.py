"""Which dashboard panel shows a per-layer diagnostic, and the link that opens it.

A "why" line is only believable if one click shows the curve behind it. Spectra, neuron and KFAC
diagnostics have their own run-page tabs, addressed by the run page's URL state
(``/runs/<id>?tab=&layer=&step=&source=&metric=``); per-layer scalars with no tab of their own
(update/weight ratio, gradient norm, anything unknown) open the compare page's scalar panel with the
key selected, A and baseline overlaid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote_plus

__all__ = ["Panel", "panel_for"]

_SV_SOURCES = ("weight", "update", "pre_orth", "post_orth")
_SV_METRICS = ("cond", "stable_rank", "spectral_norm", "eff_rank")
_MUON_SUMMARIES = {"sv.pre_orth.not_lifted": "not_lifted", "orth_err": "orth_err"}


@dataclass(frozen=True)
class Panel:
    """``name`` says where to look in words; ``link`` opens it for A, ``baseline_link`` for the baseline."""

    name: str
    link: str
    baseline_link: str


@lru_cache(maxsize=4096)
def _quote(text: str) -> str:
    return quote_plus(text, safe=",/")


def _query(params: Mapping[str, str | int]) -> str:
    """``urllib.parse.urlencode(params, safe=",/")`` character for character (it quotes ``str(k)`` and
    ``str(v)`` with ``quote_plus``), with each quoted piece cached: a "why" builds two links for each of
    a few hundred rows out of the same few dozen layer names and keys, and quoting them afresh was a
    fifth of its ranking time."""
    return "&".join(f"{_quote(str(k))}={_quote(str(v))}" for k, v in params.items())


def panel_for(quantity: str, layer: str, *, step: int | None, a_run: str, baseline_run: str,
              compare_runs: Sequence[str]) -> Panel:
    """The panel that shows ``quantity`` of ``layer`` at ``step`` (A's matched step)."""
    at: dict[str, str | int] = {} if step is None else {"step": step}
    tab_params: dict[str, str | int] | None = None
    name = ""
    parts = quantity.split(".")
    if quantity in _MUON_SUMMARIES:
        metric = _MUON_SUMMARIES[quantity]
        tab_params = {"tab": "spectra", "layer": layer, **at, "metric": metric}
        name = f"run page › Spectra › all-layer {metric.replace('_', ' ')}"
    elif len(parts) == 3 and parts[0] == "sv" and parts[1] in _SV_SOURCES and parts[2] in _SV_METRICS:
        tab_params = {"tab": "spectra", "layer": layer, **at, "source": parts[1], "metric": parts[2]}
        name = f"run page › Spectra › {parts[2].replace('_', ' ')} of {parts[1]}, all layers"
    elif parts[0] == "neuron":
        tab_params = {"tab": "neurons", "layer": layer, **at}
        name = f"run page › Neurons › {layer}"
    elif parts[0] in ("gdiff", "fop"):
        tab_params = {"tab": "gdiff", "layer": layer}
        name = f"run page › Gradient difference › {layer}"
    elif parts[0] == "kfac":
        tab_params = {"tab": "kfac", "layer": layer, **at}
        name = f"run page › KFAC › {layer}"
    if tab_params is not None:
        query = _query(tab_params)
        return Panel(name, f"/runs/{a_run}?{query}", f"/runs/{baseline_run}?{query}")
    link = "/compare?" + _query({"runs": ",".join(compare_runs), "keys": f"{quantity}/{layer}"})
    return Panel(f"compare page › Scalars › {quantity}/{layer}", link, link)
