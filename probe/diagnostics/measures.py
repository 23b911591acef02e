"""Pure measures of a layer's weight, update and gradient: tensors in, tensors out.

None of these functions calls ``.item()`` or branches on tensor values, so they can run every step
without a device→host synchronization; the Monitor copies their results to the host once per interval.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "local_shard",
    "as_matrix",
    "update_ratio",
    "row_norms",
    "spread_stats",
    "nonfinite_count",
    "nonfinite_counts",
    "orthogonality_error",
    "global_norm",
    "stack_f32",
]


def local_shard(t: Tensor) -> Tensor:
    """This rank's part of a DTensor (an FSDP2 or tensor-parallel parameter), else ``t`` itself.

    Measures of a DTensor would run collectives, and ranks do not always measure the same steps (the
    overhead budget decides per rank): one rank would wait forever in a collective the other never
    joins. The probe therefore measures each rank's local shard, which needs no communication.
    """
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def as_matrix(t: Tensor, neuron_axis: int = 0) -> Tensor:
    """View a ≥2-D parameter-shaped tensor as (neurons, fan_in).

    Conv weights (C_out, C_in, kh, kw) become (C_out, C_in·kh·kw). ``neuron_axis`` names the output-neuron
    dimension for layers stored (in, out) (e.g. ``neuron_axis=1``), since "per row" is only per neuron for the
    ``nn.Linear`` layout (ALGORITHMS.md §2.3).

    Raises:
        ValueError: if ``t`` has fewer than 2 dimensions.
    """
    if t.ndim < 2:
        raise ValueError(f"as_matrix needs a >=2-D tensor, got shape {tuple(t.shape)}")
    if neuron_axis % t.ndim != 0:
        t = t.movedim(neuron_axis, 0)
    return t.reshape(t.shape[0], -1)


def update_ratio(delta: Tensor, weight: Tensor) -> Tensor:
    """‖ΔW‖_F / ‖W‖_F (0-d, float32). ``inf`` when W = 0 and ΔW ≠ 0, NaN when both are 0."""
    return torch.linalg.vector_norm(delta.float()) / torch.linalg.vector_norm(weight.float())


def row_norms(mat: Tensor) -> Tensor:
    """L2 norm of each row of a 2-D tensor (float32): per-neuron update norms of a ΔW matrix."""
    return torch.linalg.vector_norm(mat.float(), dim=1)


def spread_stats(norms: Tensor, *, frozen_rel_tol: float = 1e-3) -> dict[str, Tensor]:
    """Spread of a vector of per-neuron norms: ``cv mean min max q50 frozen_frac`` (0-d tensors).

    A neuron is *frozen* when its norm is at most ``frozen_rel_tol`` × the mean norm (relative, so the
    measure does not depend on the learning rate); when every norm is 0 all neurons are frozen.
    The coefficient of variation (population std / mean) is defined as 0 when the mean is 0.
    A stack of same-length vectors (``(B, n)``) gives each measure per vector (``(B,)``): the Monitor
    measures the layers that have as many neurons in one go.
    """
    x = norms.float()
    mean = x.mean(-1)
    std = x.std(-1, correction=0) if x.shape[-1] > 1 else torch.zeros_like(mean)
    cv = torch.where(mean > 0, std / torch.where(mean > 0, mean, torch.ones_like(mean)), torch.zeros_like(mean))
    frozen = (x <= frozen_rel_tol * mean.unsqueeze(-1)).float().mean(-1)
    return {
        "cv": cv,
        "mean": mean,
        "min": x.amin(-1),
        "max": x.amax(-1),
        "q50": torch.quantile(x, 0.5, dim=-1),
        "frozen_frac": frozen,
    }


def nonfinite_count(t: Tensor) -> Tensor:
    """Number of NaN/±Inf entries of ``t`` (0-d int64 tensor)."""
    return t.numel() - torch.isfinite(t).sum()


def nonfinite_counts(tensors: Sequence[Tensor], norms: Tensor | None = None) -> Tensor:
    """``nonfinite_count`` of many tensors as one 1-D float32 tensor, in two batched (``_foreach``)
    kernels instead of two per tensor.

    x·0 is 0 for a finite entry and NaN otherwise, and the L0 "norm" counts entries ≠ 0 (NaN ≠ 0).
    ``norms``: the tensors' norms if the caller has them. A NaN or ±inf entry always makes the norm
    non-finite, so when every norm is finite every count is 0 and the two passes over the data are
    skipped — decided on the host, hence only for CPU norms (on a GPU the check would synchronize).
    """
    if not tensors:
        return torch.zeros(0)
    # Σ of non-negative norms is finite iff each is (NaN and inf propagate); summed as a NumPy view of
    # the CPU tensor it costs a fraction of isfinite().all() (three tensor ops and a host read).
    if norms is not None and norms.device.type == "cpu" and math.isfinite(norms.detach().numpy().sum()):
        return torch.zeros(len(tensors))
    return stack_f32(torch._foreach_norm(torch._foreach_mul(list(tensors), 0.0), 0))


def orthogonality_error(o: Tensor) -> Tensor:
    """‖OOᵀ − I‖_F / √k on the smaller side k = min(m, n) (ALGORITHMS.md §1.7): 0 for an exact
    semi-orthogonal matrix. Computed in float32 even for bf16 Newton–Schulz output."""
    x = o.detach().float().reshape(o.shape[0], -1)
    if x.shape[0] > x.shape[1]:
        x = x.mT
    k = x.shape[0]
    gram = x @ x.mT
    eye = torch.eye(k, device=x.device, dtype=x.dtype)
    return torch.linalg.matrix_norm(gram - eye) / (k**0.5)


def global_norm(norms: Sequence[Tensor]) -> Tensor:
    """√Σ‖gᵢ‖² from per-tensor norms (0-d float32)."""
    if not norms:
        return torch.zeros(())
    return torch.stack([n.float() for n in norms]).square().sum().sqrt()


def clone_all(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Copies of ``tensors``: one batched kernel on a GPU (one launch instead of one per tensor), plain
    clones on the CPU, where ``_foreach_mul(t, 1.0)`` has no fused kernel and costs twice the clones."""
    if tensors and tensors[0].device.type != "cpu":
        return list(torch._foreach_mul(list(tensors), 1.0))
    return [t.clone() for t in tensors]


def stack_f32(values: Sequence[Tensor]) -> Tensor:
    """Stack 0-d tensors (any float/int dtype, one device) into a 1-D float32 tensor.

    One ``torch.stack`` (which promotes dtypes) when the values are 0-d on one device, the common
    case; converting each value first would cost three tensor ops per value, hundreds per step.
    """
    try:
        stacked = torch.stack(list(values))
    except RuntimeError:  # mixed devices or shapes
        stacked = None
    if stacked is not None and stacked.ndim == 1:
        return stacked.detach().to(torch.float32)
    device = values[0].device
    return torch.stack([v.detach().reshape(()).to(device=device, dtype=torch.float32) for v in values])
