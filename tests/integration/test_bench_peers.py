"""``benchmarks/bench_peers.py`` end to end at a tiny size: the README's peers table comes from it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_peers_measures_optiscope_and_says_which_peers_it_skips() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTISCOPE_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_peers.py", "--peers", "optiscope,tensorboard",
         "--steps", "300", "--reps", "2", "--long", "5000", "--optiscope-long", "20000", "--optiscope-reads", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-3000:]
    assert re.search(r"^rep 1 optiscope: [\d,]+ points/s end to end, .*\(loop [\d.]+ s, finish", out, re.M), out
    assert re.search(r"^rep 2 optiscope: [\d,]+ points/s", out, re.M), out
    assert re.search(r"^optiscope\s+[\d,]+\s+[\d,]+", out, re.M), out
    assert "20,000-point series read downsampled" in out and "p95" in out


def test_an_unknown_peer_is_named_in_one_clear_error() -> None:
    done = subprocess.run([sys.executable, "benchmarks/bench_peers.py", "--peers", "optiscope,nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--peers: unknown peer nope (choose from optiscope, trackio" in done.stderr
