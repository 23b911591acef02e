"""Which parameters the Monitor measures, under which names, with which neuron axis.

Only trainable parameters (``requires_grad``) are measured: a frozen base (LoRA, progressive
unfreezing) has no update to watch, and its spectra would cost as much as the trained part's. Names
are the model's own, without the prefixes wrappers add (``module.`` of DDP/DataParallel, ``_orig_mod.``
of ``torch.compile``), so a run's layers are called the same however the model was wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probe.diagnostics.measures import local_shard

__all__ = ["Layer", "collect_layers", "clean_name", "neuron_axes"]

_LEADING = ("module", "_orig_mod")  # DDP / DataParallel, torch.compile: around the whole model
_ANYWHERE = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})  # never a user's name


@dataclass(eq=False)
class Layer:
    """One monitored parameter (compared by identity: two layers are never equal by value)."""

    name: str
    param: Tensor
    neuron_axis: int

    @property
    def is_matrix(self) -> bool:
        return self.param.ndim >= 2

    def weight(self) -> Tensor:
        """The values on this rank: a DTensor's local shard (FSDP2, tensor parallel), never a collective."""
        return local_shard(self.param.detach())

    def grad(self) -> Tensor | None:
        grad = self.param.grad
        return None if grad is None else local_shard(grad)


def clean_name(name: str) -> str:
    """``name`` without what wrappers add: leading ``module.``/``_orig_mod.`` (DDP, ``torch.compile``,
    in any nesting) and the unambiguous wrapper parts anywhere (a user's own submodule called ``module``
    deeper in the model keeps its name)."""
    parts = name.split(".")
    while len(parts) > 1 and parts[0] in _LEADING:
        parts = parts[1:]
    kept = [p for p in parts[:-1] if p not in _ANYWHERE] + parts[-1:]
    return ".".join(kept)


def neuron_axes(model: nn.Module | None) -> dict[str, int]:
    """Default output-neuron axis of the parameters whose layout is (in, out)-like.

    An embedding table is (tokens, features): its output neurons are the columns, and a row is a token
    that legitimately stops moving when it is not in the batch (not a frozen neuron). Hugging Face's
    ``Conv1D`` (GPT-2) stores its weight (in, out). Recognised by name so transformers is never imported.
    """
    if model is None:
        return {}
    axes: dict[str, int] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Embedding) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf")):
            axes[clean_name(f"{prefix}.weight" if prefix else "weight")] = 1
    return axes


def collect_layers(
    model: nn.Module | None,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    include: Callable[[str, Tensor], bool] | None = None,
    neuron_axis: Mapping[str, int] | None = None,
) -> list[list[Layer]]:
    """The monitored layers of each optimizer, in its parameter order (a parameter shared by two
    optimizers belongs to the first). Parameters without a name in ``model`` are ``param<i>``."""
    names = {id(p): clean_name(n) for n, p in model.named_parameters()} if model is not None else {}
    axes = neuron_axes(model)
    axes.update(neuron_axis or {})
    out: list[list[Layer]] = []
    seen: set[int] = set()
    anonymous = 0
    for opt in optimizers:
        layers = []
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in seen:
                    continue
                seen.add(id(p))
                name = names.get(id(p))
                if name is None:
                    name = f"param{anonymous}"
                    anonymous += 1
                if not p.requires_grad or (include is not None and not include(name, p)):
                    continue
                if local_shard(p).numel() == 0:  # a DTensor with no rows on this rank: nothing to measure
                    continue
                layers.append(Layer(name, p, axes.get(name, 0)))
        out.append(layers)
    return out
