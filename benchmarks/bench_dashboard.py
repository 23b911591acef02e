"""Dashboard benchmark: real ``optiscope serve`` + headless Chromium, figures printed.

Data (the issue's bar): a run of 48 layers x 2,000 logged steps — scalars every step (6 global keys
plus 6 per-layer diagnostics = 294 series, ~590k points) and a 256-value spectrum per layer every
10 steps (9,600 arrays) — plus 19 more such runs for the compare page, and one live run.

Measured (median of ``--repeat``):
  * run page: navigation start -> the default scalar charts drawn with data ("interactive");
  * spectra tab: click -> heatmap, spectrum at step and the 48-layer summary drawn;
  * layer switch on the spectra tab: new layer set -> heatmap and spectrum re-drawn for it;
  * compare page with 20 runs: navigation -> the first overlaid scalar chart (the issue's "to first
    chart", ``compare_20_first``), and -> both scalar charts, the time-to-target table and the matched
    spectra (``compare_20``);
  * live latency: batch POSTed -> the point is in the browser's figure;
  * scale: a 10,000-run project (written straight into the SQLite file) — runs table first rows,
    sort by a summary metric, filter by config; a run with 10,000 metric keys -> its first chart;
    the bytes a cold browser (empty cache) moves for the runs page and then a run page.

Run: ``.venv/bin/python benchmarks/bench_dashboard.py [--runs 20] [--steps 2000] [--layers 48]``;
``--home DIR`` seeds DIR once and reuses it, ``--only run_interactive,compare_20`` measures those rows
only (to compare two checkouts on one data dir, run alternately: the rows of one round run in sequence,
so a page that leaves the server busy slows the next row).
Targets (docs): interactive <= 2 s, layer switch <= 0.5 s, compare (20 runs) <= 3 s to the first chart
(and, our own bar, to all three panels), live <= 2 s,
10k-run table first rows and sort <= 1 s, cold page <= 3 MB transferred.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, LiveServer  # noqa: E402  (a real `optiscope serve`)
from tests.dashboard.seed import Seeder, training_run  # noqa: E402
from tests.pg_cluster import free_port  # noqa: E402

N_KEYS = 10_000
ROWS = ("run_interactive", "spectra_tab", "layer_switch", "compare_20_first", "compare_20", "live_latency",
        "runs10k_first", "runs10k_sort", "runs10k_filter", "keys10k_chart", "cold_page_mb")

GRAPH_STATE_JS = """(sel) => Array.from(document.querySelectorAll(sel + ' .js-plotly-plot')).map(g => {
    // typed arrays from numpy arrive as {dtype, bdata, shape}: count their elements from the shape
    const len = (v) => !v ? 0 : (v.length !== undefined ? v.length
        : (v.shape ? String(v.shape).split(',').reduce((a, b) => a * Number(b), 1)
        : (v.bdata ? Math.floor(atob(v.bdata).length / ({f4: 4, f8: 8}[v.dtype] || 1)) : 0)));
    const n = (g.data || []).reduce((a, t) => a + len(t.z || t.y || t.x), 0);
    const empty = !!(g.layout && g.layout.meta && g.layout.meta.empty);
    return {n: n, empty: empty, title: ((g.layout || {}).title || {}).text || ''};
})"""


def wait_graphs(page, selector: str, expected: int, *, title_has: str | None = None, timeout_ms: int = 60_000) -> None:
    cond = "g.n > 0 && !g.empty" + (f" && g.title.includes({title_has!r})" if title_has else "")
    page.wait_for_function(f"(sel) => ({GRAPH_STATE_JS})(sel).filter(g => {cond}).length >= {expected}",
                           arg=selector, timeout=timeout_ms, polling=20)


def seed(server: LiveServer, *, runs: int, steps: int, layers: int) -> list[str]:
    seeder = Seeder(server.api, server.token)
    names = [f"block{i // 4}.{['attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'][i % 4]}.weight" for i in range(layers)]
    ids = []
    t0 = time.perf_counter()
    try:
        for r in range(runs):
            rid = f"bench-{r:02d}"
            training_run(seeder, rid, name=f"bench run {r:02d}", tau=300.0 + 25 * r, steps=steps, layers=names,
                         optimizer=["Muon", "NorMuon", "AdamW", "FOP"][r % 4], sv_every=10, sv_width=256,
                         neuron_arrays=False, config={"lr": 0.02 * (1 + r % 5), "batch_size": 128, "seed": r},
                         seed=r)
            ids.append(rid)
            print(f"  seeded {rid} ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        seeder.close()
    return ids


def _seeded_sweep(engine) -> str | None:  # noqa: ANN001
    """The 10,000-run project an earlier invocation seeded into this ``--home``, if any: seeding one
    per invocation made every later run read a larger database than the one before (unfair A/B)."""
    from sqlalchemy import func, select

    from server.models import Project, Run
    from tests.server.test_run_query import N

    with engine.connect() as conn:
        return conn.execute(
            select(Project.name).join(Run, Run.project_id == Project.id).where(Project.name.like("sweep-%"))
            .group_by(Project.id, Project.name).having(func.count() == N).order_by(Project.id).limit(1)
        ).scalar()


def seed_scale(server: LiveServer) -> tuple[str, str]:
    """A 10,000-run project (bulk insert into the server's SQLite file: 10,000 POSTs would time the
    HTTP layer, not the table) and one run with 10,000 metric keys. Returns (project, run id)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from tests.dashboard.seed import seed_many_keys_run  # imported here: --only run_interactive runs on older trees
    from tests.server.test_run_query import seed_sweep

    engine = create_engine(f"sqlite:///{server.home / 'optiscope.db'}")
    try:
        project = _seeded_sweep(engine) or seed_sweep(sessionmaker(engine))[0]
    finally:
        engine.dispose()
    rid = f"bench-10k-keys-{int(time.time())}"  # fresh per invocation (--home reuses the data)
    seeder = Seeder(server.api, server.token)
    try:
        seed_many_keys_run(seeder, rid, project="bench-10k-keys", n_keys=N_KEYS)
    finally:
        seeder.close()
    return project, rid


