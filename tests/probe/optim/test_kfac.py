"""KFAC: the math kernels against dense Kronecker algebra (ALGORITHMS.md P12-P16), the factor conventions,
the hook cadence, checkpointing, non-finite handling and introspection."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.optim import KFAC
from probe.optim._kfac_factors import eigen_denominator, factored_pi, kfac_precondition, kl_clip_factor

#: fp64 dense solve vs eigen route: both are backward-stable, so only round-off of a 30x30 system remains
#: (ALGORITHMS.md measured 2e-14 absolute).
FP64_ATOL = 1e-10
#: float32 comparisons of two equivalent computation orders on O(1) data.
FP32_RTOL = 1e-4
#: P14: the factored-pi preconditioner differs from exact damping by ~16% on a random 6x5 layer;
#: anything above 1% proves it is not silently the same formula.
FACTORED_MIN_REL_DIFF = 1e-2
#: P15: at gamma = 1e3 with O(1) factors, gamma*V differs from grad by ~||A (x) G|| / gamma ~ 1e-3.
LARGE_DAMPING_REL_ERR = 1e-2


def _spd(n: int, gen: torch.Generator) -> Tensor:
    x = torch.randn(n, 2 * n, generator=gen, dtype=torch.float64)
    return x @ x.T / (2 * n)


def _eig(mat: Tensor) -> tuple[Tensor, Tensor]:
    d, q = torch.linalg.eigh(mat)
    return q, d


def _dense_solve(a: Tensor, g: Tensor, grad: Tensor, damping: float) -> Tensor:
    """(A (x) G + damping I)^-1 vec(grad), column-major vec, reshaped back to grad's shape."""
    kron = np.kron(a.numpy(), g.numpy()) + damping * np.eye(a.shape[0] * g.shape[0])
    x = np.linalg.solve(kron, grad.numpy().flatten(order="F"))
    return torch.from_numpy(x.reshape(grad.shape, order="F"))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every parameter from a private generator (no global RNG)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / fan_in**0.5)
    return model


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    return seeded(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype), seed)


def _data(n: int = 32, seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen, dtype=dtype)
    y = torch.randn(n, 3, generator=gen, dtype=dtype)
    return x, y


