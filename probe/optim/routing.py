"""Route a model's parameters: hidden matrices to the Muon family, everything else to AdamW.

Muon/NorMuon are defined for hidden weight matrices only (ALGORITHMS.md §1.4). In practice
(Keller's ``MuonWithAuxAdam``, Moonlight, modded-nanogpt) one optimizer holds two kinds of group:
matrices stepped by Muon and the rest stepped by AdamW. :func:`hybrid_param_groups` builds those
groups for :class:`probe.optim.Muon` / :class:`probe.optim.NorMuon`, which step ``use_muon=False``
groups with bias-corrected AdamW — so hooks, schedulers and ``state_dict`` see one optimizer.

Routing rule, in order, for each ``(name, param)`` of ``model.named_parameters()`` (shared
parameters counted once, frozen ones skipped):

1. ``param.ndim < 2`` (biases, norm gains, scalars) → AdamW. NS is undefined on vectors.
2. A name component matching one of ``exclude`` → AdamW. Matching is per dotted component, and a
   component matches a pattern if it equals it or starts with ``pattern`` followed by ``_`` or a
   digit (``embed`` catches ``embed``, ``embed_tokens``; ``head`` catches ``head``, ``lm_head`` is
   listed separately). Embeddings are lookup tables, and the output head's rows are per-class —
   neither is a "hidden" linear map; every reference implementation sends them to AdamW.
3. Every ``nn.Embedding`` module's weight → AdamW, whatever its name (tied heads included).
4. With ``first_conv_to_adamw``, the first ≥3-D parameter in registration order (the stem conv)
   → AdamW, as the Muon README advises for ConvNets (its input has 3 channels; orthogonalizing a
   3×k² fan-in matrix is not useful).
5. Everything else (≥ 2-D) → Muon; conv weights are flattened to (C_out, C_in·kh·kw) by the optimizer.
   Weights stored (in, out) -- transformers' ``Conv1D`` (GPT-2), see :mod:`probe.optim.layouts` -- go to
   a second Muon group with ``weight_layout="in_out"``, so the optimizer orthogonalizes and normalises
   them with the output axis as rows.

Groups with no parameters are omitted (torch.optim refuses empty groups).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from probe.optim.layouts import in_out_weight_ids

__all__ = ["hybrid_param_groups", "is_excluded_name"]


def is_excluded_name(name: str, exclude: Sequence[str]) -> bool:
    """True if a dotted component of ``name`` matches one of ``exclude`` (see module doc, rule 2)."""
    parts = name.split(".")
    for pattern in exclude:
        rx = re.compile(rf"^{re.escape(pattern)}(?:$|[_0-9])")
        if any(rx.match(part) for part in parts):
            return True
    return False


def hybrid_param_groups(
    model: nn.Module,
    *,
    adamw_lr: float = 3e-4,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_eps: float = 1e-10,
    adamw_weight_decay: float = 0.0,
    exclude: Sequence[str] = ("embed", "head", "lm_head"),
    first_conv_to_adamw: bool = True,
    muon_group: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a Muon group and an AdamW group.

    Args:
        model: the model.
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: AdamW settings written into the
            ``use_muon=False`` group (defaults: Keller's aux Adam, lr 3e-4, betas (0.9, 0.95), eps 1e-10).
        exclude: name components routed to AdamW (see module doc).
        first_conv_to_adamw: send the first ≥3-D parameter (stem conv) to AdamW.
        muon_group: extra keys for the Muon group (e.g. ``{"lr": 0.02}``); absent keys take the
            optimizer's defaults.

    Returns:
        ``[{"params": [...], "use_muon": True, "param_names": [...], **muon_group},
        {... "use_muon": True, "weight_layout": "in_out"} (only when the model has Conv1D weights),
        {"params": [...], "use_muon": False, "param_names": [...], "lr": adamw_lr, "betas": ..., "eps": ...,
        "weight_decay": ...}]`` without empty groups. ``param_names`` (torch.optim's key) lists the parameter names for logs
        and the probe.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"hybrid_param_groups expects an nn.Module, got {type(model).__name__}")
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    in_out = in_out_weight_ids(model)
    muon: list[tuple[str, Tensor]] = []
    adamw: list[tuple[str, Tensor]] = []
    seen_conv = False
    for name, p in model.named_parameters():  # named_parameters() already yields shared params once
        if not p.requires_grad:
            continue
        is_first_conv = p.ndim >= 3 and not seen_conv
        seen_conv = seen_conv or p.ndim >= 3
        if (
            p.ndim < 2
            or is_excluded_name(name, exclude)
            or id(p) in embedding_weights
            or (first_conv_to_adamw and is_first_conv)
        ):
            adamw.append((name, p))
        else:
            muon.append((name, p))
    groups: list[dict[str, Any]] = []
    out_in = [(n, p) for n, p in muon if id(p) not in in_out]
    transposed = [(n, p) for n, p in muon if id(p) in in_out]
    for members, layout in ((out_in, "out_in"), (transposed, "in_out")):
        if members:
            groups.append({
                **(muon_group or {}), "params": [p for _, p in members], "param_names": [n for n, _ in members],
                "use_muon": True, **({"weight_layout": layout} if layout == "in_out" else {}),
            })
    if adamw:
        groups.append(
            {
                "params": [p for _, p in adamw],
                "param_names": [n for n, _ in adamw],
                "use_muon": False,
                "lr": adamw_lr,
                "betas": tuple(adamw_betas),
                "eps": adamw_eps,
                "weight_decay": adamw_weight_decay,
            }
        )
    return groups
