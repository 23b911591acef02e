"""FOP: Fisher-Orthogonal Projection (Lu & Armour, AAAI-26 / arXiv 2508.13898), built on :class:`KFAC`.

No official code exists (yishunlu-222/fop is README-only), so this follows the paper's equations as
restated in ALGORITHMS.md §4 and pins every open point of §6 in the :class:`FOP` docstring.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from probe.optim._kfac_factors import KroneckerLayer, eigen_denominator, from_eigenbasis, to_eigenbasis
from probe.optim.kfac import KFAC, _check_real

__all__ = ["FOP", "fop_direction", "fop_direction_eigenbasis", "DEFAULT_BETA_GUARD"]

#: beta* = 0 when E <= DEFAULT_BETA_GUARD * N, i.e. when ||g_perp||_{M^-1} <= 1e-3 ||g_avg||_{M^-1}.
#: g_1 = g_2 computed by two different float32 summation orders leaves g_diff at ~1e-6 relative, and
#: beta* g_perp is scale-free in g_perp (a round-off g_perp gives a full-size random term), so the guard
#: must sit well above round-off yet far below genuine half-batch noise (typically ||g_diff|| ~ ||g_avg||).
DEFAULT_BETA_GUARD = 1e-6


def fop_direction(
    g_avg: Tensor,
    g_diff: Tensor,
    qa: Tensor,
    a_eigs: Tensor,
    qg: Tensor,
    g_eigs: Tensor,
    damping: float,
    *,
    factored: bool = False,
    eta_convention: Literal["avg", "sum"] = "avg",
    beta_guard: float = DEFAULT_BETA_GUARD,
    with_stats: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One layer's FOP step direction d / eta_0 = eta* M^-1 g_comb (ALGORITHMS.md §4.1 steps 3-8).

    Args:
        g_avg, g_diff: (d_out, a_dim) gradient matrices (bias column last).
        qa, a_eigs, qg, g_eigs: eigendecompositions of A and G.
        damping: Tikhonov gamma of M.
        factored: use factored-pi damping for M (F stays undamped).
        eta_convention: ``"avg"``: g_tot = g_avg in eta* (eta* in (1/3, 1]); ``"sum"``: g_tot = g_1 + g_2 =
            2 g_avg, the literal Eq. 8 reading (eta* twice as large).
        beta_guard: beta* = 0 when E <= beta_guard * g_avg^T M^-1 g_avg.
        with_stats: also return the Fisher norms and the parallel/orthogonal parts.

    Returns:
        (direction, stats): stats always holds 0-d ``s_proj D E beta eta``; with ``with_stats`` also
        ``gavg_fisher gdiff_fisher parallel orthogonal`` and the KL-norm split of g_comb (Eq. 21, with
        Q = M^-1 F M^-1): ``kl_base`` = g_avg^T Q g_avg, ``kl_cross`` = 2 beta* g_avg^T Q g_perp,
        ``kl_orth`` = beta*^2 g_perp^T Q g_perp.
    """
    step, stats = fop_direction_eigenbasis(
        to_eigenbasis(g_avg, qa, qg), to_eigenbasis(g_diff, qa, qg), a_eigs, g_eigs, damping,
        factored=factored, eta_convention=eta_convention, beta_guard=beta_guard, with_stats=with_stats,
    )
    return from_eigenbasis(step, qa, qg), stats


