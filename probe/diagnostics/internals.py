"""Translate our optimizers' ``last_internals`` into contract metric keys (docs/ARCHITECTURE.md).

``probe.optim`` optimizers fill ``last_internals[param]`` with detached device tensors when ``introspect``
is on; this module only renames and derives (no host sync): FOP's per-layer quantities → ``fop.<q>/L``,
K-FAC's factor eigenvalue ranges → ``kfac.<q>/L`` (+ ``damping_rel``, ``damping_rel_mean``), NorMuon's per-neuron second moment
``v`` → ``normuon.v_{cv,min,max}/L`` and the row-RMS spread of O and Ô → ``normuon.row_rms_cv_{before,after}/L``;
across FOP's layers ``fop.beta_neg_frac`` and ``fop.noise_scale``. The Muon family's ``pre_orth``/``post_orth`` matrices are spectra
sources and are handled with the spectra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from probe.diagnostics.gradient_diff import NoiseScale
from probe.diagnostics.measures import row_norms, spread_stats

__all__ = ["LayerInternals", "layer_internals", "global_internals", "fop_summary"]

FOP_KEYS = (
    "g1_norm", "g2_norm", "gavg_norm", "gdiff_norm", "cos_g1_g2", "gavg_fisher", "gdiff_fisher",
    "parallel", "orthogonal", "s_proj", "D", "E", "beta", "eta", "kl_base", "kl_cross", "kl_orth",
)  # fmt: skip
KFAC_KEYS = ("A_eig_min", "A_eig_max", "G_eig_min", "G_eig_max")
ARRAY_KEYS = {"A_eigs": "kfac.A_eigs", "G_eigs": "kfac.G_eigs", "v": "normuon.v"}


@dataclass
class LayerInternals:
    """Scalars (``keys``/``values``, 0-d tensors) and arrays (contract key → 1-D tensor) of one layer."""

    keys: list[str] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    arrays: dict[str, Tensor] = field(default_factory=dict)

    def add(self, key: str, value: Tensor) -> None:
        self.keys.append(key)
        self.values.append(value)


def layer_internals(name: str, entry: Mapping[str, Tensor]) -> LayerInternals:
    """Contract metrics of one parameter's ``last_internals`` entry (layer ``name``)."""
    out = LayerInternals()
    if "s_proj" in entry:  # FOP (its K-FAC keys follow below)
        for q in FOP_KEYS:
            if q in entry:
                out.add(f"fop.{q}/{name}", entry[q])
    for q in KFAC_KEYS:
        if q in entry:
            out.add(f"kfac.{q}/{name}", entry[q])
    if "damping" in entry:
        # damping relative to the eigenvalues of A ⊗ G: how much of the curvature it washes out; against
        # the largest (where it stops mattering) and the mean (ALGORITHMS §3.7: typical directions)
        for suffix, stat in (("", "max"), ("_mean", "mean")):
            a, g = entry.get(f"A_eig_{stat}"), entry.get(f"G_eig_{stat}")
            if a is not None and g is not None:
                out.add(f"kfac.damping_rel{suffix}/{name}", entry["damping"].float() / (a.float() * g.float()))
    if "normalized" in entry and "post_orth" in entry:
        # NorMuon (ALGORITHMS §2.7): spread of the row RMS of O, which NorMuon evens out, and of Ô after it.
        # A sharded NorMuon normalizes only its own rows of O: then O's spread would not compare like
        # with like.
        same_rows = entry["post_orth"].shape[0] == entry["normalized"].shape[0]
        sources = (("post_orth", "row_rms_cv_before"),) if same_rows else ()
        for source, q in (*sources, ("normalized", "row_rms_cv_after")):
            m = entry[source]
            out.add(f"normuon.{q}/{name}", spread_stats(row_norms(m.reshape(m.shape[0], -1)))["cv"])
    v = entry.get("v")
    if v is not None:
        v = v.reshape(-1).float()
        stats = spread_stats(v, frozen_rel_tol=0.0)
        for q in ("cv", "min", "max"):
            out.add(f"normuon.v_{q}/{name}", stats[q])
        out.arrays["normuon.v"] = v
    for q in ("A_eigs", "G_eigs"):
        if q in entry:
            out.arrays[ARRAY_KEYS[q]] = entry[q].reshape(-1)
    return out


def global_internals(entry: Mapping[str, Tensor]) -> LayerInternals:
    """Contract metrics of ``last_global_internals`` (K-FAC/FOP: ``kfac.kl_nu``)."""
    out = LayerInternals()
    if "kl_nu" in entry:
        out.add("kfac.kl_nu", entry["kl_nu"])
    return out


def fop_summary(
    entries: Sequence[Mapping[str, Tensor]], noise: NoiseScale, batch_size: int | None
) -> LayerInternals:
    """Across FOP's layers of one step (ALGORITHMS §4.5): ``fop.beta_neg_frac``, the fraction of layers
    whose β* < 0 (the orthogonal part turned against), and with a known batch size ``fop.noise_scale``
    (``noise`` fed with FOP's own half-batch gradients)."""
    out = LayerInternals()
    fop = [e for e in entries if "beta" in e]
    if fop:
        out.add("fop.beta_neg_frac", (torch.stack([e["beta"].float() for e in fop]) < 0).float().mean())
    halves = [e for e in fop if "gavg_norm" in e and "gdiff_norm" in e]
    if halves and batch_size is not None:
        out.add("fop.noise_scale", noise.update([e["gavg_norm"] for e in halves],
                                                [e["gdiff_norm"] for e in halves], batch_size))
    return out
