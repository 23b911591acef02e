"""Small models for the demo: a digits CNN and a character-level GPT.

Both are small enough to train in seconds on a laptop CPU and have the parameter kinds every panel
needs: a convolution (KFAC's conv factors), hidden weight matrices (spectra, neuron norms, Muon), and
embeddings / heads / biases / norm gains that, per ALGORITHMS.md §1.4, belong to AdamW even in a Muon run.
Each model says which of its parameters are "hidden matrices" through :func:`split_hidden_matrices`,
so the routing rule lives in one place and is stated by name, not guessed from shapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DigitsCNN", "CharGPT", "split_hidden_matrices"]


class DigitsCNN(nn.Module):
    """conv(1→C, 3×3) → ReLU → 2×2 pool → fc1 → ReLU → fc2 → ReLU → head, for 1×8×8 images.

    The hidden layers are ``Linear`` so that ``torch.optim.Muon`` (2-D parameters only) and our Muon
    family see the same matrices; the first conv and the head go to AdamW as the Muon README advises.
    """

    def __init__(self, *, channels: int = 16, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(channels * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.head(x)

    def hidden_matrix_names(self) -> set[str]:
        """Parameter names that Muon-family optimizers should own."""
        return {"fc1.weight", "fc2.weight"}


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4× GELU MLP."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"Invalid n_head: {n_head} (must divide d_model={d_model})")
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """A tiny GPT (nanoGPT's shape) over 7-bit ASCII characters."""

    def __init__(
        self, *, vocab_size: int = 128, block_size: int = 64, d_model: int = 64, n_layer: int = 2, n_head: int = 4
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights(n_layer)

    def _init_weights(self, n_layer: int) -> None:
        # GPT-2 init; residual projections scaled by 1/sqrt(2·layers) so the residual stream starts tame.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        x = self.embed(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def hidden_matrix_names(self) -> set[str]:
        """The attention and MLP matrices; embeddings and the LM head stay with AdamW (§1.4)."""
        return {
            name
            for name, p in self.named_parameters()
            if name.startswith("blocks.") and p.dim() == 2
        }


def split_hidden_matrices(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (hidden matrices for Muon, everything else for AdamW), in model order."""
    names_fn = getattr(model, "hidden_matrix_names", None)
    if names_fn is None:
        raise TypeError(f"{type(model).__name__} does not declare hidden_matrix_names()")
    hidden = names_fn()
    muon: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (muon if name in hidden else other).append(p)
    return muon, other