def fop_direction_eigenbasis(
    ga: Tensor,
    gd: Tensor,
    a_eigs: Tensor,
    g_eigs: Tensor,
    damping: float,
    *,
    factored: bool = False,
    eta_convention: Literal["avg", "sum"] = "avg",
    beta_guard: float = DEFAULT_BETA_GUARD,
    with_stats: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`fop_direction` with g_avg and g_diff already in the Kronecker eigenbasis (Q_G^T X Q_A).

    There F = A (x) G is diagonal with entries lambda_G lambda_A^T and M has entries ``eigen_denominator``,
    so every inner product is an elementwise reduction. Returns eta* M^-1 g_comb in the eigenbasis.
    """
    fisher = torch.outer(g_eigs, a_eigs)  # undamped F
    minv = eigen_denominator(a_eigs, g_eigs, damping, factored=factored).reciprocal_()
    return _fop_core(ga, gd, fisher, minv, eta_convention=eta_convention, beta_guard=beta_guard,
                     with_stats=with_stats)


def _fop_core(
    ga: Tensor,
    gd: Tensor,
    fisher: Tensor,
    minv: Tensor,
    *,
    eta_convention: str,
    beta_guard: float,
    with_stats: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """FOP in the eigenbasis given the diagonals of F and M^-1 (both (d_out, a_dim)).

    Inner products are flat dot products and eta* comes from its closed form in N, D, E: this is the only
    per-step work FOP adds over KFAC in the eigenbasis, so it keeps full-size temporaries to four.
    """
    if eta_convention not in ("avg", "sum"):
        raise ValueError(f"Invalid eta_convention: {eta_convention!r} (must be 'avg' or 'sum')")
    shape = ga.shape
    ga, gd, fisher, minv = ga.reshape(-1), gd.reshape(-1), fisher.reshape(-1), minv.reshape(-1)
    zero = ga.new_zeros(())

    fa = ga * fisher
    aa_f = torch.dot(ga, fa)  # <g_avg, g_avg>_F
    da_f = torch.dot(gd, fa)  # <g_diff, g_avg>_F
    s_proj = torch.where(aa_f > 0, da_f / torch.where(aa_f > 0, aa_f, 1.0), zero)  # Eq. 4 (0 if g_avg = 0)
    gp = torch.addcmul(gd, ga, -s_proj)  # g_perp = g_diff - s_proj g_avg, Eq. 5
    ga_m = ga * minv
    gp_m = gp * minv
    n_val = torch.dot(ga, ga_m)  # g_avg^T M^-1 g_avg
    d_val = torch.dot(gp, ga_m)  # Eq. 13
    e_val = torch.dot(gp, gp_m)
    keep = e_val > beta_guard * n_val
    beta = torch.where(keep, d_val / torch.where(keep, e_val, 1.0), zero)  # Eq. 16 with the E ~ 0 guard
    # g_comb = g_avg + beta g_perp (Eq. 6); M^-1 g_comb = ga_m + beta gp_m;
    # eta* = <g_tot, M^-1 g_comb> / <g_comb, M^-1 g_comb> = (N + beta D) / (N + 2 beta D + beta^2 E) (Eq. 17).
    num = (n_val + beta * d_val) * (2.0 if eta_convention == "sum" else 1.0)
    den = n_val + beta * (2.0 * d_val + beta * e_val)
    eta = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), zero)
    stats = {"s_proj": s_proj, "D": d_val, "E": e_val, "beta": beta, "eta": eta}
    if with_stats:
        gavg_f = aa_f.clamp(min=0).sqrt()
        stats["gavg_fisher"] = gavg_f
        stats["gdiff_fisher"] = torch.dot(gd * fisher, gd).clamp(min=0).sqrt()
        stats["parallel"] = s_proj.abs() * gavg_f
        stats["orthogonal"] = torch.dot(gp * fisher, gp).clamp(min=0).sqrt()
        # KL-norm split of g_comb (Eq. 21), Q = M^-1 F M^-1 (diagonal here): base + cross + orthogonal terms
        ga_mf = ga_m * fisher
        stats["kl_base"] = torch.dot(ga_m, ga_mf)
        stats["kl_cross"] = 2.0 * beta * torch.dot(gp_m, ga_mf)
        stats["kl_orth"] = beta * beta * torch.dot(gp_m, gp_m * fisher)
    step = torch.addcmul(ga_m, gp_m, beta).mul_(eta)  # Eq. 18 without eta_0 (the base step applies lr)
    return step.reshape(shape), stats


class FOP(KFAC):
    r"""Fisher-Orthogonal Projection on :class:`KFAC`: same hooks, factors, damping, KL clip and base step.

    Per preconditioned layer, from the two half-batch gradients g_1, g_2 (ALGORITHMS.md §4.1):
    g_avg = (g_1 + g_2)/2, g_diff = g_1 - g_2; s_proj = <g_diff, g_avg>_F / <g_avg, g_avg>_F;
    g_perp = g_diff - s_proj g_avg (F-orthogonal to g_avg); D = g_avg^T M^-1 g_perp, E = g_perp^T M^-1 g_perp,
    beta* = D/E; g_comb = g_avg + beta* g_perp; eta* = <g_tot, M^-1 g_comb> / <g_comb, M^-1 g_comb>; and the
    layer's preconditioned gradient becomes eta* M^-1 g_comb (KFAC's V is M^-1 g_avg). See
    :func:`fop_direction`.

    No extra backward: the KFAC hooks already see every example's input a_i and output gradient g_i, so the
    first-half gradient S_1 = sum_{i in H1} g_i a_bar_i^T (conv: ``conv2d_weight`` on the half) is captured
    during the ordinary backward, and S_2 = .grad - S_1. Cost over KFAC: one extra move of a (d_out, a_dim)
    matrix into the eigenbasis per layer and step; for a Linear whose half-batch has fewer rows than the
    matrix has rank, S_1 is kept as its row factors and moved at O(rows (d_out^2 + a_dim^2)) when that is
    cheaper. The hooks therefore capture S_1 on every training step (factors still only on the KFAC cadence),
    and never in ``model.eval()`` or under ``torch.no_grad()``. A KFAC loop becomes a FOP loop by changing only the constructor::

        optimizer = KFAC(model, lr=0.05, damping=1e-3)   # before
        optimizer = FOP(model, lr=0.05, damping=1e-3)    # after; the loop body is unchanged
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    Decisions on the open points (ALGORITHMS.md §4.3 and §6.1):

    * **Halves.** H1 = examples 0, 2, 4, ... and H2 = 1, 3, 5, ... of the batch (interleaved: robust to
      class-sorted batches and mirrors the even/odd ranks of the distributed scheme). g_k is the gradient of
      the loss "as if the batch were only H_k" (the per-half mean for a mean-reduced loss):
      g_k = (N/|H_k|) S_k. g_avg is ``.grad`` itself, which equals (g_1 + g_2)/2 for even N.
      **Odd N**: no example is dropped; |H1| = |H2| + 1, g_k are still per-half means and g_avg stays the
      full-batch gradient, which differs from (g_1 + g_2)/2 by O(1/N). **N = 1** (or no capture, e.g. the
      forward ran before the optimizer existed): g_diff = 0, which gives the KFAC direction.
    * **Assumption** that follows: ``.grad`` must be the unmodified sum of the captured backward passes
      (gradient accumulation is fine; clipping or unscaling ``.grad`` between backward and ``step()`` is not).
    * **g_tot in eta***: option ``eta_convention``: ``"avg"`` (default; eta* -> 1 is the full natural-gradient
      step the paper describes) or ``"sum"`` (g_1 + g_2, literal Eq. 8; twice as large, absorbed by lr).
    * **F in s_proj** is the *undamped* Kronecker Fisher A (x) G (Eq. 4 as written); M in D, E, eta* is the
      damped one KFAC uses (exact or factored-pi). Both come from the same (latest) eigendecomposition, so
      the projection and the line search use factors of the same age.
    * **Per layer**: s_proj, beta*, eta* are computed per layer (Algorithm 1 runs FOP per layer).
    * **Momentum, weight decay, KL clip**: eta* M^-1 g_comb takes the place of KFAC's V; the KL clip uses
      sum_l <d_l, g_avg_l> per group; then coupled weight decay and SGD momentum with base lr eta_0, exactly
      as KFAC (shared code). The paper leaves this open and says KFAC and FOP share LR schedules.
    * **Factors** are computed on the full batch (both halves), the same statistics KFAC uses.
    * **E ~ 0 guard**: beta* = 0 when E <= ``beta_guard`` * g_avg^T M^-1 g_avg (see
      :data:`DEFAULT_BETA_GUARD`), so g_1 = g_2 returns the pure KFAC direction with eta* = 1.
      <g_avg, g_avg>_F = 0 gives s_proj = 0; <g_comb, M^-1 g_comb> = 0 (zero gradient) gives eta* = 0.
    * **Other parameters** (not Linear/Conv2d) get the plain g_avg with SGD momentum (the paper used AdamW
      for them in its ViT run; use a separate optimizer for such groups if wanted).

    Distributed (world size > 1): the hooks capture each rank's full local gradient and one all-reduce of a
    two-slot buffer gives g_1 = mean of even ranks' local gradients and g_2 = mean of odd ranks'
    ("dual-gradient all-reduce"); g_avg = (g_1 + g_2)/2 then replaces ``.grad`` for the preconditioned
    layers (so they need no DDP all-reduce; other parameters still do). With an odd world size the two groups
    have different sizes and g_avg weights them equally. Every rank computes every layer (no
    curvature-specialist sharding). Factors are averaged as in KFAC.

    Introspection adds, per weight, 0-d ``g1_norm g2_norm gavg_norm gdiff_norm cos_g1_g2 gavg_fisher
    gdiff_fisher parallel orthogonal s_proj D E beta eta`` to KFAC's keys.

    Args:
        model, lr, **kwargs: as :class:`KFAC`.
        eta_convention: ``"avg"`` or ``"sum"`` (see above).
        beta_guard: relative threshold of the E ~ 0 guard (>= 0).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        *,
        eta_convention: Literal["avg", "sum"] = "avg",
        beta_guard: float = DEFAULT_BETA_GUARD,
        **kwargs: Any,
    ) -> None:
        if eta_convention not in ("avg", "sum"):
            raise ValueError(f"Invalid eta_convention: {eta_convention!r} (must be 'avg' or 'sum')")
        _check_real("beta_guard", beta_guard, low=0.0)
        extra = {"eta_convention": eta_convention, "beta_guard": beta_guard}
        super().__init__(model, lr, _extra_defaults=extra, **kwargs)
        self._pairs: dict[int, tuple[Any, ...]] = {}

    def _split_plan(self) -> str | None:
        return "all" if self._dist_active() else "first_half"

    def _prepare_directions(self, layers: list[KroneckerLayer]) -> None:
        """Record how each layer's half-batch gradients are formed this step."""
        self._pairs = {}
        if self._dist_active():
            self._dual_all_reduce(layers)
            return
        for lay in layers:
            n1, n = lay.n_first, lay.n_total
            if lay.has_split() and 0 < n1 < n:
                self._pairs[id(lay)] = ("half", n / n1, n / (n - n1))
            # otherwise g_diff = 0: the KFAC direction

    def _dual_all_reduce(self, layers: list[KroneckerLayer]) -> None:
        """g_1 (mean over even ranks) and g_2 (mean over odd ranks) from ONE signed all-reduce.

        Each rank sends ``+L_r / n_even`` (even ranks) or ``-L_r / n_odd`` (odd ranks) of its local
        gradient L_r, so the sum is D = g_1 - g_2: one gradient's worth of traffic (sending L_r into a
        (2, size) buffer, half zeros, sent twice that). The mean M = (S_even + S_odd) / W is the
        DDP-averaged ``.grad`` already on every rank, so S_odd = n_odd (M - n_even D / W),
        S_even = W M - S_odd, g_1 = S_even / n_even, g_2 = S_odd / n_odd.
        """
        group = self._process_group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n_even, n_odd = (world + 1) // 2, world // 2
        locals_: list[Tensor] = []
        means: list[Tensor] = []
        for lay in layers:
            raw = lay.grad_matrix()
            means.append(raw)
            # The captured sum over all local examples is the local gradient (of the local loss).
            locals_.append(lay.split_dense().to(raw.dtype) if lay.has_split() else torch.zeros_like(raw))
        if not locals_:
            return
        flat = torch.cat([t.reshape(-1) for t in locals_])
        flat *= (1.0 / n_even) if rank % 2 == 0 else (-1.0 / n_odd)
        dist.all_reduce(flat, group=group)
        sizes = [t.numel() for t in locals_]
        for lay, t, d, m in zip(layers, locals_, torch.split(flat, sizes), means):
            d = d.reshape(t.shape)
            s_odd = (m - d * (n_even / world)) * n_odd
            s_even = m * world - s_odd
            self._pairs[id(lay)] = ("pair", s_even / n_even, s_odd / n_odd)

    def _layer_direction(self, layer: KroneckerLayer, group: dict[str, Any], damping: float,
                         info: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
        st = self.state[layer.weight]
        qa, qg = st["QA"], st["QG"]
        entry = self._pairs.get(id(layer))
        if entry is not None and entry[0] == "pair":  # distributed: g_avg = (g_1 + g_2) / 2
            g1, g2 = entry[1], entry[2]
            raw = (g1 + g2) * 0.5
            ga = to_eigenbasis(raw, qa, qg)
            gd = to_eigenbasis(g1 - g2, qa, qg)
            g1_t, g2_t = ga + 0.5 * gd, ga - 0.5 * gd
        else:
            raw = layer.grad_matrix()
            ga = to_eigenbasis(raw, qa, qg)
            if entry is None:
                gd, g1_t, g2_t = torch.zeros_like(ga), ga, ga
            else:  # g_1 = c_1 S_1, g_2 = c_2 (grad - S_1), formed in the eigenbasis
                s1 = layer.split_in_eigenbasis(qa, qg)
                g1_t, g2_t = s1 * entry[1], (ga - s1) * entry[2]
                gd = g1_t - g2_t
        minv = self._inverse_curvature(layer, damping, group["factored_pi"])
        fisher = layer.cache.get("fisher")
        if fisher is None:  # cached alongside M^-1, so it is dropped with it when the eigenbasis changes
            fisher = layer.cache["fisher"] = torch.outer(st["dG"], st["dA"])
        step, stats = _fop_core(
            ga, gd, fisher, minv, eta_convention=group["eta_convention"], beta_guard=group["beta_guard"],
            with_stats=info is not None,
        )
        if info is not None:
            # Q_A, Q_G are orthogonal, so Frobenius norms and inner products are basis-independent.
            n1, n2 = g1_t.norm(), g2_t.norm()
            denom = n1 * n2
            info.update(
                g1_norm=n1, g2_norm=n2, gavg_norm=ga.norm(), gdiff_norm=gd.norm(),
                cos_g1_g2=torch.where(denom > 0, (g1_t * g2_t).sum() / torch.where(denom > 0, denom, 1.0),
                                      denom.new_zeros(())),
                **{k: t.detach() for k, t in stats.items()},
            )
        return raw, from_eigenbasis(step, qa, qg)
