"""Monitor with real torch optimizers, observed at the Monitor→Run seam (a recording run)."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch
from torch import nn

import probe
import probe.diagnostics.monitor
from probe.diagnostics.monitor import Monitor, attach
from probe.diagnostics.quantities import NeuronNorms, Spectra, UpdateRatio
from probe.diagnostics.quantity import Records
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP, train


_PROBE_DIR = os.path.dirname(probe.diagnostics.monitor.__file__) + os.sep


def _called_from_probe() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PROBE_DIR):
            return True
        frame = frame.f_back
    return False


def _layer_keys(run: RecordingRun, quantity: str) -> set[str]:
    return {k.split("/", 1)[1] for k in run.keys() if k.startswith(quantity + "/")}


def test_probe_attach_is_the_public_entry_point() -> None:
    assert probe.attach is attach and probe.Monitor is Monitor


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    ],
    ids=["AdamW", "SGD"],
)
def test_hooks_log_every_contract_quantity_for_a_torch_optimizer(recording_run: RecordingRun, make_opt) -> None:
    model = TinyMLP()
    opt = make_opt(model.parameters())
    mon = attach(model, opt, run=recording_run, budget=None, log_every=5, spectra_every=5, vectors_every=10)
    train(model, opt, 20)
    mon.detach()
    names = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    matrices = {"fc1.weight", "fc2.weight"}
    for q in ("grad_norm", "update_ratio", "nonfinite"):
        assert _layer_keys(recording_run, q) == names
    for q in ("neuron.cv", "neuron.min", "neuron.max", "neuron.q50", "neuron.frozen_frac"):
        assert _layer_keys(recording_run, q) == matrices
    for src in ("weight", "update"):
        for q in ("spectral_norm", "cond", "stable_rank", "eff_rank"):
            assert _layer_keys(recording_run, f"sv.{src}.{q}") == matrices
    assert set(recording_run.series("grad_norm")) == set(range(20))
    assert set(recording_run.series("step_time")) == set(range(1, 20))  # needs a previous step
    assert sorted(recording_run.series("sv.weight.cond/fc1.weight")) == [0, 5, 10, 15]
    arrays = {(a["key"], a["layer"], a["step"]) for a in recording_run.arrays}
    assert ("sv.weight", "fc1.weight", 10) in arrays and ("neuron.update_norm", "fc2.weight", 0) in arrays
    assert mon.errors == {}


def test_sgd_update_measures_equal_hand_computed_values(recording_run: RecordingRun) -> None:
    """With plain SGD, ΔW = −lr·g exactly, so every update measure has a closed form."""
    model = TinyMLP()
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    attach(model, opt, run=recording_run, budget=None, log_every=1, neuron_every=1, spectra_every=1)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    w0 = model.fc1.weight.detach().clone()
    model(x).square().mean().backward()
    g = model.fc1.weight.grad.detach().clone()
    opt.step()
    (step, m), = recording_run.logs
    assert step == 0
    assert m["grad_norm/fc1.weight"] == pytest.approx(g.norm().item(), rel=1e-5)
    assert m["update_ratio/fc1.weight"] == pytest.approx(lr * g.norm().item() / w0.norm().item(), rel=1e-4)
    rows = lr * g.norm(dim=1)
    assert m["neuron.max/fc1.weight"] == pytest.approx(rows.max().item(), rel=1e-4)
    assert m["neuron.q50/fc1.weight"] == pytest.approx(rows.quantile(0.5).item(), rel=1e-4)
    s = torch.linalg.svdvals(lr * g)
    assert m["sv.update.spectral_norm/fc1.weight"] == pytest.approx(s[0].item(), rel=1e-4)
    assert m["sv.weight.spectral_norm/fc1.weight"] == pytest.approx(
        torch.linalg.svdvals(model.fc1.weight.detach())[0].item(), rel=1e-5
    )
    grads = [p.grad for p in model.parameters()]
    assert m["grad_norm"] == pytest.approx(torch.sqrt(sum(q.norm() ** 2 for q in grads)).item(), rel=1e-5)


def test_neuron_axis_selects_columns_for_in_out_layouts(recording_run: RecordingRun) -> None:
    w = nn.Parameter(torch.zeros(3, 5))  # stored (in=3, out=5)
    opt = torch.optim.SGD([w], lr=1.0)
    attach(None, opt, run=recording_run, budget=None, log_every=1, neuron_every=1, vectors_every=1,
           neuron_axis={"param0": 1})
    w.grad = torch.zeros(3, 5)
    w.grad[:, 0] = 1.0  # only output neuron 0 learns
    opt.step()
    (arr,) = [a for a in recording_run.arrays if a["key"] == "neuron.update_norm"]
    assert arr["layer"] == "param0" and arr["values"].shape == (5,)
    assert recording_run.logs[0][1]["neuron.frozen_frac/param0"] == pytest.approx(0.8)


def test_conv_weights_are_flattened_per_output_channel(recording_run: RecordingRun) -> None:
    conv = nn.Conv2d(3, 6, 3)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    attach(conv, opt, run=recording_run, budget=None, log_every=1, spectra_every=1, vectors_every=1)
    conv(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))).sum().backward()
    opt.step()
    arrays = {(a["key"], a["layer"]): a["values"] for a in recording_run.arrays}
    assert arrays[("sv.weight", "weight")].shape == (6,)  # min(6, 27)
    assert arrays[("neuron.update_norm", "weight")].shape == (6,)


def test_torch_muon_with_adamw_for_the_rest_closes_one_step_per_training_step(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    opts = [torch.optim.Muon(matrices, lr=0.02), torch.optim.AdamW(others, lr=1e-3)]
    mon = attach(model, opts, run=recording_run, budget=None, log_every=4, spectra_every=2)
    train(model, opts, 8)
    mon.detach()
    assert mon.steps_closed == 8
    assert set(recording_run.series("grad_norm")) == set(range(8))
    assert set(recording_run.series("update_ratio/fc1.bias")) == set(range(8))  # AdamW's param
    assert sorted(recording_run.series("sv.update.stable_rank/fc1.weight")) == [0, 2, 4, 6]
    # Muon's orthogonalized update: all singular values of ΔW are close (NS5 band, ALGORITHMS P2)
    cond = recording_run.series("sv.update.cond/fc2.weight")
    assert all(c < 3.0 for c in cond.values())


def test_one_log_call_per_step_and_nothing_before_the_interval_ends(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    attach(model, opt, run=recording_run, budget=None, log_every=5)
    train(model, opt, 4)
    assert recording_run.logs == []
    train(model, opt, 1)
    assert [s for s, _ in recording_run.logs] == [0, 1, 2, 3, 4]
    train(model, opt, 5)
    assert [s for s, _ in recording_run.logs] == list(range(10))


def test_per_step_work_creates_no_python_floats(recording_run: RecordingRun, monkeypatch) -> None:
    """No .item()/.tolist()/float() between host copies: each of those would be a device sync on a GPU."""
    calls = {"item": 0, "tolist": 0, "float": 0, "cpu": 0}
    for name, attr in (("item", "item"), ("tolist", "tolist"), ("float", "__float__"), ("cpu", "cpu")):
        original = getattr(torch.Tensor, attr)

        def counted(self, *a, _original=original, _name=name, **k):
            if _called_from_probe():  # AdamW itself calls .item() on its CPU step counter
                calls[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, counted)
    model = TinyMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    attach(model, opt, run=recording_run, budget=None, log_every=6, neuron_every=1, spectra_every=1,
           vectors_every=1, internals_every=1)
    train(model, opt, 5)
    assert calls == {"item": 0, "tolist": 0, "float": 0, "cpu": 0}
    train(model, opt, 1)  # the interval's flush: one copy, one conversion
    assert calls["cpu"] == 1 and calls["tolist"] == 1 and calls["item"] == 0
    assert len(recording_run.logs) == 6
    values = [v for _, m in recording_run.logs for v in m.values()]
    assert all(type(v) is float for v in values)
    assert all(isinstance(a["values"], torch.Tensor) and a["values"].device.type == "cpu"
               for a in recording_run.arrays)


def test_our_optimizers_get_introspect_only_on_measured_steps(recording_run: RecordingRun) -> None:
    class Spy(torch.optim.SGD):
        """An SGD exposing the introspection contract, to watch the Monitor toggle it."""

        def __init__(self, params) -> None:
            super().__init__(params, lr=0.1)
            self.introspect = False
            self.last_internals: dict = {}
            self.last_global_internals: dict = {}
            self.seen: list[bool] = []

        def step(self, closure=None):
            self.seen.append(self.introspect)
            return super().step(closure)

    model = TinyMLP()
    opt = Spy(model.parameters())
    mon = attach(model, opt, run=recording_run, budget=None, spectra_every=4, internals_every=None)
    train(model, opt, 9)
    assert opt.seen == [s % 4 == 0 for s in range(9)]
    assert opt.introspect is False
    mon.detach()
    opt.introspect = True  # a user's own setting is left alone
    mon2 = attach(model, opt, run=recording_run, budget=None, spectra_every=1)
    train(model, opt, 1)
    assert opt.introspect is True
    mon2.detach()


def test_internals_the_monitor_asked_for_are_let_go_after_measuring(recording_run: RecordingRun) -> None:
    from probe.optim import Muon

    model = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 4, bias=False))
    opt = Muon(model.parameters())
    attach(model, opt, run=recording_run, budget=None, log_every=1, spectra_every=2, internals_every=None)
    train(model, opt, 3)  # steps 0 and 2 introspected
    assert "sv.post_orth.cond/0.weight" in recording_run.logs[2][1]  # the internals were measured...
    assert opt.introspect is False and opt.last_internals == {}  # ...and not kept afterwards
    opt.introspect = True  # the user's own introspection keeps its results, measured step or not
    train(model, opt, 2)
    assert "sv.post_orth.cond/0.weight" in recording_run.logs[4][1]
    assert set(opt.last_internals) == set(model.parameters())


def test_detach_removes_the_hooks_and_flushes(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = attach(model, opt, run=recording_run, log_every=100)
    train(model, opt, 3)
    mon.detach()
    assert len(recording_run.logs) == 3
    train(model, opt, 3)
    assert len(recording_run.logs) == 3
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_set_step_and_start_step_label_the_records(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, log_every=1, start_step=100)
    train(model, opt, 2)
    mon.set_step(500)
    train(model, opt, 1)
    assert [s for s, _ in recording_run.logs] == [100, 101, 500]
    assert mon.step == 501


def test_samples_seen_from_batch_size(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, opt, run=recording_run, log_every=3, batch_size=32)
    train(model, opt, 3)
    assert recording_run.series("samples_seen") == {0: 32.0, 1: 64.0, 2: 96.0}


@pytest.mark.parametrize("warning_filter", ["always", "error"])  # "error": python -W error, pytest's filterwarnings
def test_a_failing_diagnostic_is_disabled_with_one_warning_and_training_goes_on(
    recording_run: RecordingRun, monkeypatch, warning_filter: str
) -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    def broken(*args, **kwargs):
        raise RuntimeError("svd exploded")

    # raised in a worker thread of the spectra pool, re-raised on the training thread
    monkeypatch.setattr(spectra_pool, "singular_values", broken)  # one matrix of a shape
    monkeypatch.setattr(spectra_pool, "exact_spectra", broken)  # a batch of matrices of one shape
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(warning_filter)  # as errors, the warning must not reach training either
        mon = attach(model, opt, run=recording_run, budget=None, log_every=2, spectra_every=1)
        train(model, opt, 6)
    assert [str(w.message).count("'spectra'") for w in caught] == ([1] if warning_filter == "always" else [])
    assert mon.errors == {"spectra": 1} and "spectra" in mon.disabled
    assert len(recording_run.logs) == 6 and "update_ratio/fc1.weight" in recording_run.keys()


def test_rejects_bad_options() -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="log_every"):
        attach(model, opt, run=RecordingRun(), log_every=0)
    with pytest.raises(ValueError, match=r"Invalid sources.*\['weights'\].*spectra quantity"):
        attach(model, opt, run=RecordingRun(), quantities=[Spectra(sources=("weights",))])
    # a setting that lives with its quantity now: the error says where it went
    with pytest.raises(TypeError, match=r"spectra_sources.*Spectra\(sources=\.\.\.\)"):
        attach(model, opt, run=RecordingRun(), spectra_sources=("weight",))
    with pytest.raises(TypeError, match="unknown options.*spectra_evry"):
        attach(model, opt, run=RecordingRun(), spectra_evry=5)
    with pytest.raises(ValueError, match="Spectra is configured twice"):
        attach(model, opt, run=RecordingRun(), spectra_every=5, quantities=[Spectra(every=10)])
    with pytest.raises(ValueError, match="optimizer"):
        attach(model, [], run=RecordingRun())


def test_an_optimizer_stepped_alone_still_closes_one_step_per_call(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    first = torch.optim.SGD([model.fc1.weight, model.fc1.bias], lr=0.1)
    second = torch.optim.SGD([model.fc2.weight, model.fc2.bias], lr=0.1)
    mon = attach(model, [first, second], run=recording_run, log_every=1)
    train(model, first, 3)  # the last optimizer never steps: a repeated step of `first` closes the previous one
    train(model, [first, second], 1)
    assert mon.steps_closed == 4  # steps 0, 1, 2 closed by re-entry of `first`, step 3 by `second`
    assert [s for s, _ in recording_run.logs] == [0, 1, 2, 3]
    assert "grad_norm/fc2.weight" not in recording_run.logs[2][1]
    assert "grad_norm/fc2.weight" in recording_run.logs[3][1]


def test_a_subclass_calling_super_step_is_observed_once_per_step(recording_run: RecordingRun) -> None:
    class Sub(torch.optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # make sure SGD.step itself carries the hooks
    model = TinyMLP()
    opt = Sub(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, log_every=1)
    train(model, opt, 4)
    assert mon.steps_closed == 4 and [s for s, _ in recording_run.logs] == [0, 1, 2, 3]


def test_embedding_neurons_are_its_feature_columns_not_its_token_rows(recording_run: RecordingRun) -> None:
    model = nn.Sequential(nn.Embedding(50, 6), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, opt, run=recording_run, budget=None, log_every=1, neuron_every=1, vectors_every=1)
    model(torch.tensor([[1, 2, 3]])).sum().backward()  # only 3 of 50 tokens get a gradient
    opt.step()
    (arr,) = [a for a in recording_run.arrays if a["key"] == "neuron.update_norm" and a["layer"] == "0.weight"]
    assert arr["values"].shape == (6,)
    assert recording_run.logs[0][1]["neuron.frozen_frac/0.weight"] == 0.0
    assert not [e for e in recording_run.events if e["key"] == "frozen_neurons" and e["layer"] == "0.weight"]


def test_weight_copies_rotate_through_layers_under_a_memory_limit(recording_run: RecordingRun) -> None:
    model = TinyMLP()  # fc1.weight 512 B, fc1.bias 64 B, fc2.weight 256 B, fc2.bias 16 B
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, opt, run=recording_run, budget=None, log_every=4, capture_max_bytes=600)
    train(model, opt, 4)
    measured = [sorted(k.split("/")[1] for k in m if k.startswith("update_ratio/")) for _, m in recording_run.logs]
    assert measured == [["fc1.bias", "fc1.weight"], ["fc2.bias", "fc2.weight"],
                        ["fc1.bias", "fc1.weight"], ["fc2.bias", "fc2.weight"]]


def test_layers_with_as_many_neurons_each_get_their_own_neuron_and_spectrum_measures(
    recording_run: RecordingRun,
) -> None:
    """Same-width layers are measured in one batch: each key must still carry its own layer's value."""
    gen = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    attach(model, opt, run=recording_run, budget=None, log_every=1, neuron_every=1, spectra_every=1,
           vectors_every=1)
    model(torch.randn(8, 6, generator=gen)).square().mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.ndim == 2}
    opt.step()
    (_, m), = recording_run.logs
    arrays = {(a["key"], a["layer"]): a["values"] for a in recording_run.arrays}
    for name, g in grads.items():
        rows = lr * g.norm(dim=1)
        assert m[f"neuron.max/{name}"] == pytest.approx(rows.max().item(), rel=1e-4)
        assert m[f"neuron.min/{name}"] == pytest.approx(rows.min().item(), rel=1e-4)
        assert m[f"neuron.cv/{name}"] == pytest.approx((rows.std(correction=0) / rows.mean()).item(), rel=1e-4)
        s = torch.linalg.svdvals((lr * g).double())
        assert m[f"sv.update.spectral_norm/{name}"] == pytest.approx(s[0].item(), rel=1e-4)
        assert m[f"sv.update.cond/{name}"] == pytest.approx((s[0] / s[-1]).item(), rel=1e-3)
        # the batched spectra's rows reach the arrays of their own layers too
        for key, expected in (("sv.update", s.float()), ("neuron.update_norm", rows)):
            torch.testing.assert_close(torch.as_tensor(arrays[(key, name)]), expected, rtol=1e-4, atol=1e-6)
    assert len({m[f"neuron.max/{name}"] for name in grads}) == 3  # distinct layers, distinct values


