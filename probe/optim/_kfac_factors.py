"""Kronecker-factor capture and eigen-preconditioning kernels shared by :mod:`probe.optim.kfac` and FOP.

Two parts:

* :class:`KroneckerLayer` knows how one ``nn.Linear`` or ``nn.Conv2d`` maps its captured input and
  output-gradient to the rows of the Kronecker statistics (ALGORITHMS.md §3.1-3.2), and how to compute
  a partial weight gradient over a subset of the examples (FOP's half-batch gradients, §4.1).
* Pure tensor functions (:func:`eigen_denominator`, :func:`kfac_precondition`, :func:`factored_pi`,
  :func:`kl_clip_factor`) that tests reach without building an optimizer.

Scale convention (ALGORITHMS.md §6.4 says repos disagree, so ours is pinned here): for a batch of N
examples, each contributing R rows (R = 1 for a plain Linear, R = H_out*W_out for a conv, the sequence
length for a Linear on (N, L, d) input),

    A = (1 / (N R)) * sum_rows a_bar a_bar^T                      (mean over rows)
    G = (1 / N)     * sum_rows (s g)(s g)^T,  s = N for a mean-reduced loss, 1 for a summed loss

so that A (x) G approximates E_i[vec(grad l_i) vec(grad l_i)^T] for the *per-example* gradients of the
summed loss (the empirical Fisher), with KFC's spatially-uncorrelated-derivatives assumption for conv.
Linear and conv therefore share one damping scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.optim.layouts import is_in_out_linear


def _conv_padding(module: nn.Conv2d) -> tuple[int, int] | None:
    """Integer padding of a conv, or ``None`` when it cannot be expressed symmetrically."""
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        # "same": symmetric only for odd effective kernel sizes.
        out = []
        for k, d in zip(module.kernel_size, module.dilation):
            total = d * (k - 1)
            if total % 2:
                return None
            out.append(total // 2)
        return (out[0], out[1])
    return (int(pad[0]), int(pad[1]))


def supports_module(module: nn.Module) -> bool:
    """Whether KFAC can precondition ``module`` (otherwise its parameters get the plain gradient).

    Grouped/depthwise convs and non-zero padding modes are left out: their weight gradient is not a
    single Kronecker-factored matrix product over unfolded patches.
    """
    if isinstance(module, nn.Linear) or is_in_out_linear(module):  # transformers' Conv1D (GPT-2) too
        return True
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and _conv_padding(module) is not None
    return False


@dataclass
class KroneckerLayer:
    """One preconditioned module plus the statistics captured since the last optimizer step.

    The accumulators are plain sums so that several forward/backward passes before one ``step()``
    (gradient accumulation) add up; ``reset()`` clears them after each step.
    """

    name: str
    module: nn.Module
    # Running sums since the last step (None until something was captured).
    a_sum: Tensor | None = None
    a_rows: int = 0
    g_sum: Tensor | None = None
    g_examples: int = 0
    split_sum: Tensor | None = None  # FOP: sum over the first half (or over all local examples).
    split_rows: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # low-rank (g rows, x rows)
    n_first: int = 0
    n_total: int = 0
    cache: dict[str, Any] = field(default_factory=dict)  # derived from the eigenbasis; see KFAC
    #: dtype of the statistics, factors and eigenbases (fp32 for bf16/fp16/fp32 weights by default).
    factor_dtype: torch.dtype = torch.float32

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight  # type: ignore[return-value]

    @property
    def bias(self) -> nn.Parameter | None:
        return self.module.bias  # type: ignore[return-value]

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    @property
    def in_out(self) -> bool:
        """Weight stored (in, out) (transformers' ``Conv1D``): y = x W + b, a Linear with W transposed."""
        return is_in_out_linear(self.module)

    def reset(self) -> None:
        self.a_sum = None
        self.a_rows = 0
        self.g_sum = None
        self.g_examples = 0
        self.split_sum = None
        self.split_rows = []
        self.n_first = 0
        self.n_total = 0

    # ------------------------------------------------------------------ shapes
    def a_dim(self) -> int:
        w = self.weight
        n = w.shape[0] if self.in_out else w[0].numel()
        return n + (1 if self.bias is not None else 0)

    def g_dim(self) -> int:
        return self.weight.shape[1] if self.in_out else self.weight.shape[0]

    def max_dim(self) -> int:
        """The larger Kronecker factor's side (what ``max_factor_dim`` caps)."""
        return max(self.a_dim(), self.g_dim())

    # ------------------------------------------------------------------ rows
    def _batched_input(self, x: Tensor) -> Tensor:
        """Input with a leading example dimension (unbatched inputs become a batch of 1)."""
        if self.is_conv:
            return x if x.dim() == 4 else x.unsqueeze(0)
        return x if x.dim() >= 2 else x.unsqueeze(0)

    def _batched_grad(self, g: Tensor) -> Tensor:
        if self.is_conv:
            return g if g.dim() == 4 else g.unsqueeze(0)
        return g if g.dim() >= 2 else g.unsqueeze(0)

    def activation_rows(self, x: Tensor) -> Tensor:
        """(rows, a_dim) matrix of a_bar: inputs (conv: unfolded patches), plus a ones column for the bias."""
        x = self._batched_input(x)
        if self.is_conv:
            m: nn.Conv2d = self.module  # type: ignore[assignment]
            pad = _conv_padding(m)
            assert pad is not None  # guarded by supports_module
            patches = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride)
            rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        else:
            rows = x.reshape(-1, x.shape[-1])
        if self.bias is not None:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        return rows

    def grad_rows(self, g: Tensor) -> Tensor:
        """(rows, d_out) matrix of output gradients, row-aligned with :meth:`activation_rows`."""
        g = self._batched_grad(g)
        if self.is_conv:
            return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
        return g.reshape(-1, g.shape[-1])

    def capture(self, x: Tensor, g: Tensor, *, factors: bool, split: str | None) -> None:
        """Accumulate statistics from one backward through this module.

        Args:
            x: the module input of the forward pass (detached).
            g: gradient of the loss w.r.t. the module output.
            factors: accumulate the A and G statistics (factor-update steps only). G is kept as the raw
                sum of g g^T; :meth:`g_factor` applies the batch-size scaling once the step knows how many
                examples were seen (gradient accumulation).
            split: ``"first_half"`` accumulates the gradient over examples 0, 2, 4, ... (FOP's H1);
                ``"all"`` accumulates the gradient over every local example (distributed FOP);
                ``None`` skips it.
        """
        # Statistics accumulate in factor_dtype whatever the weight's or activation's dtype (bf16 weights,
        # autocast): half-precision sums of squares lose the small eigenvalues, and eigh has no bf16 kernel.
        dtype = self.factor_dtype
        xb = self._batched_input(x).to(dtype)
        gb = self._batched_grad(g).to(dtype)
        n = xb.shape[0]
        if factors:
            a = self.activation_rows(xb)
            a_stat = a.T @ a
            self.a_sum = a_stat if self.a_sum is None else self.a_sum + a_stat
            self.a_rows += a.shape[0]
            gr = self.grad_rows(gb)
            g_stat = gr.T @ gr
            self.g_sum = g_stat if self.g_sum is None else self.g_sum + g_stat
            self.g_examples += n
        if split is not None:
            xs, gs = (xb[0::2], gb[0::2]) if split == "first_half" else (xb, gb)
            self.n_first += xs.shape[0]
            self.n_total += n
            if split == "first_half" and not self.is_conv:
                g_rows = self.grad_rows(gs)
                r, m, k = g_rows.shape[0], g_rows.shape[1], self.a_dim()
                if r * (m * m + k * k) < m * k * (m + k):
                    # Few rows: keep the factors of S_1 = g^T a_bar, so FOP moves it to the eigenbasis as
                    # (g Q_G)^T (a_bar Q_A) at O(r (m^2 + k^2 + m k)) instead of O(m k (m + k)).
                    self.split_rows.append((g_rows, xs.reshape(-1, xs.shape[-1])))
                    return
            part = self.partial_grad(xs, gs)
            self.split_sum = part if self.split_sum is None else self.split_sum + part

    def partial_grad(self, x: Tensor, g: Tensor) -> Tensor:
        """Weight gradient (as a (d_out, a_dim) matrix, bias last) summed over the given examples only."""
        if self.is_conv:
            m: nn.Conv2d = self.module  # type: ignore[assignment]
            pad = _conv_padding(m)
            gw = torch.nn.grad.conv2d_weight(
                x, m.weight.shape, g, stride=m.stride, padding=pad, dilation=m.dilation, groups=1
            ).reshape(m.weight.shape[0], -1)
            gb = g.sum(dim=(0, 2, 3)) if self.bias is not None else None
        else:
            xr = x.reshape(-1, x.shape[-1])
            gr = g.reshape(-1, g.shape[-1])
            gw = gr.T @ xr
            gb = gr.sum(dim=0) if self.bias is not None else None
        if gb is not None:
            gw = torch.cat([gw, gb.unsqueeze(1)], dim=1)
        return gw

    def a_factor(self) -> Tensor:
        """A_hat = mean over rows of a_bar a_bar^T."""
        assert self.a_sum is not None
        return self.a_sum / self.a_rows

    def g_factor(self, loss_reduction: str) -> Tensor:
        """G_hat = (1/N) sum_rows (s g)(s g)^T with s = N for a mean-reduced loss, 1 for a summed one.

        N counts every example captured since the last step, so with gradient accumulation the loss is
        taken to be the mean over all of them (each micro-batch loss divided by the number of micro-batches,
        which makes ``.grad`` the mean gradient of the effective batch).
        """
        assert self.g_sum is not None
        n = self.g_examples
        return self.g_sum * n if loss_reduction == "mean" else self.g_sum / n

    def has_split(self) -> bool:
        return self.split_sum is not None or bool(self.split_rows)

    def split_in_eigenbasis(self, qa: Tensor, qg: Tensor) -> Tensor:
        """Q_G^T S Q_A for the captured split sum S (dense part plus low-rank parts)."""
        out: Tensor | None = None
        if self.split_sum is not None:
            out = to_eigenbasis(self.split_sum.to(qa.dtype), qa, qg)
        has_bias = self.bias is not None
        for g_rows, x_rows in self.split_rows:
            x_rows = x_rows.to(qa.dtype)
            # a_bar = [x, 1], so a_bar Q_A = x Q_A[:-1] + Q_A[-1] without materialising a_bar.
            a_q = torch.addmm(qa[-1], x_rows, qa[:-1]) if has_bias else x_rows @ qa
            part = (g_rows.to(qg.dtype) @ qg).T @ a_q
            out = part if out is None else out + part
        assert out is not None
        return out

    def split_dense(self) -> Tensor:
        """The captured split sum S as a (d_out, a_dim) matrix."""
        out = self.split_sum
        for g_rows, x_rows in self.split_rows:
            part = g_rows.T @ x_rows
            if self.bias is not None:
                part = torch.cat([part, g_rows.sum(dim=0).unsqueeze(1)], dim=1)
            out = part if out is None else out + part
        assert out is not None
        return out

    # ------------------------------------------------------------------ grads
    def grad_matrix(self) -> Tensor:
        """The current ``.grad`` of weight (and bias) as one (d_out, a_dim) matrix."""
        w = self.weight
        assert w.grad is not None
        gm = (w.grad.T if self.in_out else w.grad.reshape(w.shape[0], -1)).to(self.factor_dtype)
        b = self.bias
        if b is not None:
            bg = b.grad if b.grad is not None else torch.zeros_like(b)
            gm = torch.cat([gm, bg.reshape(-1, 1).to(self.factor_dtype)], dim=1)
        return gm

    def write_grad(self, mat: Tensor) -> None:
        """Write a (d_out, a_dim) matrix back into ``.grad`` of weight and bias."""
        w = self.weight
        b = self.bias
        nw = self.a_dim() - (1 if b is not None else 0)
        assert w.grad is not None
        if self.in_out:
            w.grad.copy_(mat[:, :nw].T)
        else:
            w.grad.copy_(mat[:, :nw].reshape(w.shape))
        if b is not None and b.grad is not None:
            b.grad.copy_(mat[:, nw])


