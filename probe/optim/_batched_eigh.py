"""Eigendecompose many symmetric PSD factors at once, keeping the previous basis where eigh fails.

K-FAC's inverse refresh decomposes two factors per layer (GPT-2 small: 96). One ``torch.linalg.eigh``
per factor serialises 96 solver calls, each of which synchronises with the host on CUDA to check for
convergence. Factors of the same side, dtype and device are stacked and decomposed by one batched call
instead (GPT-2 small: 4 sizes -> 4 calls).

Failure handling (the CUDA ``syevj`` solver may fail to converge for some 32 <= n <= 512 inputs, and a
non-finite factor gives non-finite vectors): a batch that raises ``torch.linalg.LinAlgError`` is retried
one matrix at a time; a matrix that still raises, or whose result is not finite, keeps its previous
eigendecomposition (``previous``), or, when it has none yet, gets the identity basis with the factor's
clamped diagonal as eigenvalues (1 where it is not finite: the factors start at I). The non-finite test runs on
the device (``torch.where``), so it adds no host sync. Failures are reported to the caller, which turns
them into events; ``step()`` never raises because of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EighResult", "batched_eigh"]


@dataclass
class EighResult:
    """Clamped eigenvalues (ascending), eigenvectors (columns), and whether ``eigh`` raised for it."""

    evals: Tensor
    evecs: Tensor
    raised: bool = False


def _fallback(mat: Tensor, previous: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    if previous is not None:
        return previous
    diag = mat.diagonal()
    # A non-finite factor with no earlier decomposition falls back to its initial value, the identity.
    vals = torch.where(torch.isfinite(diag), diag.clamp(min=0.0), torch.ones_like(diag))
    return vals, torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)


def _keep_finite(evals: Tensor, evecs: Tensor, mat: Tensor,
                 previous: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """The new decomposition where it is finite, else the fallback -- selected on the device."""
    ok = torch.isfinite(evals).all() & torch.isfinite(evecs).all()
    old_vals, old_vecs = _fallback(mat, previous)
    return torch.where(ok, evals, old_vals), torch.where(ok, evecs, old_vecs)


def batched_eigh(mats: Sequence[Tensor], previous: Sequence[tuple[Tensor, Tensor] | None]) -> list[EighResult]:
    """Eigendecompose the symmetrised ``mats``, batching equal (size, dtype, device); see the module doc.

    ``previous[i]`` is matrix i's last (eigenvalues, eigenvectors), or ``None``.
    """
    if len(mats) != len(previous):
        raise ValueError(f"Invalid previous: {len(previous)} entries for {len(mats)} matrices")
    out: list[EighResult | None] = [None] * len(mats)
    groups: dict[tuple[int, torch.dtype, torch.device], list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((m.shape[0], m.dtype, m.device), []).append(i)
    for idx in groups.values():
        stack = torch.stack([mats[i] for i in idx])
        sym = (stack + stack.mT) * 0.5
        try:
            evals, evecs = torch.linalg.eigh(sym)
        except torch.linalg.LinAlgError:
            for j, i in enumerate(idx):
                try:
                    e, v = torch.linalg.eigh(sym[j])
                except torch.linalg.LinAlgError:
                    vals, vecs = _fallback(mats[i], previous[i])
                    out[i] = EighResult(vals, vecs, raised=True)
                    continue
                vals, vecs = _keep_finite(e.clamp(min=0.0), v, mats[i], previous[i])
                out[i] = EighResult(vals, vecs)
            continue
        evals = evals.clamp(min=0.0)
        for j, i in enumerate(idx):
            vals, vecs = _keep_finite(evals[j], evecs[j], mats[i], previous[i])
            out[i] = EighResult(vals, vecs)
    return [r for r in out if r is not None]