def test_a_step_that_raises_between_the_hooks_does_not_switch_the_monitor_off(
    recording_run: RecordingRun,
) -> None:
    class Flaky(torch.optim.SGD):
        fail = False

        def __init__(self, params) -> None:
            super().__init__(params, lr=0.1)
            self.introspect = False
            self.last_internals: dict = {}
            self.last_global_internals: dict = {}

        def step(self, closure=None):
            if self.fail:
                raise RuntimeError("out of memory (simulated)")
            return super().step(closure)

    model = TinyMLP()
    opt = Flaky(model.parameters())
    mon = attach(model, opt, run=recording_run, log_every=1, budget=None, spectra_every=1)
    train(model, opt, 2)
    opt.fail = True
    with pytest.raises(RuntimeError, match="out of memory"):
        train(model, opt, 1)  # the user catches it and goes on with the next batch
    assert opt.introspect is True  # (the failed step left it on...)
    opt.fail = False
    train(model, opt, 3)
    assert opt.introspect is False  # (...and the Monitor set it back)
    assert [s for s, _ in recording_run.logs] == [0, 1, 2, 3, 4, 5]  # the failed step 2 closes with what it had
    assert all("sv.weight.spectral_norm/fc1.weight" in recording_run.logs[s][1] for s in (0, 1, 3, 4, 5))
    assert not mon.errors