def measure_scale(browser, server: LiveServer, project: str, keys_run: str, cold_run: str,  # noqa: ANN001
                  results: dict[str, list[float]]) -> None:
    """One round of the scale figures, each in a fresh browser context (a cold cache)."""
    from tests.server.test_run_query import BEST, N

    first_name = "#runs-table td[data-dash-column=name]"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    moved: list[int] = []
    page.on("requestfinished", lambda r: moved.append(r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"]))
    page.goto(f"{server.url}/")
    page.locator("#runs-count").wait_for(timeout=60_000)
    page.goto(f"{server.url}/runs/{cold_run}")
    wait_graphs(page, "#run-tab-scalars", 1)
    page.wait_for_load_state("networkidle")
    results["cold_page_mb"].append(sum(moved) / 1e6)
    t = time.perf_counter()
    page.goto(f"{server.url}/?project={project}")
    page.locator("#runs-count", has_text=f"{N:,} runs").wait_for(timeout=60_000)
    page.locator(first_name, has_text=f"run {N - 1}").first.wait_for(timeout=60_000)
    results["runs10k_first"].append(time.perf_counter() - t)
    t = time.perf_counter()
    page.goto(f"{server.url}/?project={project}&cols=sum:loss&sort=sum:loss")
    page.locator(first_name, has_text=f"run {BEST}").first.wait_for(timeout=60_000)
    results["runs10k_sort"].append(time.perf_counter() - t)
    expected = sum(1 for i in range(N) if i % 4 == 2 and i % 200 >= 99)
    t = time.perf_counter()
    page.locator("#runs-filter").fill("optimizer = normuon, lr >= 0.01")
    page.locator("#runs-filter").press("Enter")
    page.locator("#runs-count", has_text=f"{expected:,} runs").wait_for(timeout=60_000)
    results["runs10k_filter"].append(time.perf_counter() - t)
    t = time.perf_counter()
    page.goto(f"{server.url}/runs/{keys_run}")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#run-scalars .js-plotly-plot'))"
        ".some(g => g.data && g.data[0] && g.data[0].x && g.data[0].x.length === 100)", timeout=120_000)
    results["keys10k_chart"].append(time.perf_counter() - t)
    context.close()


def measure_live(server: LiveServer, page, repeat: int, results: dict[str, list[float]]) -> None:  # noqa: ANN001
    """Batch POSTed -> the point is in the browser's figure, on a fresh running run."""
    live_id = f"bench-live-{int(time.time())}"  # a fresh running run (old ones time out as crashed)
    seeder = Seeder(server.api, server.token)
    try:
        training_run(seeder, live_id, name="bench live", tau=50.0, steps=100, layers=["fc1.weight"],
                     finish=False, per_layer_scalars=False, neuron_arrays=False)
        page.goto(f"{server.url}/runs/{live_id}")
        wait_graphs(page, "#run-tab-scalars", 1)
        step = 99
        for _ in range(repeat):
            step += 1
            t = time.perf_counter()
            seeder.post(live_id, scalars=[{"key": "loss", "steps": [step], "times": [time.time()],
                                           "values": [0.01]}])
            page.wait_for_function(
                f"document.querySelector('#run-scalars .js-plotly-plot').data[0].x.includes({step})",
                timeout=30_000, polling=20)
            results["live_latency"].append(time.perf_counter() - t)
            time.sleep(0.37)  # land at different phases of the 1 s poll
    finally:
        seeder.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--home", default=None,
                    help="data directory: reused when an earlier run of this script seeded it, else seeded into")
    ap.add_argument("--only", default=",".join(ROWS),
                    help="comma-separated rows to measure (e.g. run_interactive, to bisect one figure); "
                         f"any of {', '.join(ROWS)}")
    args = ap.parse_args()
    only = {r.strip() for r in args.only.split(",") if r.strip()}
    if only - set(ROWS):
        ap.error(f"--only: unknown row(s) {', '.join(sorted(only - set(ROWS)))}; choose from {', '.join(ROWS)}")

    from playwright.sync_api import sync_playwright

    home = Path(args.home or tempfile.mkdtemp(prefix="bench-dash-"))
    home.mkdir(parents=True, exist_ok=True)
    reuse = (home / "optiscope.db").exists()  # checked before the server creates it
    server = LiveServer(port=free_port(), home=home, db_url=None, env={}).start()
    try:
        if reuse:
            import httpx

            runs = httpx.get(f"{server.api}/runs", params={"q": "bench run", "limit": 1000}).json()["data"]
            ids = sorted(r["id"] for r in runs)[: args.runs]
        else:
            t = time.perf_counter()
            ids = seed(server, runs=args.runs, steps=args.steps, layers=args.layers)
            print(f"seeded {len(ids)} runs x {args.layers} layers x {args.steps} steps in "
                  f"{time.perf_counter() - t:.1f} s (data in {home}; --home {home} reuses it)")
        results: dict[str, list[float]] = {k: [] for k in ROWS if k in only}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            big = ids[0]
            layer_a, layer_b = "block0.attn.qkv.weight", f"block{(args.layers - 1) // 4}.mlp.fc2.weight"
            page_rows = {"run_interactive", "spectra_tab", "layer_switch"} & only
            for i in range(args.repeat + 1 if page_rows or {"compare_20", "compare_20_first"} & only else 0):
                # the first round warms caches and is not counted
                timed: dict[str, float] = {}
                if page_rows:
                    t = time.perf_counter()
                    page.goto(f"{server.url}/runs/{big}")
                    wait_graphs(page, "#run-tab-scalars", 4)
                    timed["run_interactive"] = time.perf_counter() - t
                if page_rows - {"run_interactive"}:
                    t = time.perf_counter()
                    page.locator(".tab", has_text="Spectra").first.click()
                    wait_graphs(page, "#run-tab-spectra", 3)
                    timed["spectra_tab"] = time.perf_counter() - t
                if "layer_switch" in only:
                    target = layer_b if i % 2 == 0 else layer_a
                    t = time.perf_counter()
                    page.evaluate(f"window.dash_clientside.set_props('run-layer', {{value: {target!r}}})")
                    wait_graphs(page, "#run-tab-spectra", 2, title_has=target)
                    timed["layer_switch"] = time.perf_counter() - t
                if {"compare_20", "compare_20_first"} & only:
                    t = time.perf_counter()
                    page.goto(f"{server.url}/compare?runs={','.join(ids)}")
                    wait_graphs(page, "#cmp-scalars", 1)
                    timed["compare_20_first"] = time.perf_counter() - t
                    page.locator("#cmp-ttt-result").wait_for(timeout=60_000)
                    wait_graphs(page, "#cmp-scalars", 2)
                    wait_graphs(page, "#" + "cmp-spec-overlay", 1)
                    timed["compare_20"] = time.perf_counter() - t
                if i:
                    for k, v in timed.items():
                        if k in results:
                            results[k].append(v)
            if "live_latency" in only:
                measure_live(server, page, args.repeat, results)
            scale_rows = {"runs10k_first", "runs10k_sort", "runs10k_filter", "keys10k_chart", "cold_page_mb"}
            if scale_rows & only:
                t = time.perf_counter()
                project, keys_run = seed_scale(server)
                print(f"seeded 10,000 runs and a {N_KEYS:,}-key run in {time.perf_counter() - t:.1f} s")
                for i in range(args.repeat + 1):
                    scale: dict[str, list[float]] = {k: [] for k in ROWS}
                    measure_scale(browser, server, project, keys_run, big, scale)
                    if i:  # the first round warms the server's caches
                        for k in scale_rows & only:
                            results[k] += scale[k]
            browser.close()
        targets = {"run_interactive": 2.0, "spectra_tab": None, "layer_switch": 0.5, "compare_20_first": 3.0,
                   "compare_20": 3.0,
                   "live_latency": 2.0, "runs10k_first": 1.0, "runs10k_sort": 1.0, "runs10k_filter": None,
                   "keys10k_chart": None, "cold_page_mb": 3.0}
        print(f"\nheadless Chromium, {len(ids)} runs of {args.layers} layers x {args.steps} steps "
              f"(spectra of 256 values every 10 steps); median [min..max] of {args.repeat}")
        for name, vals in results.items():
            if not vals:
                continue
            target = targets[name]
            med = statistics.median(vals)
            unit = "MB" if name.endswith("_mb") else "s"
            verdict = "" if target is None else ("  ok" if med <= target else f"  OVER target {target:.1f} {unit}")
            print(f"  {name:16s} {med:6.2f} {unit:2s} [{min(vals):.2f}..{max(vals):.2f}]{verdict}")
        if errors:
            print("page errors:", errors[:3])
    finally:
        server.stop()


if __name__ == "__main__":
    main()
