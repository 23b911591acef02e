"""K-FAC (Martens & Grosse 2015; KFC for convs, Grosse & Martens 2016) as a ``torch.optim.Optimizer``.

Shape follows gpauloski/kfac-pytorch: module hooks capture Kronecker statistics, ``step()`` rewrites
``.grad`` of every preconditioned layer with the natural-gradient direction, then an SGD-momentum base
step runs -- all inside one Optimizer subclass so ``register_step_pre_hook``/``post_hook`` observe it.
The specification is ALGORITHMS.md §3; :mod:`probe.optim.fop` subclasses this class.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.optimizer import Optimizer, ParamsT
from torch.utils.hooks import RemovableHandle

from probe.optim._batched_eigh import batched_eigh
from probe.optim._kfac_factors import (
    KroneckerLayer,
    eigen_denominator,
    factored_pi,
    from_eigenbasis,
    kfac_precondition,
    kl_clip_factor,
    supports_module,
    to_eigenbasis,
)

__all__ = ["KFAC", "kfac_precondition", "kl_clip_factor", "eigen_denominator", "factored_pi", "DEFAULT_MAX_FACTOR_DIM"]

#: Largest Kronecker factor side preconditioned by default. A 4096-wide fp32 factor is 64 MiB (its
#: eigenbasis as much again) and one eigh takes well under a second on a GPU; GPT-2 small's largest
#: factors are 3,072 (MLP) and 3,073 (MLP input with bias), so every block is preconditioned while its
#: 50,257-wide vocabulary head (a 10 GB factor) is not.
DEFAULT_MAX_FACTOR_DIM: int = 4096

#: A hyperparameter that may change with the step count (kfac-pytorch style).
FloatOrSchedule = float | Callable[[int], float]
IntOrSchedule = int | Callable[[int], int]


def _resolve(value: Any, step: int) -> Any:
    return value(step) if callable(value) else value


def _check_real(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False,
                high_open: bool = False, allow_callable: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` and ``value`` unless ``value`` lies in the interval."""
    if allow_callable and callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (must be a real number"
                         f"{' or a Callable[[int], float]' if allow_callable else ''})")
    v = float(value)
    lo_ok = v > low if low_open else v >= low
    hi_ok = v < high if high_open else v <= high
    if not math.isfinite(v) or not (lo_ok and hi_ok):
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"Invalid {name}: {value} (must be in {lb}{low}, {high}{rb})")


def _all_finite(tensors: list[Tensor]) -> Tensor:
    """0-d bool on the device: every entry of every tensor is finite. No host sync.

    A float32 sum per tensor is non-finite iff some entry is (inf - inf = nan), up to overflow of the sum
    itself, which only flags sums beyond ~3e38 as bad; it avoids one boolean temporary per tensor.
    """
    sums = torch.stack([t.sum(dtype=torch.float32) for t in tensors])
    return torch.isfinite(sums.sum())


