"""Seed a real Optiscope server through its HTTP ingest API with runs whose numbers are known.

Used by the dashboard tests and by ``benchmarks/bench_dashboard.py``. Curves are closed-form so
tests can state the expected time-to-target without reading the data back:
loss(step) = 2·exp(-step/τ) + 0.1 crosses 0.5 first at step ceil(τ·ln 5).
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

XSS_NAME = "<script>alert(1)</script>"
TARGET_LOSS = 0.5
BATCH_SIZE = 128
SECONDS_PER_STEP = 0.1


def loss_at(step: int, tau: float) -> float:
    return 2.0 * math.exp(-step / tau) + 0.1


def first_step_below(target: float, tau: float) -> int:
    """The first integer step whose loss is ≤ target."""
    return math.ceil(tau * math.log(2.0 / (target - 0.1)) - 1e-12)


@dataclass
class Seeder:
    """Posts runs and batches; ``api`` is ``http://host:port/api/v1``."""

    api: str
    token: str
    client: httpx.Client = field(init=False)
    _batch: int = 0

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)

    def close(self) -> None:
        self.client.close()

    def create_run(self, run_id: str, *, name: str, project: str = "dash-tests", optimizer: str | None = None,
                   config: dict[str, Any] | None = None, tags: Sequence[str] = ()) -> dict[str, Any]:
        r = self.client.post("/runs", json={"id": run_id, "project": project, "name": name, "optimizer": optimizer,
                                            "config": config or {}, "tags": list(tags)})
        r.raise_for_status()
        return r.json()

    def post(self, run_id: str, *, scalars: Iterable[dict] = (), arrays: Iterable[dict] = (),
             events: Iterable[dict] = ()) -> dict[str, Any]:
        self._batch += 1
        body = {"batch_id": f"{run_id}:{self._batch}:{time.monotonic_ns()}", "scalars": list(scalars),
                "arrays": list(arrays), "events": list(events)}
        data = gzip.compress(json.dumps(body).encode(), compresslevel=1)
        r = self.client.post(f"/runs/{run_id}/batches", content=data,
                             headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        r.raise_for_status()
        return r.json()

    def finish(self, run_id: str, status: str = "finished") -> None:
        self.client.post(f"/runs/{run_id}/finish", json={"status": status}).raise_for_status()


def _scalar(key: str, steps: np.ndarray, times: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    vals = [v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
            for v in values.tolist()]
    return {"key": key, "steps": steps.tolist(), "times": times.tolist(), "values": vals}


def training_run(seeder: Seeder, run_id: str, *, name: str, tau: float, steps: int = 200,
                 layers: Sequence[str] = ("fc1.weight", "fc2.weight"), optimizer: str = "Muon",
                 config: dict[str, Any] | None = None, tags: Sequence[str] = (), muon: bool = False,
                 normuon: bool = False, fop: bool = False, kfac: bool = False, sv_every: int = 10,
                 sv_width: int = 16, neurons: int = 32, per_layer_scalars: bool = True, finish: bool = True,
                 neuron_arrays: bool = True,
                 t0: float | None = None, seed: int = 0) -> None:
    """A run with global scalars every step, per-layer diagnostics, arrays every ``sv_every`` steps."""
    rng = np.random.default_rng(seed)
    seeder.create_run(run_id, name=name, optimizer=optimizer, config=config or {"lr": 0.02}, tags=tags)
    t0 = time.time() if t0 is None else t0
    st = np.arange(steps, dtype=np.int64)
    ti = t0 + st * SECONDS_PER_STEP
    loss = 2.0 * np.exp(-st / tau) + 0.1
    scalars = [
        _scalar("loss", st, ti, loss),
        _scalar("acc", st, ti, 1.0 - loss / 2.1),
        _scalar("lr", st, ti, np.full(steps, 0.02)),
        _scalar("samples_seen", st, ti, (st * BATCH_SIZE).astype(float)),
        _scalar("step_time", st, ti, np.full(steps, SECONDS_PER_STEP)),
    ]
    arrays: list[dict[str, Any]] = []
    for li, layer in enumerate(layers):
        if per_layer_scalars:
            drift = 1.0 + 0.001 * st
            scalars += [
                _scalar(f"sv.weight.cond/{layer}", st, ti, (10.0 + li) * drift),
                _scalar(f"sv.weight.stable_rank/{layer}", st, ti, 5.0 + 0.1 * li + 0.0 * st),
                _scalar(f"sv.weight.spectral_norm/{layer}", st, ti, 1.0 + 0.01 * li * drift),
                _scalar(f"neuron.cv/{layer}", st, ti, 0.2 + 0.05 * np.sin(st / 20.0 + li)),
                _scalar(f"neuron.frozen_frac/{layer}", st, ti, np.clip(0.01 * li + 0.0 * st, 0, 1)),
                _scalar(f"grad_norm/{layer}", st, ti, 1.0 / (1.0 + st / 50.0)),
            ]
            if muon:
                scalars.append(_scalar(f"orth_err/{layer}", st, ti, np.full(steps, 0.05 + 0.01 * li)))
                scalars.append(_scalar(f"sv.pre_orth.not_lifted/{layer}", st, ti, np.full(steps, 0.02 * li)))
            if normuon:
                scalars.append(_scalar(f"normuon.row_rms_cv_before/{layer}", st, ti, np.full(steps, 0.3 + 0.01 * li)))
                scalars.append(_scalar(f"normuon.row_rms_cv_after/{layer}", st, ti, np.full(steps, 0.01)))
            if fop:
                for q, base in (("parallel", 0.5), ("orthogonal", 0.3), ("gdiff_norm", 0.6), ("s_proj", 0.4),
                                ("cos_g1_g2", 0.8), ("beta", 0.9), ("eta", 0.1), ("kl_base", 2.0),
                                ("kl_cross", -0.2), ("kl_orth", 0.3)):
                    scalars.append(_scalar(f"fop.{q}/{layer}", st, ti, base + 0.05 * np.cos(st / 15.0 + li)))
                if li == 0:
                    scalars.append(_scalar("fop.beta_neg_frac", st, ti, np.full(steps, 0.5)))
                    scalars.append(_scalar("fop.noise_scale", st, ti, 200.0 + 50.0 * np.sin(st / 40.0)))
            if kfac:
                for q, base in (("A_eig_min", 1e-4), ("A_eig_max", 10.0), ("G_eig_min", 1e-6), ("G_eig_max", 1.0),
                                ("damping_rel", 1e-3), ("damping_rel_mean", 2e-2)):
                    scalars.append(_scalar(f"kfac.{q}/{layer}", st, ti, base * (1.0 + 0.1 * np.sin(st / 30.0))))
        for s in range(0, steps, sv_every):
            t = float(t0 + s * SECONDS_PER_STEP)
            sv = np.sort(np.abs(rng.normal(1.0, 0.3, sv_width)) * np.exp(-np.arange(sv_width) / 4.0))[::-1]
            arrays.append({"key": "sv.weight", "layer": layer, "step": s, "time": t, "shape": [sv_width],
                           "values": sv.round(6).tolist()})
            if neuron_arrays:
                arrays.append({"key": "neuron.update_norm", "layer": layer, "step": s, "time": t, "shape": [neurons],
                               "values": np.abs(rng.normal(0.01, 0.003, neurons)).round(7).tolist()})
            if muon:
                arrays.append({"key": "sv.pre_orth", "layer": layer, "step": s, "time": t, "shape": [sv_width],
                               "values": (sv * 3).round(6).tolist()})
                arrays.append({"key": "sv.post_orth", "layer": layer, "step": s, "time": t, "shape": [sv_width],
                               "values": np.clip(rng.uniform(0.5, 1.5, sv_width), 0, None).round(6).tolist()})
            if normuon:
                arrays.append({"key": "normuon.v", "layer": layer, "step": s, "time": t, "shape": [neurons],
                               "values": np.abs(rng.normal(1e-3, 2e-4, neurons)).round(8).tolist()})
            if kfac:
                arrays.append({"key": "kfac.A_eigs", "layer": layer, "step": s, "time": t, "shape": [8],
                               "values": np.geomspace(10, 1e-4, 8).round(8).tolist()})
                arrays.append({"key": "kfac.G_eigs", "layer": layer, "step": s, "time": t, "shape": [8],
                               "values": np.geomspace(1, 1e-6, 8).round(10).tolist()})
    if kfac:
        scalars.append(_scalar("kfac.kl_nu", st, ti, np.full(steps, 0.7)))
    # post in a few batches so no single body is huge
    for i in range(0, len(scalars), 60):
        seeder.post(run_id, scalars=scalars[i:i + 60])
    for i in range(0, len(arrays), 400):
        seeder.post(run_id, arrays=arrays[i:i + 400])
    if finish:
        seeder.finish(run_id)


def infobatch_run(seeder: Seeder, run_id: str, *, name: str, epochs: int = 10, classes: int = 5) -> None:
    """A run with InfoBatch's per-epoch ledger (step = epoch)."""
    seeder.create_run(run_id, name=name, optimizer="SGD", config={"lr": 0.1, "infobatch": {"ratio": 0.5}},
                      tags=["infobatch"])
    t0 = time.time()
    ep = np.arange(epochs, dtype=np.int64)
    ti = t0 + ep * 10.0
    pruned = np.where(ep < epochs - 1, 0.3 + 0.01 * ep, 0.0)
    saved = np.cumsum(pruned) / (ep + 1)
    seeder.post(run_id, scalars=[
        _scalar("infobatch.pruned_frac", ep, ti, pruned),
        _scalar("infobatch.saved_frac_cum", ep, ti, saved),
        _scalar("infobatch.threshold", ep, ti, 1.0 / (1.0 + ep)),
        _scalar("loss", ep, ti, 1.0 / (1.0 + ep)),
    ], arrays=[{"key": "infobatch.class_pruned_frac", "layer": "", "step": int(e), "time": float(ti[e]),
                "shape": [classes], "values": [round(0.1 * c + 0.01 * int(e), 4) for c in range(classes)]}
               for e in ep])
    seeder.finish(run_id)


def seed_many_keys_run(seeder: Seeder, run_id: str, *, project: str, n_keys: int = 10_000) -> None:
    """A run with ``n_keys`` metric keys (``m<chunk>.k<i>``, 3 points each) and a 100-step ``loss``."""
    seeder.create_run(run_id, name="ten-thousand-keys", project=project)
    t = time.time()
    for chunk in range(10):
        seeder.post(run_id, scalars=[{"key": f"m{chunk}.k{i:04d}", "steps": [0, 1, 2], "times": [t] * 3,
                                      "values": [1.0, 2.0, 3.0 + i]} for i in range(n_keys // 10)])
    seeder.post(run_id, scalars=[{"key": "loss", "steps": list(range(100)), "times": [t] * 100,
                                  "values": [1.0 / (1 + s) for s in range(100)]}])
    seeder.finish(run_id)


def seed_suite(seeder: Seeder) -> dict[str, str]:
    """The small data set of the dashboard tests. Returns role -> run id."""
    runs = {"baseline": "run-muon", "fast": "run-normuon", "slow": "run-fopkfac", "infobatch": "run-ib",
            "xss": "run-xss", "live": "run-live"}
    training_run(seeder, runs["baseline"], name="muon-baseline", tau=50.0, optimizer="Muon", muon=True,
                 config={"lr": 0.02, "batch_size": BATCH_SIZE, "model": {"width": 64}}, tags=["muon"])
    training_run(seeder, runs["fast"], name="normuon-fast", tau=25.0, optimizer="NorMuon", muon=True, normuon=True,
                 config={"lr": 0.03, "batch_size": BATCH_SIZE, "model": {"width": 64}}, tags=["normuon"], seed=1)
    training_run(seeder, runs["slow"], name="fop-kfac", tau=100.0, optimizer="FOP", fop=True, kfac=True,
                 config={"lr": 0.1, "batch_size": BATCH_SIZE, "model": {"width": 64}, "damping": 1e-3}, tags=["fop"],
                 seed=2)
    infobatch_run(seeder, runs["infobatch"], name="infobatch-sgd")
    training_run(seeder, runs["xss"], name=XSS_NAME, tau=40.0, steps=20, layers=("fc1.weight",), optimizer="SGD",
                 per_layer_scalars=False, seed=3)
    training_run(seeder, runs["live"], name="live-run", tau=30.0, steps=50, layers=("fc1.weight",), optimizer="Muon",
                 per_layer_scalars=False, finish=False, seed=4)
    # one alert on the baseline run, pointing at a layer and step
    seeder.post(runs["baseline"], events=[{"kind": "alert", "level": "warning", "key": "cond_explode",
                                          "layer": "fc1.weight", "step": 120, "time": time.time(),
                                          "message": "condition number above 1e6", "data": {}}])
    return runs