def test_a_step_that_raised_leaves_nothing_of_its_caller_alive(recording_run: RecordingRun) -> None:
    import gc
    import weakref

    class Flaky(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("out of memory (simulated)")

    model = TinyMLP()
    opt = Flaky(model.parameters(), lr=0.1)
    attach(model, opt, run=recording_run, budget=None, log_every=1)
    refs = []

    def train_step() -> None:
        activations = torch.empty(1000)  # stands for the step's big locals
        refs.append(weakref.ref(activations))
        model(torch.randn(4, 8)).square().mean().backward()
        opt.step()

    try:
        train_step()
    except RuntimeError:
        pass  # recover from the out-of-memory: the batch's tensors must be freeable now
    gc.collect()
    assert refs[0]() is None


def test_a_run_object_with_log_but_no_log_at_still_gets_the_records() -> None:
    class OldStyleRun:
        def __init__(self) -> None:
            self.logs: list[tuple[int | None, dict]] = []

        def log(self, metrics, step=None) -> None:
            self.logs.append((step, dict(metrics)))

        def log_array(self, key, values, *, step, layer="") -> None:
            pass

        def log_event(self, key, message, **kwargs) -> None:
            pass

    run = OldStyleRun()
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=run, log_every=1)  # type: ignore[arg-type]
    train(model, opt, 2)
    assert [s for s, _ in run.logs] == [0, 1] and not mon.errors


