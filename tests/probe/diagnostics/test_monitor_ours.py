"""Monitor with our optimizers (probe.optim) and InfoBatch (probe.data): their internals reach the run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probe.diagnostics.monitor import attach
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP, train

optim = pytest.importorskip("probe.optim")


def _muon_pair(cls_name: str, model: nn.Module) -> list[torch.optim.Optimizer]:
    cls = getattr(optim, cls_name)
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    return [cls(matrices, lr=0.02), torch.optim.AdamW(others, lr=1e-3)]


@pytest.mark.parametrize("cls_name", ["Muon", "NorMuon"])
def test_muon_family_spectra_before_and_after_orthogonalization(recording_run: RecordingRun, cls_name: str) -> None:
    model = TinyMLP()
    opts = _muon_pair(cls_name, model)
    mon = attach(model, opts, run=recording_run, budget=None, log_every=4, spectra_every=4, internals_every=4,
                 vectors_every=4)
    train(model, opts, 8)
    mon.detach()
    assert opts[0].introspect is False
    for src in ("pre_orth", "post_orth"):
        assert sorted(recording_run.series(f"sv.{src}.cond/fc1.weight")) == [0, 4]
    # Newton–Schulz output: singular values in the NS5 band (ALGORITHMS P2), so orth error well below 1
    post = [a["values"] for a in recording_run.arrays if a["key"] == "sv.post_orth"]
    assert post and all(0.5 < v.min() and v.max() < 1.25 for v in post)
    assert all(0 < e < 0.6 for e in recording_run.series("orth_err/fc2.weight").values())
    # pre-orth spectrum: the momentum matrix, whose singular values are not equalised
    assert all(c > 1.0 for c in recording_run.series("sv.pre_orth.cond/fc1.weight").values())
    # directions Newton–Schulz leaves unlifted: none in a well-conditioned momentum (a fraction in [0, 1])
    assert set(recording_run.series("sv.pre_orth.not_lifted/fc1.weight").values()) == {0.0}
    if cls_name == "NorMuon":
        assert recording_run.series("normuon.v_max/fc1.weight")[4] >= recording_run.series(
            "normuon.v_min/fc1.weight")[4] > 0
        # at the first step (v = 0) NorMuon gives every row of Ô the same RMS (ALGORITHMS P7); O's rows differ
        assert recording_run.series("normuon.row_rms_cv_after/fc1.weight")[0] < 1e-5
        assert recording_run.series("normuon.row_rms_cv_before/fc1.weight")[0] > 1e-3
        v = [a for a in recording_run.arrays if a["key"] == "normuon.v" and a["layer"] == "fc1.weight"]
        assert v and v[0]["values"].shape == (16,)  # one per output neuron


def _regression(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_kfac_internals_are_logged(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = optim.KFAC(model, lr=0.05, factor_update_interval=1, inv_update_interval=1)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=3, internals_every=1, vectors_every=3)
    _regression(model, opt, 3)
    mon.detach()
    for q in ("A_eig_min", "A_eig_max", "G_eig_min", "G_eig_max", "damping_rel", "damping_rel_mean"):
        assert set(recording_run.series(f"kfac.{q}/fc1.weight")) == {0, 1, 2}
    assert all(0 < v <= 1 for v in recording_run.series("kfac.kl_nu").values())
    assert {(a["key"], a["step"]) for a in recording_run.arrays if a["layer"] == "fc1.weight"} >= {
        ("kfac.A_eigs", 0), ("kfac.G_eigs", 0)}


def test_fop_per_layer_quantities_come_straight_from_the_optimizer(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = optim.FOP(model, lr=0.05, factor_update_interval=1, inv_update_interval=1)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=2, internals_every=1, batch_size=32)
    _regression(model, opt, 2)
    mon.detach()
    logged = {k.split("/")[0] for k in recording_run.keys() if k.startswith("fop.")}
    assert {"fop.g1_norm", "fop.gdiff_norm", "fop.s_proj", "fop.beta", "fop.eta"} <= logged
    assert set(recording_run.series("fop.cos_g1_g2/fc2.weight")) == {0, 1}
    for step in (0, 1):  # across layers: the share of β* < 0
        betas = [recording_run.series(f"fop.beta/{n}")[step] for n in ("fc1.weight", "fc2.weight")]
        assert recording_run.series("fop.beta_neg_frac")[step] == pytest.approx(sum(b < 0 for b in betas) / 2)
    # the simple noise scale from FOP's own halves (first step: no running mean yet)
    avg = sum(recording_run.series(f"fop.gavg_norm/{n}")[0] ** 2 for n in ("fc1.weight", "fc2.weight"))
    diff = sum(recording_run.series(f"fop.gdiff_norm/{n}")[0] ** 2 for n in ("fc1.weight", "fc2.weight"))
    grad_sq = avg - diff / 4  # (≤ 0 when noise dominates: inf)
    expected = (32 * diff / 4) / grad_sq if grad_sq > 0 else float("inf")
    assert recording_run.series("fop.noise_scale")[0] == pytest.approx(expected, rel=1e-4)


def test_half_batch_measurement_uses_the_fisher_metric_of_kfac_factors(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = optim.KFAC(model, lr=0.05, factor_update_interval=1, inv_update_interval=1)
    mon = attach(model, opt, run=recording_run, log_every=2)
    _regression(model, opt, 1)  # builds the factors
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)
    opt.zero_grad()
    mon.measure_gradient_diff((lambda: nn.functional.mse_loss(model(x[:8]), y[:8]),
                               lambda: nn.functional.mse_loss(model(x[8:]), y[8:])))
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    mon.detach()
    assert recording_run.series("gdiff.gavg_norm_fisher/fc1.weight")[1] > 0
    assert "gdiff.orthogonal_fisher/fc2.weight" in recording_run.keys()
    assert "gdiff.gavg_norm_fisher/fc1.bias" not in recording_run.keys()  # no Fisher block for a bias


def test_infobatch_ledger_and_samples_seen_are_logged(recording_run: RecordingRun) -> None:
    data = pytest.importorskip("probe.data")
    n = 64
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)
    ib = data.InfoBatch(list(range(n)), num_epochs=4, prune_ratio=0.5, delta=0.75, seed=0, labels=y.tolist())
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, log_every=5, infobatch=ib)
    for epoch in range(3):
        ib.set_epoch(epoch)
        order = torch.tensor(list(iter(ib)))
        for batch in order.split(16):
            losses = nn.functional.cross_entropy(model(x[batch]), y[batch], reduction="none")
            loss = ib.update(batch, losses)
            opt.zero_grad()
            loss.backward()
            opt.step()
    mon.detach()
    pruned = recording_run.series("infobatch.pruned_frac")
    assert sorted(pruned) == [0, 1, 2] and pruned[0] == 0 and pruned[1] > 0
    assert recording_run.series("infobatch.rescale")[1] == pytest.approx(2.0)
    class_rates = [a for a in recording_run.arrays if a["key"] == "infobatch.class_pruned_frac"]
    assert [a["step"] for a in class_rates] == [0, 1, 2] and len(class_rates[1]["values"]) == 4
    seen = recording_run.series("samples_seen")
    assert seen[max(seen)] == ib.samples_seen and seen[0] == 16