@contextlib.contextmanager
def _tf32_matmuls(enabled: bool) -> Iterator[None]:
    """Allow TF32 for CUDA fp32 matmuls inside the block only (restored afterwards); no effect on CPU."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _check_interval(name: str, value: Any) -> None:
    if callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an int >= 1 or a Callable[[int], int])")


class KFAC(Optimizer):
    r"""K-FAC with eigendecomposed Kronecker factors, exact Tikhonov damping, KL clipping and SGD momentum.

    For every ``nn.Linear``, transformers' ``Conv1D`` (GPT-2's (in, out) weights) and ``nn.Conv2d``
    (groups=1, zero padding) of ``model`` the layer's Fisher block is approximated by :math:`A \otimes G`
    (A: input/patch second moment with a homogeneous coordinate for the bias, G: output-gradient second
    moment). Each step:

    1. On factor-update steps (every ``factor_update_interval``), the statistics captured by the hooks
       during the preceding forward/backward update ``A, G`` by an EMA,
       ``F <- factor_decay * F + (1 - factor_decay) * F_hat`` (both start at I).
    2. On inverse-update steps (every ``inv_update_interval``, and the first time), ``A`` and ``G`` are
       eigendecomposed; eigenvalues are clamped at 0.
    3. ``V = Q_G[(Q_G^T grad Q_A) / (lambda_G lambda_A^T + damping)]Q_A^T`` -- *exactly*
       :math:`(A\otimes G + \gamma I)^{-1}\,\mathrm{vec}(\nabla W)` (ALGORITHMS.md P12). With
       ``factored_pi=True`` the denominator is
       :math:`(\lambda_G + \sqrt\gamma/\pi)(\lambda_A + \pi\sqrt\gamma)`
       instead (Martens & Grosse §6.3): a different preconditioner, not an approximation of the exact one.
       Damping is applied at preconditioning time, so a damping schedule acts immediately.
    4. KL clipping per parameter group: :math:`\nu = \min(1, \sqrt{\kappa / (\eta^2 \sum_\ell \langle V_\ell,
       \nabla W_\ell\rangle)})`, and ``nu = 1`` when the sum is <= 0 or non-finite (alecwangcq divides by zero
       there). ``.grad`` of weight and bias is overwritten with ``nu * V``.
    5. SGD base step on every parameter (preconditioned or not): ``d = grad + weight_decay * p``,
       ``buf = momentum * buf + d`` (first step: ``buf = d``), ``p -= lr * buf``. Parameters of other
       modules (norms, embeddings, grouped convs) therefore get the plain gradient with momentum.

    Fisher convention: G is built from per-example gradients of the *summed* loss (the empirical Fisher,
    using the training labels, as the PyTorch KFAC repos do; ASDL's MC "true" Fisher is not implemented).
    With ``loss_reduction="mean"`` (default) the captured output gradients are multiplied by the batch size
    N to undo the mean. For conv (and Linear over extra dims) A averages over all rows (example x location)
    and G sums over locations and averages over examples; see :mod:`probe.optim._kfac_factors`.

    Hooks capture only on factor-update steps (and, in FOP, every step) and never in ``model.eval()`` or under
    ``torch.no_grad()``, so evaluation forwards neither cost anything nor pollute the factors. Several
    forward/backward passes before one ``step()`` accumulate (gradient accumulation: with
    ``loss_reduction="mean"`` the loss is taken to be the mean over every example since the last step, i.e.
    each micro-batch's mean loss divided by the number of micro-batches). Activations in half precision
    (autocast) are accumulated in the weight's dtype. ``remove_hooks()`` detaches the hooks; a
    ``copy.deepcopy`` of the model carries inert copies of them.

    Non-finite values: a factor update whose statistics are non-finite (or that happens while any gradient
    is non-finite) is dropped for that layer, so factors stay finite. If any resulting update direction is
    non-finite, the whole step is skipped on the device -- weights and momentum buffers stay unchanged, no
    host sync -- and :attr:`nonfinite_skips` (a 0-d tensor) counts it. ``.grad`` is left as computed.

    Distributed (``torch.distributed`` initialised, world size > 1): captured factor statistics are
    averaged across ranks with one all-reduce per factor update, so every rank holds identical factors and
    computes the same eigendecompositions (no KAISA layer assignment). Gradients are expected to be averaged
    already (DDP). Assumes equal local batch sizes.

    Introspection: with ``introspect = True`` each step fills ``last_internals[weight]`` with 0-d
    ``A_eig_min A_eig_max A_eig_mean G_eig_min G_eig_max G_eig_mean damping pi`` (pi is reported even when
    exact damping is used)
    and, on steps that refreshed the eigendecomposition, 1-D ``A_eigs``/``G_eigs``; and
    ``last_global_internals["kl_nu"]`` (the smallest nu over groups). No ``.item()`` is called in ``step()``.

    Args:
        model: the module whose Linear/Conv2d layers are preconditioned.
        lr: base learning rate (also used by KL clipping).
        params: parameters or groups to optimise; default ``model.parameters()``. Layers whose weight is
            not among them are not hooked.
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 weight decay, added to the preconditioned gradient (coupled, as in SGD).
        damping: Tikhonov damping gamma > 0, or a ``Callable[[int], float]`` of the step count.
        factor_decay: EMA decay of the factors in [0, 1).
        kl_clip: KL trust-region size kappa > 0, or ``None`` to disable clipping.
        factor_update_interval: steps between factor updates (int >= 1 or callable of the step).
        inv_update_interval: steps between eigendecompositions (int >= 1 or callable of the step).
        factored_pi: use factored-pi Tikhonov damping instead of exact damping.
        loss_reduction: ``"mean"`` or ``"sum"``: how the training loss reduces over the batch (scales G).
        distributed: ``None`` = all-reduce factors when ``torch.distributed`` is initialised with world size
            > 1; ``False`` = never.
        process_group: process group for the collectives (default: the world group).
        max_factor_dim: layers whose larger factor side (``in_features`` + bias or ``out_features``) exceeds
            this are not preconditioned (default :data:`DEFAULT_MAX_FACTOR_DIM` = 4096; ``None``: no cap).
            A vocabulary head (GPT-2: 50,257) would need a 10 GB factor and an eigh that does not finish.
            Such layers, and the excluded ones, are stepped by the SGD-momentum base step with
            their plain gradient, listed in :attr:`skipped_layers` and announced once in :attr:`events`.
        exclude: module names (``fnmatch`` patterns, e.g. ``"lm_head"`` or ``"*.attn.*"``) not to
            precondition; a pattern that matches no module raises ``ValueError``.
        factor_dtype: dtype of the statistics, factors and eigenbases; ``None`` (default) = float32 for
            bf16/fp16/fp32 weights and float64 for float64 weights. Gradients are preconditioned in this
            dtype and written back in the parameter's dtype.
        tf32: allow TF32 tensor cores for the CUDA fp32 factor and projection matmuls (hooks and
            ``step()``). Default ``False``: exact fp32 (TF32 rounds inputs to a 10-bit mantissa, ~1e-3
            relative error per product). No effect on CPU.

    Events: :attr:`events` is a list of dicts (``key``, ``message``, ``layer``, ``step``) that the
    caller (the probe) may drain and log: ``kfac_layer_skipped`` once per skipped layer at construction,
    ``kfac_eigh_failed`` when a refresh kept a layer's previous eigenbasis because eigh raised.

    Hyperparameters live in ``param_groups`` and are read inside ``step()``, so LR (or damping)
    schedulers work. The cadence (intervals) and ``loss_reduction`` are read from the first group.

    Example::

        model = Net()
        optimizer = KFAC(model, lr=0.05, momentum=0.9, damping=1e-3)
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()

    References:
        Martens & Grosse, arXiv 1503.05671; Grosse & Martens, arXiv 1602.01407; Ba et al. 2017 (KL clip);
        gpauloski/kfac-pytorch; alecwangcq/KFAC-Pytorch.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        *,
        params: ParamsT | None = None,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        damping: FloatOrSchedule = 1e-3,
        factor_decay: float = 0.95,
        kl_clip: float | None = 1e-3,
        factor_update_interval: IntOrSchedule = 10,
        inv_update_interval: IntOrSchedule = 100,
        factored_pi: bool = False,
        loss_reduction: Literal["mean", "sum"] = "mean",
        distributed: bool | None = None,
        process_group: Any = None,
        max_factor_dim: int | None = DEFAULT_MAX_FACTOR_DIM,
        exclude: Iterable[str] = (),
        factor_dtype: torch.dtype | None = None,
        tf32: bool = False,
        _extra_defaults: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module)")
        _check_real("lr", lr, low=0.0)
        _check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        _check_real("weight_decay", weight_decay, low=0.0)
        _check_real("damping", damping, low=0.0, low_open=True, allow_callable=True)
        _check_real("factor_decay", factor_decay, low=0.0, high=1.0, high_open=True)
        if kl_clip is not None:
            _check_real("kl_clip", kl_clip, low=0.0, low_open=True)
        _check_interval("factor_update_interval", factor_update_interval)
        _check_interval("inv_update_interval", inv_update_interval)
        if not isinstance(factored_pi, bool):
            raise ValueError(f"Invalid factored_pi: {factored_pi!r} (must be a bool)")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid loss_reduction: {loss_reduction!r} (must be 'mean' or 'sum')")
        if distributed not in (None, False, True):
            raise ValueError(f"Invalid distributed: {distributed!r} (must be None, True or False)")
        if max_factor_dim is not None and (isinstance(max_factor_dim, bool) or not isinstance(max_factor_dim, int)
                                           or max_factor_dim < 1):
            raise ValueError(f"Invalid max_factor_dim: {max_factor_dim!r} (must be an int >= 1 or None)")
        if isinstance(exclude, str):
            exclude = (exclude,)
        exclude = tuple(exclude)
        if not all(isinstance(e, str) for e in exclude):
            raise ValueError(f"Invalid exclude: {exclude!r} (must be module names or fnmatch patterns)")
        if factor_dtype is not None and (not isinstance(factor_dtype, torch.dtype) or not factor_dtype.is_floating_point
                                         or factor_dtype.itemsize < 4):
            raise ValueError(f"Invalid factor_dtype: {factor_dtype!r} (must be torch.float32, torch.float64 or None)")
        if not isinstance(tf32, bool):
            raise ValueError(f"Invalid tf32: {tf32!r} (must be a bool)")
        defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, damping=damping, factor_decay=factor_decay,
            kl_clip=kl_clip, factor_update_interval=factor_update_interval,
            inv_update_interval=inv_update_interval, factored_pi=factored_pi, loss_reduction=loss_reduction,
            **(_extra_defaults or {}),  # subclass hyperparameters (FOP), validated by the subclass
        )
        super().__init__(model.parameters() if params is None else params, defaults)
        self.introspect: bool = False
        self.last_internals: dict[Tensor, dict[str, Tensor]] = {}
        self.last_global_internals: dict[str, Tensor] = {}
        self.nonfinite_skips: Tensor = torch.zeros((), dtype=torch.int64)
        self._distributed = distributed
        self._process_group = process_group
        self._steps = 0
        self._layers: list[KroneckerLayer] = []
        self._handles: list[RemovableHandle] = []
        self._tf32 = tf32
        self._nus: list[Tensor] = []
        #: Matrix layers that are not preconditioned (too large, excluded, unsupported), by name, with the reason.
        self.skipped_layers: dict[str, str] = {}
        #: Pending events for the probe (see the class docstring); the caller may clear the list.
        self.events: list[dict[str, Any]] = []
        optimised = {id(p) for g in self.param_groups for p in g["params"]}
        names = [name for name, _ in model.named_modules()]
        for pattern in exclude:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ValueError(f"Invalid exclude: {pattern!r} matches no module of the model")
        # nn.MultiheadAttention uses out_proj.weight inside F.multi_head_attention_forward, never calling
        # out_proj's forward: its hooks would not fire and its "factors" would stay the identity.
        mha_out = {f"{name}.out_proj" for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
        for name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None \
                    and id(module.in_proj_weight) in optimised:
                self._skip(name, "nn.MultiheadAttention's packed in_proj_weight has no hookable forward")
            weight = getattr(module, "weight", None)
            if not (isinstance(weight, Tensor) and id(weight) in optimised):
                continue
            if name in mha_out:
                self._skip(name, "nn.MultiheadAttention's out_proj is applied without its forward (no hooks)")
                continue
            if not supports_module(module):
                # A conv KFAC has no factors for (Conv1d/Conv3d, grouped, padding modes): say so, never
                # silently SGD. Embeddings and norms take the SGD step by design (see above).
                if isinstance(module, nn.modules.conv._ConvNd):
                    self._skip(name, f"{type(module).__name__} is not supported (Linear, Conv1D and Conv2d are)")
                continue
            w = module.weight
            dtype = factor_dtype or torch.promote_types(w.dtype, torch.float32)
            layer = KroneckerLayer(name, module, factor_dtype=dtype)
            reason = None
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
                reason = "excluded"
            elif max_factor_dim is not None and layer.max_dim() > max_factor_dim:
                reason = f"factor dimension {layer.max_dim()} > max_factor_dim {max_factor_dim}"
            if reason is not None:
                self._skip(name, reason)
                continue
            self._layers.append(layer)
            self._handles.append(module.register_forward_hook(self._make_forward_hook(layer)))

    def _skip(self, name: str, reason: str) -> None:
        """Record a layer that is not preconditioned (once, at construction)."""
        self.skipped_layers[name] = reason
        self.events.append({
            "key": "kfac_layer_skipped", "layer": name, "step": 0,
            "message": f"{type(self).__name__} does not precondition {name!r} ({reason}); "
                       "it takes the SGD-momentum step with its plain gradient",
        })

    # ------------------------------------------------------------------ public helpers
    @property
    def steps(self) -> int:
        """Number of completed ``step()`` calls (drives the factor/inverse cadence)."""
        return self._steps

    @property
    def layers(self) -> list[str]:
        """Names of the preconditioned modules."""
        return [layer.name for layer in self._layers]

    def remove_hooks(self) -> None:
        """Detach the capture hooks (the optimizer then degrades to SGD with frozen factors)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict (factors, eigenbases and momentum live in ``state``) plus the step count."""
        sd = super().state_dict()
        sd["kfac_steps"] = self._steps
        sd["nonfinite_skips"] = self.nonfinite_skips.clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        self._steps = int(sd.pop("kfac_steps", 0))
        skips = sd.pop("nonfinite_skips", None)
        if skips is not None:
            self.nonfinite_skips = torch.as_tensor(skips).clone()
        super().load_state_dict(sd)
        for layer in self._layers:
            layer.reset()
            layer.cache.clear()

    # ------------------------------------------------------------------ capture
    def _interval(self, key: str, step: int) -> int:
        value = _resolve(self.param_groups[0][key], step)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid {key}: {value!r} at step {step} (must be an int >= 1)")
        return value

    def _is_factor_step(self) -> bool:
        return self._steps % self._interval("factor_update_interval", self._steps) == 0

    def _split_plan(self) -> str | None:
        """What half-batch gradient the hooks capture; KFAC needs none (FOP overrides)."""
        return None

    def _dist_active(self) -> bool:
        if self._distributed is False or not dist.is_available() or not dist.is_initialized():
            return False
        return dist.get_world_size(self._process_group) > 1

    def _make_forward_hook(self, layer: KroneckerLayer) -> Callable[..., None]:
        """The capture hook of ``layer``, kept out of ``torch.compile``'s tracing.

        Traced, the hook's Python state (the step count deciding whether this is a factor step, the
        layer's running sums) became guards of the compiled graph: it recompiled on every step until
        dynamo's recompile limit and then ran the whole module uncompiled. Run eagerly (a graph break at
        each hooked layer), the hook sees real tensors, its grad hook fires in backward as without
        compile, and the compiled graphs stay valid across steps.
        """

        @torch.compiler.disable
        def forward_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            # copy.deepcopy(model) copies this hook too; a copy's forward must not feed our layer.
            if module is not layer.module or not module.training or not torch.is_grad_enabled():
                return
            if not isinstance(output, Tensor) or not output.requires_grad or not inputs:
                return
            if not layer.weight.requires_grad:  # frozen layer: it never gets a gradient to precondition
                return
            factors = self._is_factor_step()
            split = self._split_plan()
            if not factors and split is None:
                return
            x = inputs[0].detach()

            def grad_hook(grad: Tensor) -> None:
                with torch.no_grad(), _tf32_matmuls(self._tf32):
                    layer.capture(x, grad.detach(), factors=factors, split=split)

            output.register_hook(grad_hook)

        return forward_hook

    # ------------------------------------------------------------------ factors
    def _layer_state(self, layer: KroneckerLayer) -> dict[str, Any]:
        st = self.state[layer.weight]
        if "A" not in st:
            w = layer.weight
            st["A"] = torch.eye(layer.a_dim(), dtype=layer.factor_dtype, device=w.device)
            st["G"] = torch.eye(layer.g_dim(), dtype=layer.factor_dtype, device=w.device)
        return st

    def _update_factors(self, layers: list[KroneckerLayer], grads: list[Tensor],
                        group_of: dict[int, dict[str, Any]]) -> None:
        captured = [lay for lay in layers if lay.a_sum is not None and lay.g_sum is not None]
        if not captured:
            return
        grads_ok = _all_finite(grads)  # a step with a bad gradient must not move the factors either
        reduction = self.param_groups[0]["loss_reduction"]
        hats: list[Tensor] = []
        for lay in captured:
            hats.append(lay.a_factor())
            hats.append(lay.g_factor(reduction))
        if self._dist_active():
            # One collective for every factor of every layer: average across ranks.
            flat = torch.cat([h.reshape(-1) for h in hats])
            dist.all_reduce(flat, group=self._process_group)
            flat /= dist.get_world_size(self._process_group)
            parts = torch.split(flat, [h.numel() for h in hats])
            hats = [part.reshape(h.shape) for part, h in zip(parts, hats)]
        for i, lay in enumerate(captured):
            st = self._layer_state(lay)
            decay = group_of[id(lay.weight)]["factor_decay"]
            a_hat = hats[2 * i].reshape(st["A"].shape).to(st["A"].dtype)
            g_hat = hats[2 * i + 1].reshape(st["G"].shape).to(st["G"].dtype)
            ok = grads_ok & _all_finite([a_hat, g_hat])
            st["A"] = torch.where(ok, st["A"] * decay + a_hat * (1.0 - decay), st["A"])
            st["G"] = torch.where(ok, st["G"] * decay + g_hat * (1.0 - decay), st["G"])

    def _refresh_eigen(self, layers: list[KroneckerLayer]) -> None:
        """Eigendecompose A and G of ``layers``, batched by size (:func:`batched_eigh`).

        A factor whose eigh raises keeps its previous eigenbasis and a ``kfac_eigh_failed`` event is
        recorded; ``step()`` goes on.
        """
        if not layers:
            return
        mats: list[Tensor] = []
        prev: list[tuple[Tensor, Tensor] | None] = []
        for lay in layers:
            st = self._layer_state(lay)
            for f in ("A", "G"):
                mats.append(st[f])
                prev.append((st["d" + f], st["Q" + f]) if "Q" + f in st else None)
        results = batched_eigh(mats, prev)
        for i, lay in enumerate(layers):
            st = self.state[lay.weight]
            for j, f in enumerate(("A", "G")):
                r = results[2 * i + j]
                st["d" + f], st["Q" + f] = r.evals, r.evecs
                if r.raised:
                    self.events.append({
                        "key": "kfac_eigh_failed", "layer": lay.name, "step": self._steps,
                        "message": f"eigh of {lay.name!r}'s {f} factor failed at step {self._steps}; "
                                   "kept the previous eigenbasis",
                    })

    # ------------------------------------------------------------------ direction
    def _prepare_directions(self, layers: list[KroneckerLayer]) -> None:
        """Hook for subclasses before per-layer directions are computed (FOP: dual all-reduce)."""

    def _inverse_curvature(self, layer: KroneckerLayer, damping: float, factored: bool) -> Tensor:
        """1 / eigenvalues of M on the (d_out, a_dim) grid (see :func:`eigen_denominator`).

        Cached on the layer until the eigendecomposition (tensor identity) or the damping changes, so steps
        between inverse updates only pay for the two basis changes.
        """
        st = self.state[layer.weight]
        cache = layer.cache
        if (cache.get("dA") is not st["dA"] or cache.get("dG") is not st["dG"]
                or cache.get("damping") != damping or cache.get("factored") != factored):
            cache.clear()
            cache.update(dA=st["dA"], dG=st["dG"], damping=damping, factored=factored,
                         minv=eigen_denominator(st["dA"], st["dG"], damping, factored=factored).reciprocal_())
        return cache["minv"]

    def _layer_direction(self, layer: KroneckerLayer, group: dict[str, Any], damping: float,
                         info: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
        """(raw gradient matrix, preconditioned direction V) for one layer; KFAC: V = M^-1 grad.

        Same as :func:`kfac_precondition`, with the inverse eigenvalue grid cached.
        """
        st = self.state[layer.weight]
        raw = layer.grad_matrix()
        minv = self._inverse_curvature(layer, damping, group["factored_pi"])
        v = from_eigenbasis(to_eigenbasis(raw, st["QA"], st["QG"]) * minv, st["QA"], st["QG"])
        return raw, v

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Precondition the Linear/Conv2d gradients, KL-clip, then take the SGD-momentum step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        k = self._steps
        introspect = self.introspect
        if introspect:
            self.last_internals = {}
            self.last_global_internals = {}

        group_of: dict[int, dict[str, Any]] = {}
        grads: list[Tensor] = []
        for group in self.param_groups:
            for p in group["params"]:
                group_of[id(p)] = group
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("KFAC does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("KFAC does not support complex parameters")
                grads.append(p.grad)
        if not grads:
            self._finish_step()
            return loss

        active = [lay for lay in self._layers if lay.weight.grad is not None and id(lay.weight) in group_of]
        self._update_factors(active, grads, group_of)
        inv_interval = self._interval("inv_update_interval", k)
        due = [lay for lay in active if "QA" not in self._layer_state(lay) or k % inv_interval == 0]
        with _tf32_matmuls(self._tf32):
            self._refresh_eigen(due)
            refreshed = {id(lay) for lay in due}
            self._precondition(active, refreshed, k, introspect)
        if introspect:
            if self._nus:
                self.last_global_internals["kl_nu"] = torch.stack(self._nus).min().detach()
            else:
                self.last_global_internals["kl_nu"] = torch.ones((), device=grads[0].device)

        self._sgd_step()
        self._finish_step()
        return loss

    def _precondition(self, active: list[KroneckerLayer], refreshed: set[int], k: int, introspect: bool) -> None:
        """Overwrite ``.grad`` of the active layers with their KL-clipped preconditioned directions."""
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        self._prepare_directions(active)

        nus: list[Tensor] = []
        for group in self.param_groups:
            lays = [lay for lay in active if group_of[id(lay.weight)] is group]
            if not lays:
                continue
            damping = float(_resolve(group["damping"], k))
            if not (math.isfinite(damping) and damping > 0):
                raise ValueError(f"Invalid damping: {damping!r} at step {k} (must be > 0)")
            lr = float(group["lr"])
            directions: list[tuple[KroneckerLayer, Tensor]] = []
            vg: Tensor | None = None
            for lay in lays:
                info: dict[str, Tensor] | None = None
                if introspect:
                    info = self._eigen_internals(lay, damping, id(lay) in refreshed)
                    self.last_internals[lay.weight] = info
                raw, v = self._layer_direction(lay, group, damping, info)
                term = (v * raw).sum()
                vg = term if vg is None else vg + term
                directions.append((lay, v))
            assert vg is not None
            nu = kl_clip_factor(vg * (lr * lr), group["kl_clip"])
            nus.append(nu)
            for lay, v in directions:
                lay.write_grad(v * nu)
        self._nus = nus

    def _eigen_internals(self, lay: KroneckerLayer, damping: float, refreshed: bool) -> dict[str, Tensor]:
        st = self.state[lay.weight]
        da, dg = st["dA"], st["dG"]
        info = {
            "A_eig_min": da.min(), "A_eig_max": da.max(), "G_eig_min": dg.min(), "G_eig_max": dg.max(),
            "A_eig_mean": da.mean(), "G_eig_mean": dg.mean(),
            "damping": torch.tensor(damping, dtype=da.dtype, device=da.device), "pi": factored_pi(da, dg),
        }
        if refreshed:
            info["A_eigs"] = da.clone()
            info["G_eigs"] = dg.clone()
        return info

    def _sgd_step(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        ok = _all_finite([p.grad for p in params])  # type: ignore[misc]
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                if momentum != 0:
                    st = self.state[p]
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = torch.where(ok, d, torch.zeros_like(d))
                        st["momentum_buffer"] = buf
                    else:
                        buf.copy_(torch.where(ok, buf * momentum + d, buf))
                    d = buf
                p.add_(torch.where(ok, d, torch.zeros_like(d)), alpha=-lr)
        skipped = (~ok).to(torch.int64)
        self.nonfinite_skips = self.nonfinite_skips.to(skipped.device) + skipped

    def _finish_step(self) -> None:
        for lay in self._layers:
            lay.reset()
        self._steps += 1