class _Flaky(torch.optim.SGD):
    """An SGD whose hooked step() raises between its hooks ``failures`` more times."""

    failures = 0

    def step(self, closure=None):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("out of memory (simulated)")
        return super().step(closure)


class _Retrying(_Flaky):
    def step(self, closure=None):
        try:
            return super().step(closure)
        except RuntimeError:
            return super().step(closure)  # e.g. after emptying a cache


class _FallingBack(_Flaky):
    def step(self, closure=None):
        try:
            return super().step(closure)
        except RuntimeError:
            with torch.no_grad():  # a plain update instead of calling the hooked step again
                for group in self.param_groups:
                    for p in group["params"]:
                        p.add_(p.grad, alpha=-group["lr"])
            return None


@pytest.mark.parametrize("cls", [_Retrying, _FallingBack])
def test_a_subclass_that_recovers_from_a_failed_inner_step_is_one_measured_step(
    recording_run: RecordingRun, cls: type[_Flaky]
) -> None:
    _Flaky([nn.Parameter(torch.zeros(1))], lr=0.1)  # make sure _Flaky.step itself carries the hooks
    model = TinyMLP()
    opt = cls(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=1, update_every=1)
    train(model, opt, 2)
    opt.failures = 1  # the next step's inner call dies between its hooks; the outer one recovers
    train(model, opt, 2)
    assert mon.steps_closed == 4 and [s for s, _ in recording_run.logs] == [0, 1, 2, 3]
    assert sorted(recording_run.series("update_ratio/fc1.weight")) == [0, 1, 2, 3]


