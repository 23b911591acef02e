"""NorMuon: Muon plus per-neuron (per output row) second-moment normalization (Li et al., 2025).

After Newton–Schulz, rows of O have unequal norms (tall shapes: row norms are √leverage; inexact NS
adds more, ALGORITHMS.md §2.4/P9). NorMuon keeps an EMA v of each row's mean square and divides
each row by √v, so every neuron gets a comparable step. State per matrix: momentum (rows×cols) plus
v (rows), i.e. rows extra scalars over Muon.

Update of a matrix W (m×n; conv weights viewed as (C_out, C_in·kh·kw)), after Muon's momentum and
O = NS5(U)::

    r  = mean_cols(O ⊙ O)                      (m,)
    v ← β₂·v + (1−β₂)·r                         (no bias correction)
    Ô = O ⊘ (√v + ε)                            (row-wise)
    "original":        Ô ← Ô·‖O‖_F/(‖Ô‖_F + ε)·√max(1, m/n)     (official code, default)
    "match_rms_adamw": Ô ← Ô·0.2·√(mn)/(‖Ô‖_F + ε)               (paper: RMS(Ô) = 0.2)
    W ← W·(1 − η·λ) − η·Ô

Decisions on ALGORITHMS.md §6.2 (the paper and the official code differ):

* Defaults reproduce the official code (zichongli5/NorMuon d45c9a4): lr 0.02, momentum 0.95,
  beta2 0.95, eps 1e-10 (outside the sqrt), weight_decay 0, Nesterov on, 5 NS steps, the
  Frobenius-preserving rescale and Keller's √max(1, m/n). The paper's "RMS = 0.2·lr" rule is
  ``adjust_lr_fn="match_rms_adamw"`` (pair it with ``nesterov=False`` for the paper's plain momentum).
  Weight decay uses the unadjusted η in both forms (paper step 6).
* ε is added outside the square root (official code); the same ε guards the rescale's denominator,
  so an all-zero update stays exactly 0 (§2.4).
* Conv weights are flattened to (C_out, C_in·kh·kw) and normalised per output channel (the official
  code's per-kernel-row statistic looks unintended, §2.4); v has shape (C_out,).
* v is stored flat with shape (rows,) (P11's (m, 1) is the same m scalars), in float32 (float64 for
  float64 parameters) even when NS runs in bf16. The row statistics and the per-row factor
  (1/(√v+ε) times the rescale) are computed in that dtype from the row norms of O, and the factor is
  applied inside the weight update (``addcmul``), so Ô is never materialised unless introspecting.
  The official code does all of this in bf16; ours is at least as precise.
* The statistic is per output neuron (§2.3): per row of ``nn.Linear``'s (out, in) weight, and per
  column of a weight stored (in, out) (transformers' ``Conv1D``, GPT-2) when its group has
  ``weight_layout="in_out"``, which :func:`probe.optim.hybrid_param_groups` sets for such modules.
* Non-finite gradients skip the parameter exactly as in Muon, and leave v untouched.

Introspection (``introspect=True``) adds ``v`` (rows,) and ``normalized`` (Ô after the rescale,
before the shape factor, 2-D) to Muon's ``pre_orth``/``post_orth``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from probe.optim._orthogonalize import NS_COEFFICIENTS, NS_STEPS
from probe.optim.muon import MATCH_RMS, Muon, _check_unit_interval, shape_scale

if TYPE_CHECKING:
    from probe.optim._distributed import RowShard

__all__ = ["NorMuon", "normuon_normalize"]


def normuon_normalize(
    O: Tensor,
    v: Tensor,
    ok: Tensor,
    *,
    beta2: float,
    eps: float,
    adjust_lr_fn: str,
    rows: int | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, float]:
    """Row-normalisation factors of a batch of NS outputs; updates v in place.

    Args:
        O: (B, m, n) Newton–Schulz outputs (any float dtype; computed in ``v.dtype``), or this rank's
            row shard of them when the parameters are row-sharded (then pass ``rows`` and ``reduce``).
        v: (B, m) second moments, updated in place where ``ok`` is True (before ``reduce`` is called).
        ok: (B,) bool; False rows leave v bit-identical (their output is discarded by the caller).
        beta2: EMA factor of v.
        eps: added to √v and to the rescale's denominator.
        adjust_lr_fn: ``"original"`` or ``"match_rms_adamw"`` (see module doc).
        rows: the full matrix's row count (default ``O.shape[-2]``).
        reduce: sums a (2, B) tensor of per-shard squared norms over the row shards (one all-reduce
            of 2 scalars per matrix, which makes the Frobenius rescale exact under row sharding).

    Returns:
        (row_factor, scale): Ô = O · row_factor, with row_factor of shape (B, m, 1) in ``v.dtype``
        (the row division and the Frobenius/RMS rescale in one factor), and the shape factor still to
        apply (√max(1, m/n) for ``"original"``, 1 for ``"match_rms_adamw"``). Returning the factor
        rather than Ô lets the optimizer fuse it into the weight update (``addcmul``), so NorMuon
        costs one pass over O (the row norms) more than Muon.
    """
    m, n = (rows if rows is not None else O.shape[-2]), O.shape[-1]
    # Everything is derived from the row norms: ‖Ô_i‖ = ‖O_i‖/(√v_i + ε), so the two Frobenius norms
    # need no pass over Ô, and the row division and the rescale become one per-row factor (one pass).
    row_sq = torch.linalg.vector_norm(O, dim=-1, dtype=v.dtype).square_()  # (B, m_local): ‖O_i‖²
    v.lerp_(row_sq / n, (ok.to(v.dtype) * (1.0 - beta2)).view(-1, 1))
    inv = _inverse_rms(v, eps)
    sq = torch.stack([row_sq.sum(dim=-1), (row_sq * inv.square()).sum(dim=-1)])  # (2, B): ‖O‖², ‖Ô‖²
    if reduce is not None:
        sq = reduce(sq)
    return _row_factor_from(inv, sq, rows=m, cols=n, eps=eps, adjust_lr_fn=adjust_lr_fn)


def _inverse_rms(v: Tensor, eps: float) -> Tensor:
    """1/(√v + ε), row by row."""
    return 1.0 / (v.sqrt() + eps)


def _row_factor_from(
    inv: Tensor, sq: Tensor, *, rows: int, cols: int, eps: float, adjust_lr_fn: str
) -> tuple[Tensor, float]:
    """(row_factor, scale) of :func:`normuon_normalize` from the per-row 1/(√v+ε) (B, m') and the
    matrices' (2, B) squared norms (‖O‖², ‖Ô‖²), for any m' of the m rows: a rank's own rows, or, on
    the rank that reports a row-sharded matrix, all of them (the same formula, so the same bits)."""
    norm_old, norm_new = sq.sqrt().unbind(0)
    if adjust_lr_fn == "original":
        factor = inv * (norm_old / (norm_new + eps)).unsqueeze(-1)
        return factor.unsqueeze(-1), shape_scale(rows, cols, "original")
    if adjust_lr_fn == "match_rms_adamw":
        factor = inv * (MATCH_RMS * math.sqrt(rows * cols) / (norm_new + eps)).unsqueeze(-1)
        return factor.unsqueeze(-1), 1.0
    raise ValueError(f"Invalid adjust_lr_fn: {adjust_lr_fn!r}")


class NorMuon(Muon):
    """NorMuon for hidden matrices, AdamW for ``use_muon=False`` groups.

    Args:
        params: parameters or groups (see :class:`probe.optim.Muon`).
        lr: learning rate η (default 0.02).
        momentum: β₁ of the EMA momentum (default 0.95).
        beta2: β₂ of the per-row second moment (default 0.95).
        eps: in ``use_muon`` groups, ε of the row normalisation (default 1e-10); in
            ``use_muon=False`` groups, AdamW's ε (the same default as Keller's aux Adam).
        weight_decay: decoupled weight decay λ (default 0).
        nesterov: Nesterov blend (default True, official code).
        ns_steps, ns_coefficients, ns_dtype: Newton–Schulz settings (see Muon).
        adjust_lr_fn: ``"original"`` (official code, default) or ``"match_rms_adamw"`` (paper).
        betas: AdamW betas for ``use_muon=False`` groups (default (0.9, 0.95)).
        introspect, distributed, process_group: see Muon.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        momentum: float = 0.95,
        beta2: float = 0.95,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_dtype: torch.dtype | None = None,
        adjust_lr_fn: str = "original",
        betas: tuple[float, float] = (0.9, 0.95),
        *,
        introspect: bool = False,
        distributed: bool = False,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            ns_dtype=ns_dtype,
            adjust_lr_fn=adjust_lr_fn,
            betas=betas,
            eps=eps,
            introspect=introspect,
            distributed=distributed,
            process_group=process_group,
            _extra_defaults={"beta2": beta2},
        )

    def _validate_group(self, group: dict[str, Any], params: Iterable[Tensor]) -> None:
        super()._validate_group(group, params)
        _check_unit_interval("beta2", group["beta2"])
        eps = group["eps"]
        if group["use_muon"] and not eps > 0.0:
            raise ValueError(f"Invalid eps: {eps} (must be > 0 for NorMuon's row normalisation)")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("beta2", 0.95)

    def _init_extra_state(self, p: Tensor, state: dict[str, Any], rows: int, cols: int) -> None:
        state["v"] = torch.zeros(rows, dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)

    def _direction(
        self,
        group: dict[str, Any],
        params: Sequence[Tensor],
        states: Sequence[dict[str, Any]],
        O: Tensor,
        ok: Tensor,
        rows: int,
        cols: int,
        shard: RowShard | None = None,
    ) -> tuple[Tensor, Tensor | None, float, dict[str, Tensor]]:
        vs = [st["v"] for st in states]
        V = torch.stack(vs)
        reduced: dict[str, Tensor] = {}

        def reduce(sq: Tensor) -> Tensor:
            # Row-sharded: the Frobenius norms' all-reduce also assembles the whole v (V is updated by
            # now), on every step, so no collective depends on ``introspect`` (see _distributed).
            assert shard is not None
            reduced["sq"], reduced["v"] = shard.reduce_sum_with_rows(sq, V)
            return reduced["sq"]

        eps, fn = group["eps"], group["adjust_lr_fn"]
        row_factor, scale = normuon_normalize(
            O, V, ok, beta2=group["beta2"], eps=eps, adjust_lr_fn=fn, rows=rows,
            reduce=None if shard is None else reduce,
        )
        torch._foreach_copy_(vs, list(V.unbind(0)))
        if not self.introspect:
            return O, row_factor, scale, {}
        if shard is None:
            return O, row_factor, scale, {"v": V, "row_factor": row_factor}
        if shard.rank != 0:  # only rank 0 of the mesh reports (Muon._update_bucket)
            return O, row_factor, scale, {}
        v_full = reduced["v"]
        full_factor, _ = _row_factor_from(_inverse_rms(v_full, eps), reduced["sq"], rows=rows, cols=cols,
                                         eps=eps, adjust_lr_fn=fn)
        return O, row_factor, scale, {"v": v_full, "row_factor": full_factor}

    def _extra_internals(self, index: int, post: Tensor, extra: dict[str, Tensor]) -> dict[str, Tensor]:
        """``v`` (rows,) and ``normalized`` (Ô after the rescale, before the shape factor), whole matrix."""
        if not extra:
            return {}
        return {"v": extra["v"][index], "normalized": post * extra["row_factor"][index]}