def _train(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# ---------------------------------------------------------------------------------------------- kernels
def test_eigen_route_equals_dense_damped_kronecker_solve() -> None:  # P12
    gen = torch.Generator().manual_seed(0)
    a, g = _spd(6, gen), _spd(5, gen)
    grad = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    qa, da = _eig(a)
    qg, dg = _eig(g)
    v = kfac_precondition(grad, qa, da, qg, dg, 1e-3)
    assert torch.allclose(v, _dense_solve(a, g, grad, 1e-3), atol=FP64_ATOL, rtol=0)


def test_kronecker_identity_without_damping() -> None:  # P13
    gen = torch.Generator().manual_seed(1)
    a, g = _spd(4, gen), _spd(3, gen)
    grad = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    qa, da = _eig(a)
    qg, dg = _eig(g)
    v = kfac_precondition(grad, qa, da, qg, dg, 0.0)
    assert torch.allclose(v, torch.linalg.solve(g, grad) @ torch.linalg.inv(a), atol=FP64_ATOL)
    eye_a, eye_g = torch.eye(4, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    v_id = kfac_precondition(grad, eye_a, torch.ones(4, dtype=torch.float64), eye_g,
                             torch.ones(3, dtype=torch.float64), 0.0)
    assert torch.allclose(v_id, grad, atol=FP64_ATOL)


def test_factored_pi_is_a_different_preconditioner() -> None:  # P14
    gen = torch.Generator().manual_seed(2)
    a, g = _spd(5, gen), _spd(6, gen)
    grad = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    qa, da = _eig(a)
    qg, dg = _eig(g)
    gamma = 1e-3
    exact = kfac_precondition(grad, qa, da, qg, dg, gamma)
    fact = kfac_precondition(grad, qa, da, qg, dg, gamma, factored=True)
    pi = float(factored_pi(da, dg))
    assert pi == pytest.approx(((torch.trace(a) / 5) / (torch.trace(g) / 6)).sqrt().item(), rel=1e-12)
    root = gamma ** 0.5
    want = torch.linalg.solve(g + root / pi * torch.eye(6, dtype=torch.float64), grad) @ torch.linalg.inv(
        a + pi * root * torch.eye(5, dtype=torch.float64))
    assert torch.allclose(fact, want, atol=FP64_ATOL)
    # Never assert factored == exact: they differ by design.
    assert (fact - exact).norm() / exact.norm() > FACTORED_MIN_REL_DIFF


def test_large_damping_washes_out_curvature() -> None:  # P15
    gen = torch.Generator().manual_seed(3)
    a, g = _spd(6, gen), _spd(5, gen)
    grad = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    qa, da = _eig(a)
    qg, dg = _eig(g)
    cosines = []
    for gamma in (1e-3, 1e-1, 1e1, 1e3):
        v = kfac_precondition(grad, qa, da, qg, dg, gamma)
        cosines.append(float(F.cosine_similarity(v.flatten(), grad.flatten(), dim=0)))
    assert cosines == sorted(cosines)
    assert cosines[-1] > 0.9999
    v = kfac_precondition(grad, qa, da, qg, dg, 1e3)
    # gamma V = (I + F/gamma)^-1 grad -> grad with relative error ~ ||F|| / gamma.
    assert (1e3 * v - grad).norm() / grad.norm() < LARGE_DAMPING_REL_ERR


@pytest.mark.parametrize("vg", [1e-6, 1e-3, 0.5, 40.0])
def test_kl_clip_bounds_the_quadratic_model(vg: float) -> None:  # P16, functional form
    kappa = 1e-3
    nu = kl_clip_factor(torch.tensor(vg, dtype=torch.float64), kappa)
    assert float(nu * nu * vg) == pytest.approx(min(kappa, vg), rel=1e-12)


@pytest.mark.parametrize("vg", [0.0, -1.0, float("nan"), float("inf")])
def test_kl_clip_is_guarded_for_degenerate_sums(vg: float) -> None:
    nu = kl_clip_factor(torch.tensor(vg), 1e-3)
    assert float(nu) == 1.0  # no clipping where the quadratic model is meaningless
    assert float(kl_clip_factor(torch.tensor(5.0), None)) == 1.0


def test_exact_damping_denominator_is_outer_product_plus_gamma() -> None:
    da = torch.tensor([0.0, 1.0, 2.0])
    dg = torch.tensor([3.0, 4.0])
    assert torch.equal(eigen_denominator(da, dg, 0.5), torch.outer(dg, da) + 0.5)


# ---------------------------------------------------------------------------------------------- optimizer
def test_kl_clip_in_step_satisfies_trust_region() -> None:  # P16 through the optimizer
    x, y = _data()
    kappa, lr = 1e-4, 0.3
    m_clip, m_free = _mlp(), _mlp()
    o_clip = KFAC(m_clip, lr=lr, momentum=0.0, kl_clip=kappa, factor_update_interval=1, inv_update_interval=1)
    o_free = KFAC(m_free, lr=lr, momentum=0.0, kl_clip=None, factor_update_interval=1, inv_update_interval=1)
    o_clip.introspect = True
    raw = []
    for m, o in ((m_clip, o_clip), (m_free, o_free)):
        o.zero_grad()
        F.mse_loss(m(x), y).backward()
        raw.append([p.grad.clone() for p in m.parameters()])
        o.step()
    v = [p.grad for p in m_free.parameters()]
    clipped = [p.grad for p in m_clip.parameters()]
    vg = lr * lr * sum((vi * gi).sum() for vi, gi in zip(v, raw[1]))
    nu = o_clip.last_global_internals["kl_nu"]
    assert float(nu) < 1.0  # the clip is active in this configuration
    for c, vi in zip(clipped, v):
        assert torch.allclose(c, nu * vi, rtol=FP32_RTOL, atol=1e-8)
    assert float(nu * nu * vg) == pytest.approx(min(kappa, float(vg)), rel=1e-4)


def test_linear_factors_follow_the_empirical_fisher_convention() -> None:
    x, y = _data(n=16)
    model = _mlp()
    opt = KFAC(model, lr=0.0, factor_decay=0.0, factor_update_interval=1, inv_update_interval=1)
    # Per-example gradients of the summed loss w.r.t. the last layer's output.
    h = model[1](model[0](x)).detach()
    out = model[2](h).detach().requires_grad_(True)
    per_example = ((out - y) ** 2).mean(dim=1)
    (gs,) = torch.autograd.grad(per_example.sum(), out)
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
    st = opt.state[model[2].weight]
    a_bar = torch.cat([h, torch.ones(16, 1)], dim=1)
    assert torch.allclose(st["A"], a_bar.T @ a_bar / 16, rtol=FP32_RTOL, atol=1e-6)
    assert torch.allclose(st["G"], gs.T @ gs / 16, rtol=FP32_RTOL, atol=1e-7)


def test_conv_factors_average_patches_and_sum_locations() -> None:
    gen = torch.Generator().manual_seed(4)
    conv = seeded(nn.Conv2d(2, 3, 3, padding=1, stride=2))
    x = torch.randn(4, 2, 6, 6, generator=gen)
    target = torch.randn(4, 3, 3, 3, generator=gen)
    opt = KFAC(conv, lr=0.0, factor_decay=0.0, factor_update_interval=1, inv_update_interval=1)
    out = conv(x)
    out.retain_grad()
    F.mse_loss(out, target).backward()
    opt.step()
    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 18)
    a_bar = torch.cat([patches, torch.ones(patches.shape[0], 1)], dim=1)
    rows = (out.grad * 4).permute(0, 2, 3, 1).reshape(-1, 3)  # per-example grads of the summed loss
    st = opt.state[conv.weight]
    assert torch.allclose(st["A"], a_bar.T @ a_bar / a_bar.shape[0], rtol=FP32_RTOL, atol=1e-6)
    assert torch.allclose(st["G"], rows.T @ rows / 4, rtol=FP32_RTOL, atol=1e-7)


def test_hooks_capture_only_on_factor_steps_and_in_training_with_grad() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.01, factor_update_interval=3, inv_update_interval=3)
    layer = opt._layers[0]
    snapshots = []
    for _ in range(4):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        captured = layer.a_sum is not None
        opt.step()
        snapshots.append((captured, opt.state[model[0].weight]["A"].clone()))
    assert [c for c, _ in snapshots] == [True, False, False, True]
    assert torch.equal(snapshots[0][1], snapshots[2][1])
    assert not torch.equal(snapshots[2][1], snapshots[3][1])
    # eval() and no_grad forwards on a factor step capture nothing.
    opt2 = KFAC(_mlp(), lr=0.01)
    m2 = opt2._layers[0].module
    with torch.no_grad():
        _ = opt2._layers[0].module(x)
    m2.eval()
    out = m2(x).sum()
    out.backward()
    assert opt2._layers[0].a_sum is None and opt2._layers[0].g_sum is None