def test_update_and_neuron_measures_run_with_the_spectra_and_are_charged_as_their_own(
    recording_run: RecordingRun, monkeypatch
) -> None:
    """On the CPU they run while the spectra workers compute: their time must not count as the spectra's."""
    import time

    real = NeuronNorms.measure

    def slow_neurons(self, *args, **kwargs):  # noqa: ANN001, ANN202
        time.sleep(0.05)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(NeuronNorms, "measure", slow_neurons)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=1, update_every=1, neuron_every=1,
                 spectra_every=1)
    train(model, opt, 2)
    expected = {"neuron.cv/fc1.weight", "update_ratio/fc1.weight", "sv.weight.cond/fc1.weight"}
    assert expected <= recording_run.keys()
    assert mon.budget.cost["neuron"] >= 0.05
    assert mon.budget.cost["spectra"] < 0.04  # the tiny spectra alone, not the 50 ms spent meanwhile


def test_update_and_neuron_measures_survive_spectra_that_fail_before_reaching_them(
    recording_run: RecordingRun, monkeypatch
) -> None:
    import probe.diagnostics.quantities.spectra as spectra_module

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("bad matrix")

    monkeypatch.setattr(spectra_module, "as_matrix", broken)  # fails while the spectra requests are built
    _one_step_with_failing_spectra(recording_run)
    assert "update_ratio/fc1.weight" in recording_run.keys()


