"""One parameter the Monitor measures: its name, the tensor and its neuron axis."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from probe.diagnostics.measures import local_shard

__all__ = ["Layer"]

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