def test_remove_hooks_stops_capturing() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.01, factor_update_interval=1)
    opt.remove_hooks()
    _train(model, opt, x, y, 2)
    assert torch.equal(opt.state[model[0].weight]["A"], torch.eye(7))


def test_state_dict_round_trip_continues_identically() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.05, factor_update_interval=2, inv_update_interval=4)
    _train(model, opt, x, y, 5)
    clone = copy.deepcopy(model)
    opt2 = KFAC(clone, lr=0.05, factor_update_interval=2, inv_update_interval=4)
    sd = opt.state_dict()
    assert {"A", "G", "QA", "dA", "QG", "dG", "momentum_buffer"} <= set(sd["state"][0])
    opt2.load_state_dict(copy.deepcopy(sd))
    assert opt2.steps == 5
    _train(model, opt, x, y, 4)
    _train(clone, opt2, x, y, 4)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_params_without_grad_are_skipped() -> None:
    x, y = _data()
    model = seeded(nn.ModuleDict({"used": nn.Linear(6, 3), "unused": nn.Linear(6, 3)}))
    before = [p.clone() for p in model["unused"].parameters()]
    opt = KFAC(model, lr=0.05, factor_update_interval=1, inv_update_interval=1)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model["used"](x), y).backward()
        opt.step()
    for p, b in zip(model["unused"].parameters(), before):
        assert torch.equal(p, b)
        assert p not in opt.state or "momentum_buffer" not in opt.state[p]


def test_nonfinite_gradient_skips_the_step_and_keeps_factors_finite() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.05, factor_update_interval=1, inv_update_interval=1)
    _train(model, opt, x, y, 2)
    params = [p.clone() for p in model.parameters()]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    factors = opt.state[model[0].weight]["A"].clone()
    opt.zero_grad()
    bad_x = x.clone()
    bad_x[0, 0] = float("nan")
    F.mse_loss(model(bad_x), y).backward()
    opt.step()
    assert int(opt.nonfinite_skips) == 1
    for p, b, q in zip(model.parameters(), bufs, params):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], b)
    assert torch.equal(opt.state[model[0].weight]["A"], factors)
    for st in opt.state.values():
        for t in st.values():
            assert torch.isfinite(t).all()
    losses = _train(model, opt, x, y, 3)  # training resumes
    assert int(opt.nonfinite_skips) == 1 and losses[-1] < losses[0]


def test_schedules_for_damping_and_intervals() -> None:
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    o1 = KFAC(m1, lr=0.05, damping=1e-2, factor_update_interval=1, inv_update_interval=2)
    o2 = KFAC(m2, lr=0.05, damping=lambda k: 1e-2, factor_update_interval=lambda k: 1,
              inv_update_interval=lambda k: 2)
    _train(m1, o1, x, y, 3)
    _train(m2, o2, x, y, 3)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    bad = KFAC(_mlp(), lr=0.05, damping=lambda k: -1.0)
    bad.zero_grad()
    F.mse_loss(bad._layers[0].module(x)[:, :3], y).backward()
    with pytest.raises(ValueError, match=r"damping.*-1\.0"):
        bad.step()