def _one_step_with_failing_spectra(run: RecordingRun) -> Monitor:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mon = attach(model, opt, run=run, budget=None, log_every=1, update_every=1, spectra_every=1)
        train(model, opt, 1)
    assert "spectra" in mon.disabled
    return mon


def test_on_the_cpu_update_and_neuron_measures_run_inside_the_spectra_computation(
    recording_run: RecordingRun, monkeypatch
) -> None:
    from probe.diagnostics.spectra_pool import SpectraPool

    inside = [False]
    ran: list[tuple[str, bool]] = []
    real_groups = SpectraPool.compute_groups

    def groups(self, requests, meanwhile=None):  # noqa: ANN001, ANN202
        assert meanwhile is not None
        inside[0] = True
        try:
            return real_groups(self, requests, meanwhile)
        finally:
            inside[0] = False

    def recorded(name: str, real):  # noqa: ANN001, ANN202
        return lambda self, *args: ran.append((name, inside[0])) or real(self, *args)

    monkeypatch.setattr(SpectraPool, "compute_groups", groups)
    monkeypatch.setattr(UpdateRatio, "measure", recorded("update", UpdateRatio.measure))
    monkeypatch.setattr(NeuronNorms, "measure", recorded("neuron", NeuronNorms.measure))
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, opt, run=recording_run, budget=None, log_every=1, update_every=1, neuron_every=1,
           spectra_every=1)
    train(model, opt, 2)
    assert ran == [("update", True), ("neuron", True)] * 2
    assert {"update_ratio/fc1.weight", "neuron.cv/fc1.weight"} <= recording_run.keys()


