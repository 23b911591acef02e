"""hybrid_param_groups: which parameters go to the Muon family and which to AdamW."""

from __future__ import annotations

import torch
from torch import nn

from probe.optim import Muon, NorMuon, hybrid_param_groups
from probe.optim.routing import is_excluded_name


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, layers: int = 2, tie: bool = False) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(8, d)  # not named "embed*": caught by the nn.Embedding rule
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"ln": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d, bias=False)})
            for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.scale = nn.Parameter(torch.ones(()))
        if tie:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            h = blk["ln"](x)
            q, k, v = blk["qkv"](h).chunk(3, dim=-1)
            x = x + blk["proj"](torch.softmax(q @ k.mT / 4.0, dim=-1) @ v)
        return self.lm_head(self.ln_f(x)) * self.scale


def _names(groups: list[dict], use_muon: bool) -> set[str]:
    return {n for g in groups if g["use_muon"] is use_muon for n in g["param_names"]}


def test_gpt_routing() -> None:
    groups = hybrid_param_groups(TinyGPT())
    assert _names(groups, True) == {f"blocks.{i}.{k}.weight" for i in range(2) for k in ("qkv", "proj")}
    adamw = _names(groups, False)
    assert {"embed_tokens.weight", "pos.weight", "lm_head.weight", "scale", "ln_f.weight", "blocks.0.qkv.bias"} <= adamw
    adam_group = next(g for g in groups if not g["use_muon"])
    assert adam_group["lr"] == 3e-4 and adam_group["betas"] == (0.9, 0.95) and adam_group["eps"] == 1e-10
    assert adam_group["weight_decay"] == 0.0
    n_total = sum(1 for _ in TinyGPT().parameters())
    assert sum(len(g["params"]) for g in groups) == n_total


def test_tied_embedding_counted_once_and_sent_to_adamw() -> None:
    model = TinyGPT(tie=True)
    groups = hybrid_param_groups(model)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params})
    adamw_ids = {id(p) for p in next(g for g in groups if not g["use_muon"])["params"]}
    assert id(model.embed_tokens.weight) in adamw_ids


def test_convnet_first_conv_to_adamw() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 10))
    groups = hybrid_param_groups(net, exclude=())
    assert _names(groups, True) == {"2.weight", "4.weight", "5.weight"}
    assert "0.weight" in _names(groups, False)
    groups = hybrid_param_groups(net, exclude=(), first_conv_to_adamw=False)
    assert "0.weight" in _names(groups, True)


def test_name_pattern_matching_is_per_component() -> None:
    ex = ("embed", "head", "lm_head")
    assert is_excluded_name("model.embed_tokens.weight", ex)
    assert is_excluded_name("head.weight", ex) and is_excluded_name("heads0.weight", ex) is False
    assert is_excluded_name("lm_head.weight", ex)
    assert not is_excluded_name("blocks.0.attn.multihead.weight", ex)  # substring is not a component match
    assert not is_excluded_name("embedding_proj.weight", ex)


def test_frozen_parameters_skipped_and_muon_group_options() -> None:
    model = TinyGPT()
    model.blocks[0]["qkv"].weight.requires_grad_(False)
    groups = hybrid_param_groups(model, muon_group={"lr": 0.05}, adamw_lr=1e-3)
    assert "blocks.0.qkv.weight" not in _names(groups, True) | _names(groups, False)
    assert next(g for g in groups if g["use_muon"])["lr"] == 0.05


def test_one_optimizer_trains_whole_model_and_round_trips_state() -> None:
    g = torch.Generator().manual_seed(0)
    model = TinyGPT()
    with torch.no_grad():  # fixed weights from our own generator, not the global RNG
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 0 else 0.0))
    for cls in (Muon, NorMuon):
        opt = cls(hybrid_param_groups(model, adamw_lr=3e-3))
        idx = torch.randint(0, 50, (4, 8), generator=g)
        losses = []
        for _ in range(6):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
        sd = opt.state_dict()
        opt2 = cls(hybrid_param_groups(model, adamw_lr=3e-3))
        opt2.load_state_dict(sd)
        assert opt2.param_groups[0]["param_names"] == opt.param_groups[0]["param_names"]
