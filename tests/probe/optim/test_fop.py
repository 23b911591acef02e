"""FOP: the per-layer formulas against a dense fp64 reference and ALGORITHMS.md P17-P20, the half-batch
capture (no extra backward), the KFAC -> FOP one-line switch, odd batches, and the optimizer contract."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.optim import FOP, KFAC
from probe.optim._kfac_factors import kfac_precondition
from probe.optim.fop import fop_direction
from tests.probe.optim.test_kfac import _spd, seeded

#: fp64 eigenbasis evaluation vs dense (30x30) Kronecker algebra: round-off only.
FP64_ATOL = 1e-10
#: P17: ALGORITHMS.md measured -2.8e-13 for <g_avg, g_perp>_F on O(1) data.
ORTHO_ATOL = 1e-11
#: float32 comparison of a gradient assembled from hook captures vs one from a separate backward:
#: different summation orders over <= 64 examples.
FP32_RTOL = 1e-4
FP32_ATOL = 1e-6


def _setup(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """Random SPD A (6x6), G (5x5), half-batch gradients g1, g2 (5x6) and their eigendecompositions."""
    gen = torch.Generator().manual_seed(seed)
    a, g = _spd(6, gen), _spd(5, gen)
    g1 = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    g2 = g1 + 0.7 * torch.randn(5, 6, generator=gen, dtype=torch.float64)
    da, qa = torch.linalg.eigh(a)
    dg, qg = torch.linalg.eigh(g)
    return a, g, g1, g2, (qa, da, qg, dg)


def _vec(x: Tensor) -> np.ndarray:
    return x.numpy().flatten(order="F")


def _dense_reference(
    a: Tensor, g: Tensor, g1: Tensor, g2: Tensor, gamma: float
) -> dict[str, float | np.ndarray]:
    fisher = np.kron(a.numpy(), g.numpy())
    minv = np.linalg.inv(fisher + gamma * np.eye(fisher.shape[0]))
    ga, gd = _vec((g1 + g2) / 2), _vec(g1 - g2)
    s = (gd @ fisher @ ga) / (ga @ fisher @ ga)
    gp = gd - s * ga
    d, e = ga @ minv @ gp, gp @ minv @ gp
    beta = d / e
    comb = ga + beta * gp
    eta = (ga @ minv @ comb) / (comb @ minv @ comb)
    return {"s_proj": s, "D": d, "E": e, "beta": beta, "eta": eta, "dir": eta * minv @ comb, "gp": gp,
            "ga": ga, "fisher": fisher, "minv": minv, "N": ga @ minv @ ga}


def test_fop_direction_matches_dense_fp64_reference() -> None:
    a, g, g1, g2, (qa, da, qg, dg) = _setup()
    ref = _dense_reference(a, g, g1, g2, 1e-3)
    v, stats = fop_direction((g1 + g2) / 2, g1 - g2, qa, da, qg, dg, 1e-3, with_stats=True)
    for key in ("s_proj", "D", "E", "beta", "eta"):
        assert float(stats[key]) == pytest.approx(float(ref[key]), rel=1e-9, abs=FP64_ATOL), key
    assert np.allclose(_vec(v), ref["dir"], atol=FP64_ATOL)
    fisher = ref["fisher"]
    orthogonal, gavg_fisher = np.sqrt(ref["gp"] @ fisher @ ref["gp"]), np.sqrt(ref["ga"] @ fisher @ ref["ga"])
    assert float(stats["orthogonal"]) == pytest.approx(float(orthogonal), rel=1e-9)
    assert float(stats["gavg_fisher"]) == pytest.approx(float(gavg_fisher), rel=1e-9)
    # KL-norm split (Eq. 21): the three terms of g_comb^T Q g_comb with Q = M^-1 F M^-1
    q = ref["minv"] @ fisher @ ref["minv"]
    ga, gp, beta = ref["ga"], ref["gp"], ref["beta"]
    expected = {"kl_base": ga @ q @ ga, "kl_cross": 2 * beta * ga @ q @ gp, "kl_orth": beta**2 * gp @ q @ gp}
    for key, value in expected.items():
        assert float(stats[key]) == pytest.approx(float(value), rel=1e-9, abs=FP64_ATOL), key
    comb = ga + beta * gp
    assert sum(float(stats[k]) for k in expected) == pytest.approx(float(comb @ q @ comb), rel=1e-9)


def test_projection_is_fisher_orthogonal() -> None:  # P17
    a, g, g1, g2, _ = _setup(1)
    ref = _dense_reference(a, g, g1, g2, 1e-3)
    assert abs(ref["ga"] @ ref["fisher"] @ ref["gp"]) < ORTHO_ATOL


def test_beta_star_minimises_the_quadratic_model() -> None:  # P18
    a, g, g1, g2, (qa, da, qg, dg) = _setup(2)
    ref = _dense_reference(a, g, g1, g2, 1e-3)
    _, stats = fop_direction((g1 + g2) / 2, g1 - g2, qa, da, qg, dg, 1e-3)
    beta = float(stats["beta"])
    ga, gp, minv = ref["ga"], ref["gp"], ref["minv"]

    def j(b: float) -> float:
        x = ga + b * gp
        return float(-2 * ga @ minv @ x + 0.5 * x @ minv @ x)

    grid = np.linspace(beta - 1.0, beta + 1.0, 20001)
    assert grid[int(np.argmin([j(b) for b in grid]))] == pytest.approx(beta, abs=2e-4)
    # With F = 2I the Euclidean and Fisher metrics agree, so beta* = 0 and FOP is KFAC.
    eye6, eye5 = torch.eye(6, dtype=torch.float64), torch.eye(5, dtype=torch.float64)
    _, flat = fop_direction((g1 + g2) / 2, g1 - g2, eye6, torch.full((6,), 2**0.5, dtype=torch.float64),
                            eye5, torch.full((5,), 2**0.5, dtype=torch.float64), 1e-3)
    assert abs(float(flat["beta"])) < 1e-12


def test_swap_invariance_and_identical_halves_guard() -> None:  # P19
    _, _, g1, g2, (qa, da, qg, dg) = _setup(3)
    v12, s12 = fop_direction((g1 + g2) / 2, g1 - g2, qa, da, qg, dg, 1e-3)
    v21, s21 = fop_direction((g1 + g2) / 2, g2 - g1, qa, da, qg, dg, 1e-3)
    assert torch.allclose(v12, v21, atol=FP64_ATOL)
    for key in ("s_proj", "D", "beta"):
        assert float(s12[key]) == pytest.approx(-float(s21[key]), rel=1e-9)
    assert float(s12["E"]) == pytest.approx(float(s21["E"]), rel=1e-9)
    v_same, s_same = fop_direction(g1, torch.zeros_like(g1), qa, da, qg, dg, 1e-3)
    assert float(s_same["beta"]) == 0.0 and float(s_same["eta"]) == pytest.approx(1.0, rel=1e-12)
    assert torch.allclose(v_same, kfac_precondition(g1, qa, da, qg, dg, 1e-3), atol=FP64_ATOL)
    assert torch.isfinite(v_same).all()
    zero, s_zero = fop_direction(torch.zeros_like(g1), torch.zeros_like(g1), qa, da, qg, dg, 1e-3)
    assert torch.equal(zero, torch.zeros_like(zero)) and float(s_zero["eta"]) == 0.0


def test_eta_star_conventions() -> None:  # P20
    a, g, g1, g2, (qa, da, qg, dg) = _setup(4)
    ref = _dense_reference(a, g, g1, g2, 1e-3)
    _, avg = fop_direction((g1 + g2) / 2, g1 - g2, qa, da, qg, dg, 1e-3, eta_convention="avg")
    _, tot = fop_direction((g1 + g2) / 2, g1 - g2, qa, da, qg, dg, 1e-3, eta_convention="sum")
    n, d, e = float(ref["N"]), float(ref["D"]), float(ref["E"])
    want = (n + d * d / e) / (n + 3 * d * d / e)
    assert float(avg["eta"]) == pytest.approx(want, rel=1e-9)
    assert 1 / 3 < float(avg["eta"]) <= 1
    assert float(tot["eta"]) == pytest.approx(2 * want, rel=1e-9)
    with pytest.raises(ValueError, match="eta_convention.*bogus"):
        fop_direction(g1, g2, qa, da, qg, dg, 1e-3, eta_convention="bogus")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- optimizer
def _cnn(dtype: torch.dtype = torch.float32) -> nn.Module:
    layers = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3))
    return seeded(layers.to(dtype))


def _batch(n: int, seed: int = 7, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 4, 4, generator=gen, dtype=dtype), torch.randn(n, 3, generator=gen, dtype=dtype)


def _grads(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def _layer_matrix(grads: list[Tensor], i: int) -> Tensor:
    w, b = grads[2 * i], grads[2 * i + 1]
    return torch.cat([w.reshape(w.shape[0], -1), b[:, None]], dim=1)


def _wide_mlp() -> nn.Module:
    # Layer 0 (32 x 17+1) with 4 rows per half takes the low-rank route for S_1; layer 1 the dense one.
    return seeded(nn.Sequential(nn.Flatten(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)))


@pytest.mark.parametrize(("arch", "n"), [("cnn", 8), ("cnn", 7), ("mlp", 8), ("mlp", 7)])
def test_half_batch_gradients_come_from_the_single_backward(arch: str, n: int) -> None:
    model = _cnn() if arch == "cnn" else _wide_mlp()
    x, y = _batch(n)
    ref_model = copy.deepcopy(model)
    g_h1 = _grads(ref_model, x[0::2], y[0::2])  # per-half mean losses, separate backward passes
    g_h2 = _grads(ref_model, x[1::2], y[1::2])
    g_all = _grads(ref_model, x, y)
    opt = FOP(model, lr=0.0, momentum=0.0)
    opt.introspect = True
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    if arch == "mlp":  # both ways of holding S_1 are exercised
        assert len(opt._layers[0].split_rows) == 1 and opt._layers[1].split_sum is not None
    opt.step()
    layers = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    for i, layer in enumerate(layers):
        info = opt.last_internals[layer.weight]
        g1, g2, ga = _layer_matrix(g_h1, i), _layer_matrix(g_h2, i), _layer_matrix(g_all, i)
        assert float(info["g1_norm"]) == pytest.approx(float(g1.norm()), rel=FP32_RTOL)
        assert float(info["g2_norm"]) == pytest.approx(float(g2.norm()), rel=FP32_RTOL)
        assert float(info["gavg_norm"]) == pytest.approx(float(ga.norm()), rel=FP32_RTOL)
        assert float(info["gdiff_norm"]) == pytest.approx(float((g1 - g2).norm()), rel=FP32_RTOL)
        cos = float((g1 * g2).sum() / (g1.norm() * g2.norm()))
        assert float(info["cos_g1_g2"]) == pytest.approx(cos, rel=FP32_RTOL, abs=FP32_ATOL)


def test_batch_of_one_falls_back_to_kfac() -> None:
    model = _cnn()
    x, y = _batch(1)
    opt = FOP(model, lr=0.1)
    opt.introspect = True
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
    info = opt.last_internals[model[3].weight]
    assert float(info["beta"]) == 0.0 and float(info["eta"]) == pytest.approx(1.0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_identical_halves_reproduce_kfac_exactly_enough() -> None:  # P19 through the optimizer
    x, y = _batch(8)
    x, y = x.repeat_interleave(2, dim=0), y.repeat_interleave(2, dim=0)  # H1 == H2
    m_k, m_f = _cnn(), _cnn()
    kw = dict(lr=0.1, factor_update_interval=1, inv_update_interval=2)
    o_k, o_f = KFAC(m_k, **kw), FOP(m_f, **kw)  # the one-line switch
    o_f.introspect = True
    for _ in range(3):
        for m, o in ((m_k, o_k), (m_f, o_f)):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
        assert all(float(info["beta"]) == 0.0 for info in o_f.last_internals.values())
    for p, q in zip(m_k.parameters(), m_f.parameters()):
        assert torch.allclose(p, q, rtol=FP32_RTOL, atol=FP32_ATOL)


def test_fop_differs_from_kfac_and_trains() -> None:
    x, y = _batch(32)
    m_k, m_f = _cnn(), _cnn()
    kw = dict(lr=0.1, kl_clip=1e-2, factor_update_interval=1, inv_update_interval=5)
    o_k, o_f = KFAC(m_k, **kw), FOP(m_f, **kw)
    losses = []
    for _ in range(25):
        o_f.zero_grad()
        loss = F.mse_loss(m_f(x), y)
        loss.backward()
        o_f.step()
        losses.append(float(loss.detach()))
        o_k.zero_grad()
        F.mse_loss(m_k(x), y).backward()
        o_k.step()
    assert losses[-1] < 0.5 * losses[0]
    assert any(not torch.allclose(p, q) for p, q in zip(m_k.parameters(), m_f.parameters()))


def test_fop_captures_halves_every_step_but_factors_on_cadence() -> None:
    x, y = _batch(8)
    model = _cnn()
    opt = FOP(model, lr=0.01, factor_update_interval=3)
    layer = opt._layers[1]
    seen = []
    for _ in range(4):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        seen.append((layer.split_sum is not None, layer.a_sum is not None))
        opt.step()
    assert seen == [(True, True), (True, False), (True, False), (True, True)]
    model.eval()
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    assert layer.split_sum is None


def test_fop_introspection_keys_without_item(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _batch(8)
    model = _cnn()
    opt = FOP(model, lr=0.05)
    opt.introspect = True

    def no_item(self: Tensor) -> float:
        raise AssertionError(".item() called inside step()")

    monkeypatch.setattr(Tensor, "item", no_item)
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
    monkeypatch.undo()
    keys = {"A_eig_min", "A_eig_max", "A_eig_mean", "G_eig_min", "G_eig_max", "G_eig_mean", "damping", "pi",
            "A_eigs", "G_eigs",
            "g1_norm", "g2_norm", "gavg_norm", "gdiff_norm", "cos_g1_g2", "gavg_fisher", "gdiff_fisher",
            "parallel", "orthogonal", "s_proj", "D", "E", "beta", "eta", "kl_base", "kl_cross", "kl_orth"}
    info = opt.last_internals[model[0].weight]
    assert set(info) == keys
    assert all(t.dim() == (1 if k.endswith("eigs") else 0) for k, t in info.items())
    assert set(opt.last_global_internals) == {"kl_nu"}


def test_fop_state_dict_round_trip_and_nonfinite_skip() -> None:
    x, y = _batch(8)
    model = _cnn()
    kw = dict(lr=0.05, factor_update_interval=1, inv_update_interval=2, eta_convention="sum")
    opt = FOP(model, **kw)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    clone = copy.deepcopy(model)
    opt2 = FOP(clone, **kw)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    before = [p.clone() for p in model.parameters()]
    bad = x.clone()
    bad[3] = float("inf")
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        F.mse_loss(m(bad), y).backward()
        o.step()
        assert int(o.nonfinite_skips) == 1
        for _ in range(2):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"eta_convention": "mean"}, r"eta_convention.*mean"), ({"beta_guard": -1.0}, r"beta_guard.*-1\.0"),
     ({"damping": -2.0}, r"damping.*-2\.0")],
)
def test_fop_invalid_hyperparameters(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        FOP(_cnn(), **kwargs)


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_gradient_accumulation_matches_one_batch(cls: type[KFAC]) -> None:
    x, y = _batch(16)
    m_one, m_acc = _wide_mlp(), _wide_mlp()
    kw = dict(lr=0.1, factor_update_interval=1, inv_update_interval=1)
    o_one, o_acc = cls(m_one, **kw), cls(m_acc, **kw)
    for _ in range(3):
        o_one.zero_grad()
        F.mse_loss(m_one(x), y).backward()
        o_one.step()
        o_acc.zero_grad()
        for part in (slice(0, 8), slice(8, 16)):  # even-sized micro-batches keep FOP's halves identical
            (F.mse_loss(m_acc(x[part]), y[part]) / 2).backward()
        o_acc.step()
    for p, q in zip(m_one.parameters(), m_acc.parameters()):
        assert torch.allclose(p, q, rtol=FP32_RTOL, atol=FP32_ATOL)
