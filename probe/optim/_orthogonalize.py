"""Newton–Schulz orthogonalization shared by the Muon family (Muon, NorMuon).

``newton_schulz5`` maps a matrix G = U S Vᵀ to approximately U Vᵀ with the quintic iteration of
Keller Jordan's Muon. It accepts one matrix (m, n) or a batch (B, m, n): the optimizers stack
same-shape matrices so that many small layers cost one chain of batched matmuls instead of one
chain per layer.

Why these choices (ALGORITHMS.md §1.2):
* Coefficients (a, b, c) = (3.4445, −4.7750, 2.0315), 5 steps: they maximise the slope at 0 so
  small singular values are lifted in few steps; the output's singular values land in about
  [0.68, 1.13] rather than exactly 1 (P1, P2), which does not hurt training.
* Frobenius pre-normalisation X₀ = G/(‖G‖_F + 1e-7): ‖G‖_F ≥ σ_max, so X₀'s spectrum is in [0, 1],
  where the polynomial is tuned. The norm is over the last two dims, so batches work.
* Work on the wide orientation (transpose when m > n) so the Gram matrix X Xᵀ is the small k×k one.
* The algebra uses ``addmm``/``baddbmm`` with the same grouping as ``torch.optim.Muon`` so that,
  at equal dtype, a single matrix gives the same rounding as torch's implementation.
* Working dtype: bf16 on CUDA (tensor cores; the iteration tolerates bf16, P2/P3), float32 on
  CPU (CPU bf16 matmul is slow on most hosts and the extra precision is free), and float64 when
  the input is float64 (reference tests). :func:`default_ns_dtype` encodes this; callers may
  override it. The output is returned in the working dtype; callers cast.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Source: KellerJordan/Muon muon.py (zeropower_via_newtonschulz5), also torch/optim/_muon.py.
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
NS_STEPS: int = 5
#: Added to ‖G‖_F before dividing (Keller: ``X / (X.norm() + 1e-7)``); an all-zero input maps to 0.
NS_EPS: float = 1e-7
#: Value of the ``orthogonalizer`` class attribute of the Muon family (recorded by the probe).
ORTHOGONALIZER_NAME: str = "newton_schulz5"

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def default_ns_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Working dtype of Newton–Schulz when the user did not choose one.

    bf16 on CUDA; otherwise float64 for float64 inputs and float32 for everything else.
    """
    if device.type == "cuda":
        return torch.bfloat16
    return torch.float64 if dtype == torch.float64 else torch.float32


def newton_schulz5(
    G: Tensor,
    *,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """Approximate orthogonalization U Vᵀ of ``G`` (2-D, or 3-D batch of same-shape matrices).

    Args:
        G: (m, n) or (B, m, n) floating tensor. Not modified (every op below is out of place).
        steps: number of quintic iterations (≥ 1).
        coefficients: (a, b, c) of p(σ) = aσ + bσ³ + cσ⁵.
        eps: added to ‖G‖_F before the pre-normalisation.
        dtype: working dtype; ``None`` picks :func:`default_ns_dtype`.
        keep: optional (B,) bool (0-d for 2-D G); matrices with ``keep == False`` come out as exact
            zeros. The optimizers pass their per-matrix finiteness mask here: the mask is folded into
            the pre-normalisation divisor (÷∞ = 0), so skipping costs no extra pass over the data.

    Returns:
        A new contiguous tensor of G's shape in the working dtype. No host synchronisation happens.

    Raises:
        ValueError: if G is not 2-D or 3-D.
    """
    if G.ndim not in (2, 3):
        raise ValueError(f"newton_schulz5 expects a 2-D matrix or a 3-D batch, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    work = dtype if dtype is not None else default_ns_dtype(G.device, G.dtype)
    X = G.to(work)  # no copy when already in `work`: the division below is out of place
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    divisor = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True) + eps
    if keep is not None:
        # ÷1 is exact, so kept matrices are bit-identical to the unmasked path; ÷∞ gives 0 for finite X.
        divisor = divisor / keep.to(X.dtype).view(divisor.shape)
    X = X / divisor
    if X.ndim == 2:
        for _ in range(steps):
            A = X @ X.mT
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:
        for _ in range(steps):
            A = torch.bmm(X, X.mT)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
    if transposed:
        # Contiguous in the caller's layout: a transposed view makes every later elementwise pass over
        # the update (the weight add, NorMuon's row norms) ~10x slower on CPU (measured, bf16 1024x256);
        # one transposing copy here is cheaper than paying that on each of them.
        X = X.mT.contiguous()
    return X


def polynomial_map(sigma: Tensor, *, steps: int = NS_STEPS, coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> Tensor:
    """The scalar map p∘…∘p (``steps`` times) that NS5 applies to each normalised singular value.

    Used by tests (P1/P3) and by the probe's cheap consistency check post = p⁵(pre/‖pre‖_F).
    """
    a, b, c = coefficients
    x = sigma
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def validate_ns_dtype(ns_dtype: object) -> None:
    """Raise ``ValueError`` unless ``ns_dtype`` is ``None`` or a floating torch dtype."""
    if ns_dtype is not None and ns_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"Invalid ns_dtype: {ns_dtype} (must be None or one of {_FLOAT_DTYPES})")