# ---------------------------------------------------------------------- kernels
def factored_pi(a_eigs: Tensor, g_eigs: Tensor) -> Tensor:
    """pi = sqrt((tr A / dim A) / (tr G / dim G)) (Martens & Grosse 2015 §6.3), 1 when either trace is 0.

    Computed from the eigenvalues (their mean is tr/dim) so it matches the decomposition in use.
    """
    ta = a_eigs.mean()
    tg = g_eigs.mean()
    ok = (ta > 0) & (tg > 0)
    return torch.where(ok, torch.sqrt(ta / torch.where(ok, tg, torch.ones_like(tg))), torch.ones_like(ta))


def eigen_denominator(a_eigs: Tensor, g_eigs: Tensor, damping: float, *, factored: bool = False) -> Tensor:
    """Eigenvalues of the damped curvature M, laid out as a (d_out, a_dim) grid.

    Exact Tikhonov (default): lambda_G lambda_A^T + gamma, i.e. M = A (x) G + gamma I exactly.
    Factored: (lambda_G + sqrt(gamma)/pi)(lambda_A + pi sqrt(gamma))^T, i.e. M = (A + pi sqrt(gamma) I) (x)
    (G + sqrt(gamma)/pi I), a *different* preconditioner (ALGORITHMS.md P14).
    """
    if not factored:
        return torch.outer(g_eigs, a_eigs) + damping
    pi = factored_pi(a_eigs, g_eigs)
    root = math.sqrt(damping)
    return torch.outer(g_eigs + root / pi, a_eigs + pi * root)


