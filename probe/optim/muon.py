"""Muon: momentum orthogonalized by Newton–Schulz (Keller Jordan et al., 2024).

torch ≥ 2.9 ships ``torch.optim.Muon``; this class reproduces its update (a test checks equality at
matching settings) and adds what the probe and real training need:

* **Batched Newton–Schulz.** Same-shape matrices of a group are stacked and orthogonalized by one
  batched matmul chain (``torch.optim.Muon`` runs one chain per matrix).
* **Hybrid groups.** Groups tagged ``use_muon=False`` (see :func:`probe.optim.hybrid_param_groups`)
  are stepped with bias-corrected AdamW, so one optimizer object covers the whole model and step
  hooks / ``state_dict`` work as usual.
* **Introspection** for ``probe.diagnostics`` (``introspect``, ``last_internals``; zero cost when off).
* **Non-finite guard** without host synchronisation (below).
* **Distributed**: round-robin ownership of replicated (DDP) matrices with ``distributed=True``, and
  FSDP2 row-sharded (DTensor Shard(0)) parameters handled automatically; see ``probe.optim._distributed``.

Update of a matrix parameter W (m×n, conv weights viewed as (C_out, C_in·kh·kw)), per step::

    M ← β·M + (1−β)·G                      (EMA momentum, torch/Keller form)
    U ← (1−β)·G + β·M  if nesterov else M
    O ← NS5(U)                              (probe.optim._orthogonalize.newton_schulz5)
    W ← W·(1 − η·λ) − η·s(m, n)·O

Decisions on ALGORITHMS.md ambiguities (§6.3):

* Scale rule ``adjust_lr_fn``: ``"original"`` (default) is Keller's s = √max(1, m/n) (update RMS
  1/√fan_in); ``"match_rms_adamw"`` is Moonlight's s = 0.2·√max(m, n) (RMS 0.2). The names are
  torch.optim.Muon's. Weight decay always uses the unadjusted η (as torch and Moonlight do).
* Conv weights: m, n are those of the flattened (C_out, C_in·kh·kw) matrix, not Keller's kh/kw of
  the 4-D grad (§1.5 calls that a quirk); so conv layers get the same RMS rule as linear layers.
* Unlike Keller's code the Nesterov blend is *not* written into ``p.grad``: the gradient a probe
  reads after ``step()`` is the raw gradient.
* Non-finite gradients: if a parameter's gradient contains NaN/Inf, that parameter's whole step is
  skipped (momentum, weights and weight decay untouched) and ``state["nonfinite_skips"]`` (0-d int64
  tensor) is incremented; it is also reported in ``last_internals`` as ``nonfinite_skips``. The test
  (finite ‖G‖_F, which also catches a norm that overflows — NS would return NaN for it) stays on the
  device as a mask: the gradient is zeroed with its momentum weight set to 0, and the mask is folded
  into the Newton–Schulz pre-normalisation so the skipped matrix's update is an exact 0. No host
  synchronisation, and no extra pass over the update.
* ``grad is None`` parameters are skipped entirely (no momentum decay, no weight decay), as in
  torch.optim. (Keller's distributed Muon substitutes zeros to keep ranks in step; our distributed
  path instead assumes every rank sees the same set of gradients, which DDP guarantees.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw as adamw_functional
from torch.optim.optimizer import Optimizer, ParamsT

from probe.optim._orthogonalize import (
    NS_COEFFICIENTS,
    NS_STEPS,
    ORTHOGONALIZER_NAME,
    default_ns_dtype,
    newton_schulz5,
    validate_ns_dtype,
)

if TYPE_CHECKING:
    from probe.optim._distributed import RowShard

__all__ = ["Muon", "muon_momentum_", "shape_scale", "ADJUST_LR_FNS", "WEIGHT_LAYOUTS"]

ADJUST_LR_FNS: tuple[str, ...] = ("original", "match_rms_adamw")
#: How a ``use_muon`` group's 2-D weights are stored: ``"out_in"`` (``nn.Linear``) or ``"in_out"``
#: (transformers' ``Conv1D``, GPT-2); Muon orthogonalizes the (out, in) matrix either way.
WEIGHT_LAYOUTS: tuple[str, ...] = ("out_in", "in_out")
#: Moonlight's "match AdamW" update RMS.
MATCH_RMS: float = 0.2


def shape_scale(rows: int, cols: int, adjust_lr_fn: str) -> float:
    """Multiplier applied to the orthogonalized update of a rows×cols matrix (see module doc)."""
    if adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return MATCH_RMS * math.sqrt(max(rows, cols))
    raise ValueError(f"Invalid adjust_lr_fn: {adjust_lr_fn!r} (must be one of {ADJUST_LR_FNS})")


def muon_momentum_(G: Tensor, bufs: list[Tensor], ok: Tensor, *, momentum: float, nesterov: bool) -> Tensor:
    """EMA momentum of a batch; overwrites the scratch stack ``G`` with the Newton–Schulz input U.

    Args:
        G: (B, m, n) stacked copy of the gradients (scratch; rows with ``ok == False`` may hold NaN/Inf).
        bufs: B momentum buffers (m, n), updated in place with foreach ops (untouched where ``ok`` is
            False: the gradient is zeroed and its lerp weight is 0, so M + 0·(0 − M) = M exactly).
        ok: (B,) bool, True where the gradient is finite.
        momentum: β.
        nesterov: U = (1−β)·G + β·M (torch/Keller's ``grad.lerp(buf, β)``) instead of U = M.

    Returns:
        ``G``, now holding U (finite wherever the buffers are finite).
    """
    G.masked_fill_(~ok.view(-1, 1, 1), 0.0)
    rows = list(G.unbind(0))
    torch._foreach_lerp_(bufs, rows, list((ok.to(G.dtype) * (1.0 - momentum)).unbind(0)))
    if nesterov:
        torch._foreach_lerp_(rows, bufs, momentum)
    else:
        torch._foreach_copy_(rows, bufs)
    return G


def _init_adamw_state(st: dict[str, Any], like: Tensor) -> None:
    """AdamW state of a non-matrix parameter (``like``: the parameter, or its local shard)."""
    if "step" not in st:
        st["step"] = torch.zeros((), dtype=torch.float32, device=like.device)
        st["exp_avg"] = torch.zeros_like(like, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(like, memory_format=torch.preserve_format)
        st["nonfinite_skips"] = torch.zeros((), dtype=torch.int64, device=like.device)


@dataclass
class _Bucket:
    """A same-shape bucket between :meth:`Muon._prepare_bucket` and :meth:`Muon._apply_bucket`."""

    params: list[Tensor]
    states: list[dict[str, Any]]
    U: Tensor  # (B, local_rows, cols) momentum update, the NS input
    ok: Tensor  # (B,) finite gradients
    rows: int
    cols: int
    local_rows: int
    in_out: bool
    shard: RowShard | None


def _matrix_view(t: Tensor, rows: int, cols: int, in_out: bool) -> Tensor:
    """A (rows, cols) = (out, in) view of a weight or buffer that shares its storage."""
    return t.mT if in_out else t.view(rows, cols)


def _check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value and (value <= 1.0 if closed_right else value < 1.0)
    if not ok:
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"Invalid {name}: {value} (must be in {bound})")


def _check_nonneg(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number >= 0)")


class Muon(Optimizer):
    """Muon for hidden matrices, with AdamW for the ``use_muon=False`` groups.

    Args:
        params: parameters or groups. Groups may carry ``use_muon`` (default True). In a
            ``use_muon`` group every parameter must have ≥ 2 dims; use
            :func:`probe.optim.hybrid_param_groups` to route the rest to AdamW.
        lr: learning rate η (default 0.02, Keller's). AdamW groups usually set their own.
        momentum: β of the EMA momentum (default 0.95).
        weight_decay: decoupled weight decay λ, applied as W ← W(1 − ηλ) (default 0).
        nesterov: use the Nesterov blend (default True).
        ns_steps: Newton–Schulz iterations (default 5).
        ns_coefficients: quintic coefficients (a, b, c) (default Keller's).
        ns_dtype: Newton–Schulz working dtype; ``None`` = bf16 on CUDA, float32 on CPU (float64
            for float64 parameters).
        adjust_lr_fn: ``"original"`` (√max(1, m/n), default) or ``"match_rms_adamw"`` (0.2·√max(m, n)).
        betas: AdamW (β₁, β₂) for ``use_muon=False`` groups (default (0.9, 0.95), Keller's aux Adam).
        eps: AdamW ε for ``use_muon=False`` groups (default 1e-10, Keller's aux Adam).
        introspect: fill :attr:`last_internals` on each step (default False).
        distributed: round-robin the matrices over the ranks of ``process_group`` (torch.distributed
            must be initialised; gradients must already be averaged, e.g. by DDP). Default False.
        process_group: process group for ``distributed`` (default: the world group). With
            ``distributed`` and ``introspect``, rank 0 of the group reports every matrix's internals
            and the other ranks none (see ``probe.optim._distributed``). FSDP2 row-sharded parameters
            likewise: rank 0 of their mesh reports each whole matrix (NorMuon's ``v`` and Ô included).

    Attributes:
        orthogonalizer: ``"newton_schulz5"``, recorded by the probe.
        introspect: when True, ``step()`` stores per-parameter ``pre_orth`` (the 2-D Newton–Schulz
            input U), ``post_orth`` (its output O, before the shape scale) and ``nonfinite_skips``
            in :attr:`last_internals` (detached views, on the parameter's device).
        last_internals: ``{param: {key: tensor}}`` of the last introspected step.
        last_global_internals: ``{}`` for the Muon family (the orthogonalizer is a class attribute).

    Example:
        >>> # xdoctest: +SKIP
        >>> opt = Muon(hybrid_param_groups(model), lr=0.02)
        >>> loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    """

    orthogonalizer: str = ORTHOGONALIZER_NAME

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_dtype: torch.dtype | None = None,
        adjust_lr_fn: str = "original",
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-10,
        *,
        introspect: bool = False,
        distributed: bool = False,
        process_group: Any = None,
        _extra_defaults: dict[str, Any] | None = None,
    ) -> None:
        defaults = dict(
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
            use_muon=True,
            weight_layout="out_in",
            **(_extra_defaults or {}),  # subclasses' hyperparameters; not **kwargs, so typos raise
        )
        self._validate_group(defaults, params=())
        self.introspect: bool = introspect
        self.last_internals: dict[Tensor, dict[str, Tensor]] = {}
        self.last_global_internals: dict[str, Tensor] = {}
        self.distributed = distributed
        self.process_group = process_group
        if distributed:
            from probe.optim._distributed import check_initialized

            check_initialized(process_group)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ validation
    def _validate_group(self, group: dict[str, Any], params: Iterable[Tensor]) -> None:
        """Raise ValueError naming the first invalid hyperparameter (or 1-D Muon parameter)."""
        _check_nonneg("lr", group["lr"])
        _check_nonneg("weight_decay", group["weight_decay"])
        _check_unit_interval("momentum", group["momentum"])
        ns_steps = group["ns_steps"]
        if not (isinstance(ns_steps, int) and not isinstance(ns_steps, bool) and 1 <= ns_steps <= 100):
            raise ValueError(f"Invalid ns_steps: {ns_steps} (must be an int in [1, 100])")
        coeffs = group["ns_coefficients"]
        if not (isinstance(coeffs, (tuple, list)) and len(coeffs) == 3 and all(isinstance(c, (int, float)) for c in coeffs)):
            raise ValueError(f"Invalid ns_coefficients: {coeffs} (must be a tuple of 3 floats (a, b, c))")
        validate_ns_dtype(group["ns_dtype"])
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(f"Invalid adjust_lr_fn: {group['adjust_lr_fn']!r} (must be one of {ADJUST_LR_FNS})")
        if not isinstance(group["nesterov"], bool):
            raise ValueError(f"Invalid nesterov: {group['nesterov']} (must be a bool)")
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: {betas} (must be a pair (beta1, beta2))")
        _check_unit_interval("betas[0]", betas[0])
        _check_unit_interval("betas[1]", betas[1])
        _check_nonneg("eps", group["eps"])
        layout = group.get("weight_layout", "out_in")
        if layout not in WEIGHT_LAYOUTS:
            raise ValueError(f"Invalid weight_layout: {layout!r} (must be one of {WEIGHT_LAYOUTS})")
        if group["use_muon"]:
            for p in params:
                if layout == "in_out" and p.ndim != 2:
                    raise ValueError(
                        f"Invalid weight_layout: 'in_out' needs 2-D (in, out) weights, got shape {tuple(p.shape)}"
                    )
                if p.ndim < 2:
                    raise ValueError(
                        f"{type(self).__name__} got a {p.ndim}-D parameter of shape {tuple(p.shape)} in a use_muon group; "
                        "matrix optimizers need >= 2-D weights. Route it to AdamW: put it in a group with "
                        "use_muon=False, e.g. with probe.optim.hybrid_param_groups(model)."
                    )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its hyperparameters and (for ``use_muon``) parameter shapes."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group, group["params"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Checkpoints from before a hyperparameter existed load with the default.
        for group in self.param_groups:
            group.setdefault("use_muon", True)
            group.setdefault("adjust_lr_fn", "original")
            group.setdefault("ns_dtype", None)
            group.setdefault("weight_layout", "out_in")
        self.__dict__.setdefault("introspect", False)
        self.__dict__.setdefault("last_internals", {})
        self.__dict__.setdefault("last_global_internals", {})
        self.__dict__.setdefault("distributed", False)
        self.__dict__.setdefault("process_group", None)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; re-evaluates ``closure`` with grad enabled if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.introspect:
            self.last_internals = {}
        for group in self.param_groups:
            if group["use_muon"]:
                self._step_matrices(group)
            else:
                self._step_adamw(group)
        return loss

    def _step_matrices(self, group: dict[str, Any]) -> None:
        buckets: dict[tuple[Any, ...], list[Tensor]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            buckets.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
        from probe.optim._distributed import is_dtensor, row_shard_of, step_buckets_round_robin

        replicated = [ps for ps in buckets.values() if not is_dtensor(ps[0])]
        for params in buckets.values():
            if is_dtensor(params[0]):  # FSDP2 / DTensor row shards: always collective
                self._update_bucket(group, params, row_shard_of(params))
        if self.distributed:
            step_buckets_round_robin(self, group, replicated, self.process_group)
        else:
            for params in replicated:
                self._update_bucket(group, params)

    def _update_bucket(self, group: dict[str, Any], params: Sequence[Tensor], shard: RowShard | None = None) -> None:
        """Apply the full update to a list of same-shape parameters (one batched NS).

        ``shard`` (from :func:`probe.optim._distributed.row_shard_of`) describes DTensor parameters
        sharded on dim 0 (FSDP2): momentum, v and the weight update then act on this rank's rows, the
        NS input is all-gathered and each rank orthogonalizes its round-robin share of whole matrices
        (results all-gathered), and the finiteness test and NorMuon's Frobenius norms are all-reduced,
        so the result equals the unsharded update. DDP round-robin uses the same three phases
        (:meth:`_prepare_bucket`, NS, :meth:`_apply_bucket`) with one gather of the NS outputs in between.
        """
        work = self._prepare_bucket(group, params, shard)
        U_full = work.U if shard is None else shard.gather_rows(work.U)
        ns = self._ns(group, work.U)
        O_full = ns(U_full, work.ok) if shard is None else shard.orthogonalize(U_full, work.ok, ns)
        O = O_full if shard is None else O_full[:, shard.start : shard.start + work.local_rows]
        # Every rank holds the whole U and O of every matrix here, but only rank 0 of the mesh reports them
        # (with the whole-matrix row statistics that :meth:`_direction` assembles), so a run shared by all
        # ranks (``log_all_ranks``) stores each matrix once, under its own key, as under DDP.
        reports = shard is None or shard.rank == 0
        introspected = {i: (U_full[i], O_full[i]) for i in range(len(params))} if reports else {}
        self._apply_bucket(group, work, O, introspected)

    def _ns(self, group: dict[str, Any], U: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """The group's batched Newton–Schulz (its working dtype: ``ns_dtype`` or the device default)."""
        ns_dtype = group["ns_dtype"] or default_ns_dtype(U.device, U.dtype)

        def ns(U_batch: Tensor, keep: Tensor) -> Tensor:
            return newton_schulz5(
                U_batch, steps=group["ns_steps"], coefficients=tuple(group["ns_coefficients"]), dtype=ns_dtype, keep=keep
            )

        return ns

    def _prepare_bucket(self, group: dict[str, Any], params: Sequence[Tensor], shard: RowShard | None = None) -> _Bucket:
        """State init, finiteness test, momentum and skip counters of a same-shape bucket -> the NS input."""
        p0 = params[0]
        in_out = group.get("weight_layout", "out_in") == "in_out"
        if in_out and (p0.ndim != 2 or shard is not None):
            raise NotImplementedError(
                f"weight_layout='in_out' needs plain 2-D (in, out) weights; got shape {tuple(p0.shape)}"
                f"{' sharded as a DTensor' if shard is not None else ''}"
            )
        # Orient every matrix as (out, in): NorMuon's v is per output neuron and the shape scale uses
        # (out, in), also for weights stored (in, out) like transformers' Conv1D.
        rows, cols = (p0.shape[1], p0.shape[0]) if in_out else (p0.shape[0], math.prod(p0.shape[1:]))
        local_rows = rows if shard is None else shard.local_rows
        local = (lambda t: t) if shard is None else shard.local  # noqa: E731
        states = [self.state[p] for p in params]
        for p, st in zip(params, states):
            if "momentum_buffer" not in st:
                like = local(p)
                st["momentum_buffer"] = torch.zeros_like(like, memory_format=torch.contiguous_format)
                st["nonfinite_skips"] = torch.zeros((), dtype=torch.int64, device=like.device)
                self._init_extra_state(like, st, local_rows, cols)
        bufs = [_matrix_view(st["momentum_buffer"], local_rows, cols, in_out) for st in states]

        grads = [local(p.grad) for p in params]  # type: ignore[arg-type]
        # reshape, not view: a channels_last gradient is not viewable as (rows, cols); stack copies anyway
        G = torch.stack([g.mT if in_out else g.reshape(local_rows, cols) for g in grads])
        # Finite ‖G‖_F ⇔ all entries finite (or the norm overflows, in which case NS would give NaN).
        norms = torch.linalg.vector_norm(G, dim=(-2, -1))
        ok = torch.isfinite(norms if shard is None else shard.reduce_sum(norms.square()))
        U = muon_momentum_(G, bufs, ok, momentum=group["momentum"], nesterov=group["nesterov"])
        torch._foreach_add_([st["nonfinite_skips"] for st in states], list((~ok).to(torch.int64).unbind(0)))
        return _Bucket(list(params), states, U, ok, rows, cols, local_rows, in_out, shard)

    def _apply_bucket(self, group: dict[str, Any], work: _Bucket, O: Tensor,
                      introspected: dict[int, tuple[Tensor, Tensor]]) -> None:
        """Direction from the NS outputs ``O`` (this rank's rows), weight decay and the weight update.

        ``introspected`` maps a position in the bucket to its (NS input, NS output) for ``last_internals``.
        """
        params, states, ok, shard = work.params, work.states, work.ok, work.shard
        rows, cols, local_rows, in_out = work.rows, work.cols, work.local_rows, work.in_out
        local = (lambda t: t) if shard is None else shard.local  # noqa: E731
        D, row_factor, scale, extra = self._direction(group, params, states, O, ok, rows, cols, shard=shard)

        # Weights whose layout has no (rows, cols) view (channels_last convs) are updated in a
        # contiguous copy that is written back with copy_, which keeps the parameter's own layout.
        mats: list[Tensor] = []
        write_back: list[tuple[Tensor, Tensor]] = []
        for p in params:
            w = local(p)
            if in_out or w.is_contiguous():
                mats.append(_matrix_view(w, local_rows, cols, in_out))
            else:
                tmp = w.reshape(local_rows, cols)
                mats.append(tmp)
                write_back.append((w, tmp))
        lr = group["lr"]
        wd = group["weight_decay"]
        if wd != 0.0:
            torch._foreach_mul_(mats, list((1.0 - ok.to(mats[0].dtype) * (lr * wd)).unbind(0)))
        # One fused pass like torch's ``param.add_(update, alpha=-lr·scale)``; a bf16 D is promoted.
        if row_factor is None:
            torch._foreach_add_(mats, list(D.unbind(0)), alpha=-lr * scale)
        else:
            torch._foreach_addcmul_(mats, list(D.unbind(0)), list(row_factor.unbind(0)), value=-lr * scale)
        for w, tmp in write_back:
            w.copy_(tmp.view(w.shape))

        if self.introspect:
            for i, (pre, post) in introspected.items():
                p, st = params[i], states[i]
                entry = {"pre_orth": pre, "post_orth": post, "nonfinite_skips": st["nonfinite_skips"].clone()}
                entry.update(self._extra_internals(i, post, extra))
                self.last_internals[p] = entry

    # Hooks that NorMuon overrides ------------------------------------------------
    def _init_extra_state(self, p: Tensor, state: dict[str, Any], rows: int, cols: int) -> None:
        """Create algorithm-specific state (Muon has none beyond momentum)."""

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
        """Update direction: (D, row_factor, scale, extra) with update = −η·scale·D·row_factor.

        ``row_factor`` is None (Muon) or a (B, m, 1) per-row multiplier (NorMuon) fused into the weight
        update; ``extra`` holds what :meth:`_extra_internals` needs for introspection, for the WHOLE
        matrices (also when ``O`` is a row shard), and must be cheap to return when nobody reads it.

        ``O`` may be this rank's row shard of the NS outputs (row-sharded parameters, ``shard`` given):
        then ``rows`` is the full row count, and any communication must happen on every step whatever
        ``introspect`` says (it is set per rank: a collective that depended on it could deadlock).
        """
        return O, None, shape_scale(rows, cols, group["adjust_lr_fn"]), {}

    def _extra_internals(self, index: int, post: Tensor, extra: dict[str, Tensor]) -> dict[str, Tensor]:
        """Algorithm-specific ``last_internals`` of matrix ``index`` of a bucket (whole NS output ``post``;
        ``extra`` from :meth:`_direction`). Muon has none."""
        return {}

    # ------------------------------------------------------------------ AdamW groups
    def _step_adamw(self, group: dict[str, Any]) -> None:
        """Bias-corrected AdamW through torch's fused kernel (``torch._fused_adamw_``), per device/dtype.

        One fused multi-tensor launch per (device, dtype) bucket instead of ~20 kernels per parameter
        (GPT-2: 101 parameters), with the same formula as ``torch.optim.AdamW`` (its fused path).
        Non-finite guard without a host sync: per-parameter ‖g‖ (one ``_foreach_norm``) gives each
        parameter's flag, counted in its ``nonfinite_skips``; any flag in the bucket is passed as the
        kernel's ``found_inf``, so that bucket's AdamW step is skipped whole (weights, moments and step
        count untouched) -- GradScaler's rule rather than skipping only the offending parameter.
        DTensor parameters keep the per-parameter path (their flags are all-reduced over the mesh).
        """
        from probe.optim._distributed import is_dtensor

        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if p.grad.is_sparse:  # type: ignore[union-attr]
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if any(is_dtensor(p) for p in params):
            self._step_adamw_per_param(group)
            return
        beta1, beta2 = group["betas"]
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:
            _init_adamw_state(self.state[p], p)
            buckets.setdefault((p.device, p.dtype), []).append(p)
        for bucket in buckets.values():
            states = [self.state[p] for p in bucket]
            grads = [p.grad for p in bucket]
            bad = ~torch.isfinite(torch.stack(torch._foreach_norm(grads)))  # type: ignore[arg-type]
            torch._foreach_add_([st["nonfinite_skips"] for st in states], list(bad.to(torch.int64).unbind(0)))
            adamw_functional(
                bucket, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], [],  # type: ignore[arg-type]
                [st["step"] for st in states], fused=True, found_inf=bad.any().to(torch.float32),
                amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=False,
            )

    def _step_adamw_per_param(self, group: dict[str, Any]) -> None:
        """Bias-corrected AdamW one parameter at a time, with a per-parameter non-finite skip.

        Used for DTensor parameters: AdamW is elementwise, so a DTensor parameter (any sharding) is
        stepped on its local tensor; only the finiteness test is all-reduced over the mesh so all
        shards skip together -- one bucketed all-reduce of every parameter's flag per mesh (and mesh
        dimension), not one per parameter (GPT-2 under FSDP2: ~100 collectives per step before).
        """
        from probe.optim._distributed import any_nonfinite_across_mesh, is_dtensor

        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        items: list[tuple[Tensor, Tensor, Tensor, dict[str, Any], Tensor]] = []
        by_mesh: dict[int, list[int]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            sharded = is_dtensor(p)
            w = p.to_local() if sharded else p
            grad = p.grad.to_local() if sharded else p.grad
            st = self.state[p]
            _init_adamw_state(st, w)
            if sharded:
                by_mesh.setdefault(id(p.device_mesh), []).append(len(items))
            items.append((p, w, grad, st, torch.isfinite(grad).all()))
        for idx in by_mesh.values():
            anchor = items[idx[0]][0]
            bad = any_nonfinite_across_mesh(torch.stack([~items[i][4] for i in idx]), anchor)
            for j, i in enumerate(idx):
                items[i] = (*items[i][:4], ~bad[j])
        for _p, w, grad, st, ok in items:
            okf = ok.to(w.dtype)
            g = torch.where(ok, grad, 0.0)
            st["step"].add_(ok.to(torch.float32))
            st["nonfinite_skips"].add_((~ok).to(torch.int64))
            st["exp_avg"].lerp_(g, okf * (1.0 - beta1))
            st["exp_avg_sq"].mul_(1.0 - okf * (1.0 - beta2)).addcmul_(g, g, value=1.0 - beta2)
            t = st["step"].clamp(min=1.0)  # a never-stepped parameter has t = 0; its update is masked anyway
            bc1 = 1.0 - torch.pow(beta1, t)
            bc2 = 1.0 - torch.pow(beta2, t)
            denom = (st["exp_avg_sq"].sqrt() / bc2.sqrt().to(w.dtype)).add_(eps)  # torch.optim.AdamW's grouping
            if wd != 0.0:
                w.mul_(1.0 - okf * (lr * wd))
            w.sub_(st["exp_avg"] / denom * (okf * lr / bc1.to(w.dtype)))
