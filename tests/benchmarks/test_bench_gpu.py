"""``benchmarks/bench_gpu.py --quick`` runs every section on the CPU, so the GPU benchmark cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ["gemm", "newton_schulz", "optimizer_step", "sync_audit", "normuon_vs_muon", "spectra",
            "kfac_fop_block", "probe_overhead"]


def test_quick_mode_runs_every_section_and_writes_partial_results(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPTISCOPE_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert report["mode"] == "quick" and report["machine"].startswith("CPU")
    assert list(report["sections"]) == SECTIONS
    for name, sec in report["sections"].items():
        assert sec["status"] == "ok", (name, sec.get("traceback"))
    res = {k: v["result"] for k, v in report["sections"].items()}
    assert math.isfinite(res["newton_schulz"]["ratio"]) and res["newton_schulz"]["ratio"] > 0
    assert res["optimizer_step"]["ours"]["device_ms"] > 0
    assert res["sync_audit"]["results"]["KFAC"] == "n/a (CPU)"
    assert set(res["probe_overhead"]["steps"]) == {"no probe", "default", "everything every step"}
    assert res["kfac_fop_block"]["FOP"]["refresh_step"]["device_ms"] > 0
    assert "## probe_overhead (ok" in (tmp_path / "bench_gpu.md").read_text()
