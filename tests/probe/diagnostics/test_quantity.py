"""User quantities: one class through the protocol the Monitor schedules, budgets, times and flushes."""

from __future__ import annotations

import warnings

import pytest
import torch

import probe
from probe.diagnostics.monitor import attach
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP, train


class WeightNorm(probe.Quantity):
    """The README's example: a per-layer metric plus a layer-less summary the run page lists."""

    name = "weight_norm"

    def measure(self, ctx, out, *, meanwhile=None):
        norms = torch.stack(torch._foreach_norm([layer.weight() for layer in ctx.layers]))
        out.scalars([f"weight_norm/{layer.name}" for layer in ctx.layers] + ["weight_norm"],
                    torch.cat([norms, norms.max().reshape(1)]))


class UpdateNorm(probe.Quantity):
    """Needs ΔW: gets the Monitor's one batched weight copy, shared with the built-ins."""

    name = "my_update"

    def needs(self, step):
        return probe.Needs.DELTA

    def measure(self, ctx, out, *, meanwhile=None):
        out.scalars([f"my_update/{layer.name}" for layer in ctx.captured],
                    torch.stack(torch._foreach_norm(ctx.deltas)))
        if ctx.vectors:  # its own full arrays on vectors_every
            out.array("my_update.rows", ctx.captured[0].name, ctx.deltas[0].reshape(len(ctx.deltas[0]), -1).norm(dim=1))


class Broken(probe.Quantity):
    name = "broken"

    def measure(self, ctx, out, *, meanwhile=None):
        raise RuntimeError("boom")


def test_a_custom_quantity_is_logged_on_its_cadence_like_the_built_ins(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=4, quantities=[WeightNorm(every=3)])
    train(model, opt, 10)
    mon.detach()
    assert mon.errors == {}
    series = recording_run.series("weight_norm/fc1.weight")
    assert sorted(series) == [0, 3, 6, 9]
    assert series[9] == pytest.approx(float(model.fc1.weight.detach().norm()), rel=1e-6)  # the weight after step 9
    assert sorted(recording_run.series("weight_norm")) == [0, 3, 6, 9]
    assert mon.budget.cost["weight_norm"] > 0  # timed and charged like a built-in diagnostic


def test_a_quantity_needing_delta_gets_the_update_of_that_step(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, budget=None, update_every=None, neuron_every=None,
                 spectra_every=None, vectors_every=None, quantities=[UpdateNorm(every=2, vectors_every=4)])
    before = model.fc1.weight.detach().clone()
    train(model, opt, 1)
    step0 = float((model.fc1.weight.detach() - before).norm())
    train(model, opt, 4)
    mon.detach()
    series = recording_run.series("my_update/fc1.weight")
    assert sorted(series) == [0, 2, 4]
    assert series[0] == pytest.approx(step0, rel=1e-5)
    assert sorted(a["step"] for a in recording_run.arrays if a["key"] == "my_update.rows") == [0, 4]


def test_a_failing_quantity_is_disabled_alone_and_training_goes_on(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mon = attach(model, opt, run=recording_run, budget=None, quantities=[Broken(), WeightNorm(every=1)])
        train(model, opt, 5)
        mon.detach()
    assert mon.errors == {"broken": 1} and "broken" in mon.disabled
    assert len(recording_run.series("weight_norm/fc1.weight")) == 5
    assert len(recording_run.series("update_ratio/fc1.weight")) == 5


def test_a_custom_quantity_gets_the_budget_floor(recording_run: RecordingRun) -> None:
    class Slow(WeightNorm):
        name = "slow"

        def measure(self, ctx, out, *, meanwhile=None):
            import time

            time.sleep(0.002)
            out.scalars([f"slow/{ctx.layers[0].name}"], torch.ones(1))

    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, budget=1e-6, quantities=[Slow(every=1)])
    train(model, opt, 100)
    mon.detach()
    assert len(recording_run.series("slow/fc1.weight")) >= 10  # once per 10 periods whatever the budget


def test_bad_quantities_are_refused_with_the_field_named(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="quantities.*'spectra' is taken"):
        attach(model, opt, run=recording_run, quantities=[type("S", (probe.Quantity,), {"name": "spectra"})()])
    with pytest.raises(ValueError, match="quantities.*taken"):
        attach(model, opt, run=recording_run, quantities=[WeightNorm(), WeightNorm()])
    with pytest.raises(TypeError, match="quantities"):
        attach(model, opt, run=recording_run, quantities=[object()])


def test_the_built_in_diagnostics_are_quantities_and_a_configured_one_replaces_the_default(
    recording_run: RecordingRun,
) -> None:
    from probe.diagnostics.quantities import GradNorm, NeuronNorms, OptimizerInternals, Spectra, UpdateRatio

    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    spectra = Spectra(every=3, vectors_every=None, sources=("weight",), full_max=0, top_k=2)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=5, quantities=[spectra, WeightNorm(every=2)])
    train(model, opt, 7)
    mon.detach()
    kinds = [type(q) for q in mon.quantities]
    assert kinds[:3] == [GradNorm, UpdateRatio, NeuronNorms] and OptimizerInternals in kinds
    assert [q for q in mon.quantities if isinstance(q, Spectra)] == [spectra]  # replaced, not added
    assert sorted(recording_run.series("sv.weight.spectral_norm/fc1.weight")) == [0, 3, 6]
    assert "sv.update.cond/fc1.weight" not in recording_run.keys()  # its sources, not the default ones
    # its top-2 randomized spectrum still finds σ_max of the weight after the last step
    sigma = float(torch.linalg.matrix_norm(model.fc1.weight.detach(), ord=2))
    assert recording_run.series("sv.weight.spectral_norm/fc1.weight")[6] == pytest.approx(sigma, rel=1e-3)
    assert sorted(recording_run.series("weight_norm/fc1.weight")) == [0, 2, 4, 6]


def test_before_step_sees_the_gradients_a_closure_computes(recording_run: RecordingRun) -> None:
    """``step(closure)`` (Lightning's automatic optimization, LBFGS): the gradients exist only once the
    closure ran inside ``step()``; a quantity's ``before_step`` must see those, not the previous step's."""

    class GradSum(probe.Quantity):
        name = "grad_sum"

        def before_step(self, ctx, out):
            out.scalars(["grad_sum"], torch.stack([layer.grad().abs().sum() for layer in ctx.layers]).sum().reshape(1))

    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=1, quantities=[GradSum(every=1)])
    seen: list[float] = []
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(8, model.fc1.in_features, generator=g)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            seen.append(sum(float(p.grad.abs().sum()) for p in model.parameters()))
            return loss

        opt.step(closure)
    mon.detach()
    assert mon.errors == {}
    assert list(recording_run.series("grad_sum").values()) == pytest.approx(seen, rel=1e-5)


def test_settings_live_with_their_quantity(recording_run: RecordingRun) -> None:
    from probe.diagnostics.quantities import NeuronNorms, Spectra

    with pytest.raises(ValueError, match="frozen_rel_tol.*neuron quantity"):
        NeuronNorms(frozen_rel_tol=-1)
    with pytest.raises(ValueError, match="top_k.*spectra quantity"):
        Spectra(top_k=0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"svd_top_k.*Spectra\(top_k=\.\.\.\)"):
        attach(model, opt, run=recording_run, svd_top_k=8)
    with pytest.raises(TypeError, match=r"frozen_rel_tol.*NeuronNorms\(frozen_rel_tol=\.\.\.\)"):
        attach(model, opt, run=recording_run, frozen_rel_tol=0.1)