def test_lr_scheduler_changes_the_step() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.0 if k >= 1 else 1.0)
    _train(model, opt, x, y, 1)
    sched.step()
    before = [p.clone() for p in model.parameters()]
    opt.param_groups[0]["momentum"] = 0.0
    _train(model, opt, x, y, 1)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lr": -1.0}, r"lr.*-1\.0"),
        ({"momentum": 1.0}, r"momentum.*1\.0"),
        ({"weight_decay": -0.1}, r"weight_decay.*-0\.1"),
        ({"damping": 0.0}, r"damping.*0\.0"),
        ({"damping": "big"}, r"damping.*big"),
        ({"factor_decay": 1.0}, r"factor_decay.*1\.0"),
        ({"kl_clip": -1e-3}, r"kl_clip.*-0\.001"),
        ({"factor_update_interval": 0}, r"factor_update_interval.*0"),
        ({"inv_update_interval": 2.5}, r"inv_update_interval.*2\.5"),
        ({"factored_pi": 1}, r"factored_pi.*1"),
        ({"loss_reduction": "avg"}, r"loss_reduction.*avg"),
    ],
)
def test_invalid_hyperparameters_are_refused(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        KFAC(_mlp(), **kwargs)


def test_introspection_is_off_by_default_and_never_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.05, factor_update_interval=1, inv_update_interval=2)

    def no_item(self: Tensor) -> float:
        raise AssertionError(".item() called inside step()")

    _train(model, opt, x, y, 1)
    assert opt.last_internals == {} and opt.last_global_internals == {}
    opt.introspect = True
    monkeypatch.setattr(Tensor, "item", no_item)
    for step in range(2):  # step 1 refreshes nothing, step 2 refreshes the eigenbasis
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        info = opt.last_internals[model[0].weight]
        for key in ("A_eig_min", "A_eig_max", "A_eig_mean", "G_eig_min", "G_eig_max", "G_eig_mean", "damping", "pi"):
            assert info[key].dim() == 0 and not info[key].requires_grad
        assert ("A_eigs" in info) == (step == 1)
    monkeypatch.undo()
    info = opt.last_internals[model[0].weight]
    assert info["A_eigs"].shape == (7,) and info["G_eigs"].shape == (16,)
    assert float(info["A_eig_min"]) >= 0
    assert float(info["A_eig_max"]) == pytest.approx(float(info["A_eigs"].max()))
    assert float(info["G_eig_mean"]) == pytest.approx(float(info["G_eigs"].mean()))
    assert opt.last_global_internals["kl_nu"].dim() == 0


def test_step_hooks_of_torch_optimizer_fire() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.05)
    seen: list[str] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    _train(model, opt, x, y, 1)
    assert seen == ["pre", "post"]


@pytest.mark.parametrize(("dtype", "factored"), [(torch.float32, False), (torch.float64, False),
                                                (torch.float32, True)])
def test_cnn_loss_decreases(dtype: torch.dtype, factored: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    layers = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    model = seeded(layers.to(dtype))
    x = torch.randn(32, 1, 4, 4, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (32,), generator=gen)
    opt = KFAC(model, lr=0.1, kl_clip=1e-2, factor_update_interval=1, inv_update_interval=5,
               factored_pi=factored)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(st["A"].dtype == dtype for st in opt.state.values() if "A" in st)


def test_deterministic_runs_are_bitwise_equal() -> None:
    x, y = _data()
    runs: list[list[Tensor]] = []
    for _ in range(2):
        model = _mlp()
        _train(model, KFAC(model, lr=0.05, factor_update_interval=1, inv_update_interval=2), x, y, 4)
        runs.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*runs):
        assert torch.equal(p, q)



def test_deepcopied_model_does_not_feed_the_original_optimizer() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.05, factor_update_interval=1)
    twin = copy.deepcopy(model)  # carries a copy of the forward hooks
    F.mse_loss(twin(x), y).backward()
    assert all(layer.a_sum is None for layer in opt._layers)


def test_damping_change_between_inverse_updates_takes_effect() -> None:
    x, y = _data()
    model = _mlp()
    opt = KFAC(model, lr=0.05, momentum=0.0, kl_clip=None, factor_update_interval=1, inv_update_interval=10)
    _train(model, opt, x, y, 1)  # eigenbasis computed at step 0 with damping 1e-3
    for damping in (1.0, 1e-3):  # a scheduler changing damping mid-interval
        opt.param_groups[0]["damping"] = damping
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        raw = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], dim=1).clone()
        opt.step()
        st = opt.state[model[0].weight]
        want = kfac_precondition(raw, st["QA"], st["dA"], st["QG"], st["dG"], damping)
        got = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], dim=1)
        assert torch.allclose(got, want, rtol=FP32_RTOL, atol=1e-7)
