"""Two seed groups sent through the real ingest API, for the analysis tests (server and client).

AdamW reaches val_loss 2.4 at step 124 with every seed; NorMuon at 49 (seed 0) or 74 (seeds 1, 2), and
its ``blocks.*.mlp.fc`` neuron update norms are 4× more even (CV × 0.25): the planted "why".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["EVAL_STEPS", "ingest_run", "two_groups"]

EVAL_STEPS = [24, 49, 74, 99, 124, 149]
Post = Callable[..., Any]  # (path, json=...) -> response with .status_code / .json(); paths under /api/v1


def ingest_run(post: Post, project: str, opt: str, seed: int, val_loss: list[float], *,
               cv_scale: float = 1.0) -> str:
    """One run: val_loss every 25 steps (2 s per step), samples_seen, per-layer diagnostics at 50/100."""
    r = post("/runs", json={"id": uuid.uuid4().hex, "project": project, "name": f"gpt-{opt}", "optimizer": opt,
                            "config": {"optimizer": opt, "seed": seed, "lr": 0.02, "model": {"d_model": 64}},
                            "tags": ["demo", "language"]})
    assert r.status_code == 201, r.text
    run_id = str(r.json()["id"])
    rng = np.random.default_rng(1000 + seed + (0 if opt == "adamw" else 500))
    n = len(val_loss)
    scalars: list[dict[str, Any]] = [
        {"key": "val_loss", "steps": EVAL_STEPS[:n], "times": [1000.0 + 2 * s for s in EVAL_STEPS[:n]],
         "values": val_loss},
        {"key": "samples_seen", "steps": list(range(0, 150, 10)), "times": [1000.0] * 15,
         "values": [32.0 * (s + 1) for s in range(0, 150, 10)]},
    ]
    for b in range(2):
        for part, level in (("attn.qkv", 0.3), ("mlp.fc", 0.2)):
            layer = f"blocks.{b}.{part}.weight"
            scale = cv_scale if part == "mlp.fc" else 1.0
            for q, base in (("neuron.cv", level * scale), ("sv.update.cond", 40.0 + 10 * b),
                            ("update_ratio", 0.01)):
                vals = base * (1 + 0.02 * rng.standard_normal(2))
                scalars.append({"key": f"{q}/{layer}", "steps": [50, 100], "times": [1100.0, 1200.0],
                                "values": [float(v) for v in vals]})
    r = post(f"/runs/{run_id}/batches", json={"scalars": scalars})
    assert r.status_code == 200, r.text
    return run_id


def two_groups(post: Post, *, seeds: int = 3) -> tuple[str, list[str], list[str]]:
    """(project, AdamW run ids, NorMuon run ids), seeds 0..seeds-1 in each."""
    project = uuid.uuid4().hex
    adamw = [ingest_run(post, project, "adamw", s, [3.0, 2.8, 2.6, 2.5, 2.39 - 0.02 * s, 2.2])
             for s in range(seeds)]
    normuon = [ingest_run(post, project, "normuon", s, [2.9, 2.39 + 0.02 * s, 2.2, 2.1], cv_scale=0.25)
               for s in range(seeds)]
    return project, adamw, normuon
