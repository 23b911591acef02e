"""How a layer stores its weight: ``nn.Linear``'s (out, in) or transformers' ``Conv1D`` (in, out).

GPT-2 (``transformers.pytorch_utils.Conv1D``) stores its projection weights transposed, (in, out), and
computes ``x @ W + b``. The matrix optimizers must know it: NorMuon's statistic is per *output* neuron,
Muon's shape scale comes from (out, in), and KFAC's Kronecker factors pair the input with the weight's
input axis. Detection is by duck typing, so ``transformers`` need not be installed (or imported) and
look-alike modules in user code behave the same.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["is_in_out_linear", "in_out_weight_ids"]


def is_in_out_linear(module: nn.Module) -> bool:
    """True for a module named ``Conv1D`` with ``nf`` outputs and a 2-D (in, nf) ``weight``.

    That is transformers' ``Conv1D`` (``forward``: ``addmm(bias, x.view(-1, in), weight)``).
    """
    if type(module).__name__ != "Conv1D":
        return False
    weight = getattr(module, "weight", None)
    nf = getattr(module, "nf", None)
    return isinstance(weight, Tensor) and weight.ndim == 2 and isinstance(nf, int) and weight.shape[1] == nf


def in_out_weight_ids(model: nn.Module) -> set[int]:
    """``id`` of every (in, out)-stored weight in ``model`` (see :func:`is_in_out_linear`)."""
    return {id(m.weight) for m in model.modules() if is_in_out_linear(m)}