def to_eigenbasis(mat: Tensor, qa: Tensor, qg: Tensor) -> Tensor:
    """Q_G^T X Q_A."""
    return qg.T @ mat @ qa


def from_eigenbasis(mat: Tensor, qa: Tensor, qg: Tensor) -> Tensor:
    """Q_G X Q_A^T."""
    return qg @ mat @ qa.T


def kfac_precondition(
    grad: Tensor,
    qa: Tensor,
    a_eigs: Tensor,
    qg: Tensor,
    g_eigs: Tensor,
    damping: float,
    *,
    factored: bool = False,
) -> Tensor:
    """V = Q_G[(Q_G^T grad Q_A) / denominator]Q_A^T = M^-1 grad for a (d_out, a_dim) gradient matrix."""
    denom = eigen_denominator(a_eigs, g_eigs, damping, factored=factored)
    return from_eigenbasis(to_eigenbasis(grad, qa, qg) / denom, qa, qg)


def kl_clip_factor(vg: Tensor, kl_clip: float | None) -> Tensor:
    """nu = min(1, sqrt(kappa / vg)) with vg = sum lr^2 <V, grad>; 1 when vg <= 0 or not finite.

    alecwangcq's version raises on vg = 0 (ZeroDivisionError) or vg < 0 (math domain error); a
    non-positive sum only arises from zero gradients or non-PSD round-off, where clipping is
    meaningless, so we do not clip (nu = 1). kappa = None disables clipping.
    """
    one = torch.ones_like(vg)
    if kl_clip is None:
        return one
    safe = torch.where(vg > 0, vg, one)
    nu = torch.clamp(torch.sqrt(kl_clip / safe), max=1.0)
    return torch.where((vg > 0) & torch.isfinite(vg), nu, one)
