"""Gradient-difference projections from two half-batch gradients, for any optimizer.

FOP (ALGORITHMS.md §4) splits the batch in two and uses g_diff = g₁ − g₂, projected against
g_avg = (g₁ + g₂)/2, as a curvature/noise signal. The same measurement is informative for any
optimizer: ‖g_diff‖² estimates 4·tr(Σ)/B (gradient noise), and the split of g_diff into a part
parallel to g_avg and an orthogonal part shows how much of the batch disagreement is mere scale.
We give it in the Euclidean metric always and in the Fisher metric ⟨x, y⟩_F = ⟨x, G·y·A⟩ when
K-FAC factors (A, G) of the layer are available.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from probe.diagnostics.measures import global_norm

__all__ = ["NoiseScale", "gradient_difference", "fisher_inner"]

_EPS = 1e-30  # keeps s_proj finite for a zero gradient (the ε of Eq. 4)


def fisher_inner(x: Tensor, y: Tensor, a: Tensor, g: Tensor) -> Tensor:
    """⟨x, G·y·A⟩ for (out, in) matrices x, y, A (in×in, or (in+1)² with a bias row/column) and G (out×out).

    A factor that also covers the bias (homogeneous coordinate) is restricted to its weight block,
    which is the Fisher metric marginalised to the weight.
    """
    x2 = x.reshape(x.shape[0], -1).float()
    y2 = y.reshape(y.shape[0], -1).float()
    n_in = x2.shape[1]
    a = a[:n_in, :n_in].float()
    return (x2 * (g.float() @ y2 @ a)).sum()


def gradient_difference(
    g1: Tensor, g2: Tensor, *, factors: tuple[Tensor, Tensor] | None = None
) -> dict[str, Tensor]:
    """Per-layer quantities of two half-batch gradients (0-d float32 tensors; no host sync).

    Keys: ``g1_norm g2_norm gavg_norm gdiff_norm cos_g1_g2 parallel orthogonal s_proj``, where
    ``s_proj = ⟨g_diff, g_avg⟩/⟨g_avg, g_avg⟩``, ``parallel = |s_proj|·‖g_avg‖`` and
    ``orthogonal = ‖g_diff − s_proj·g_avg‖``; with ``factors=(A, G)`` also the same in the Fisher metric,
    suffixed ``_fisher`` (``gavg_norm_fisher gdiff_norm_fisher parallel_fisher orthogonal_fisher
    s_proj_fisher``).

    Args:
        g1, g2: gradients of the two halves (same shape).
        factors: K-FAC factors (A, G) of this layer, for the Fisher metric.

    Raises:
        ValueError: if the shapes differ.
    """
    if g1.shape != g2.shape:
        raise ValueError(f"half-batch gradients differ in shape: {tuple(g1.shape)} vs {tuple(g2.shape)}")
    a = g1.detach().float()
    b = g2.detach().float()
    avg = (a + b) / 2
    diff = a - b
    n1 = torch.linalg.vector_norm(a)
    n2 = torch.linalg.vector_norm(b)
    navg = torch.linalg.vector_norm(avg)
    s_proj = (diff * avg).sum() / (navg.square() + _EPS)
    orth = diff - s_proj * avg
    out = {
        "g1_norm": n1,
        "g2_norm": n2,
        "gavg_norm": navg,
        "gdiff_norm": torch.linalg.vector_norm(diff),
        "cos_g1_g2": (a * b).sum() / (n1 * n2 + _EPS),
        "parallel": s_proj.abs() * navg,
        "orthogonal": torch.linalg.vector_norm(orth),
        "s_proj": s_proj,
    }
    if factors is not None and a.ndim >= 2:
        fa, fg = factors
        avg_f = fisher_inner(avg, avg, fa, fg)
        s_f = fisher_inner(diff, avg, fa, fg) / (avg_f + _EPS)
        orth_f = diff.reshape(diff.shape[0], -1) - s_f * avg.reshape(avg.shape[0], -1)
        # clamp: round-off can make a PSD quadratic form slightly negative
        out["gavg_norm_fisher"] = avg_f.clamp_min(0).sqrt()
        out["gdiff_norm_fisher"] = fisher_inner(diff, diff, fa, fg).clamp_min(0).sqrt()
        out["s_proj_fisher"] = s_f
        out["parallel_fisher"] = s_f.abs() * out["gavg_norm_fisher"]
        out["orthogonal_fisher"] = fisher_inner(orth_f, orth_f, fa, fg).clamp_min(0).sqrt()
    return out


class NoiseScale:
    """The simple noise scale tr(Σ)/‖G‖² (McCandlish et al. 2018) from half-batch gradients, step by step.

    Two halves of a batch of B samples give unbiased one-step estimates (Σ: per-example gradient
    covariance, summed over the measured layers): E‖g₁ − g₂‖² = 4·tr(Σ)/B, so tr(Σ) ≈ B·‖g_diff‖²/4,
    and E‖g_avg‖² = ‖G‖² + tr(Σ)/B, so ‖G‖² ≈ ‖g_avg‖² − ‖g_diff‖²/4. One step's ‖G‖² estimate is too
    noisy to divide by (it can be ≤ 0), so, as in the paper's appendix A, the ratio is taken of running
    means (exponential from zero, ``decay``); it needs no bias correction, which would cancel. ``inf`` while the
    running ‖G‖² is not positive: noise dominates, beyond any batch size. A step with a non-finite norm
    is left out; NaN until a finite one came.
    """

    def __init__(self, decay: float = 0.95) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"Invalid decay: {decay} (must be in [0, 1))")
        self.decay = decay
        self._trace: Tensor | None = None
        self._grad_sq: Tensor | None = None

    def update(self, gavg_norms: Sequence[Tensor], gdiff_norms: Sequence[Tensor], batch_size: int) -> Tensor:
        """Fold in one step's per-layer ‖g_avg‖ and ‖g_diff‖; return the current estimate (0-d)."""
        diff, avg = global_norm(gdiff_norms).square(), global_norm(gavg_norms).square()
        trace, grad_sq = batch_size * diff / 4.0, avg - diff / 4.0
        if self._trace is None or self._grad_sq is None:  # from zero, so that every step weighs alike
            self._trace, self._grad_sq = torch.zeros_like(trace), torch.zeros_like(grad_sq)
        # a non-finite step (an overflow) is left out: in a running mean it would stay for good
        finite = torch.isfinite(trace) & torch.isfinite(grad_sq)
        self._trace = torch.where(finite, torch.lerp(trace, self._trace, self.decay), self._trace)
        self._grad_sq = torch.where(finite, torch.lerp(grad_sq, self._grad_sq, self.decay), self._grad_sq)
        # ‖G‖² ≤ 0 with noise: it dominates (inf); no finite step yet, or neither noise nor signal: NaN
        undefined = torch.where(self._trace > 0, float("inf"), float("nan"))
        return torch.where(self._grad_sq > 0, self._trace / self._grad_sq, undefined)