def test_spectra_failing_after_the_measures_ran_neither_repeat_nor_charge_them(
    recording_run: RecordingRun, monkeypatch
) -> None:
    import time

    import probe.diagnostics.spectra_pool as spectra_pool

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("eigensolver failed")

    calls: list[int] = []
    real_update = UpdateRatio.measure

    def slow_update(self, *args):  # noqa: ANN001, ANN202
        calls.append(1)
        time.sleep(0.05)
        return real_update(self, *args)

    monkeypatch.setattr(spectra_pool, "_measure_batch", broken)  # after the measures, or instead of them
    monkeypatch.setattr(UpdateRatio, "measure", slow_update)
    mon = _one_step_with_failing_spectra(recording_run)
    assert calls == [1]
    assert "update_ratio/fc1.weight" in recording_run.keys()
    assert mon.budget.cost["update"] >= 0.05 and mon.budget.cost["spectra"] < 0.04


def test_spectra_of_layers_on_different_devices_are_recorded_per_device(
    recording_run: RecordingRun, monkeypatch
) -> None:
    """One record (one tensor) per device: a model split over devices must not need a cross-device cat."""
    from probe.diagnostics.spectra import Spectrum
    from probe.diagnostics.spectra_pool import SpectraPool, SpectrumGroup

    real_groups = SpectraPool.compute_groups

    def split_over_devices(self, requests, meanwhile=None):  # noqa: ANN001, ANN202
        groups = real_groups(self, requests, meanwhile)
        first = groups[0]  # the same measures, as if on another device ("meta" stands in for a GPU)
        moved = SpectrumGroup(
            first.indices,
            Spectrum(first.spectrum.values.to("meta"), first.spectrum.frob_sq.to("meta"), truncated=False),
            {q: v.to("meta") for q, v in first.stats.items()},
        )
        return [moved, *groups[1:]]

    records: list[tuple[list[str], torch.device]] = []
    monkeypatch.setattr(SpectraPool, "compute_groups", split_over_devices)
    monkeypatch.setattr(Records, "scalars", lambda self, keys, values: records.append(
        (keys, values.device if isinstance(values, torch.Tensor) else None)))
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, opt, run=recording_run, budget=None, log_every=1000, quantities=[Spectra(every=1, workers=1)])
    train(model, opt, 1)
    spectra = [(keys, device) for keys, device in records if keys and keys[0].startswith("sv.")]
    assert sorted(device.type for _, device in spectra) == ["cpu", "meta"]
    measures = ("spectral_norm", "cond", "stable_rank", "eff_rank")
    layers = ("fc1.weight", "fc2.weight")
    assert sorted(k for keys, _ in spectra for k in keys) == sorted(
        f"sv.{src}.{q}/{name}" for src in ("weight", "update") for q in measures for name in layers
    )
