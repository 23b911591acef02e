"""Photograph the compare page's seed groups and "why" panel, and print the why lines, for the README.

    .venv/bin/python benchmarks/bench_time_to_target.py --seeds 5 --home /tmp/ttt   # real runs, 5 seeds
    .venv/bin/python docs/screenshot_why.py --home /tmp/ttt    # writes docs/img/{why,groups}.png

Serves the demo's runs with the real ``optiscope serve`` and opens the compare page on the GPT task's
runs (AdamW first, so its group is the baseline) in headless Chromium; nothing is staged. Also prints
``GET /analysis/why`` for NorMuon vs AdamW and NorMuon vs Muon, matched where each run first reached
the demo's target (val_loss 2.4), so the README's headline lines come from the same data as the picture.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from screenshots import CHROMIUM_ARGS, _free_port, _optiscope, _wait_healthy  # noqa: E402

TARGET = 2.4
PAIRS = (("gpt-normuon", "gpt-adamw"), ("gpt-normuon", "gpt-muon"))


def print_why(api: str, runs: dict[str, list[str]], top: int) -> None:
    for a, base in PAIRS:
        params = [("run_id", r) for r in runs[a] + runs[base]] + [("a_run", r) for r in runs[a]]
        params += [("baseline_run", r) for r in runs[base]]
        params += [("match", "loss"), ("key", "val_loss"), ("at", TARGET), ("top", top)]
        out = httpx.get(api + "/analysis/why", params=params, timeout=120).json()
        print(f"\n{a} vs {base}: {out['compared']} pairs compared, {out['significant']} beyond noise; "
              f"matched at val_loss {TARGET} (steps {sorted(out['matched_steps'].values())})")
        for line in out["lines"]:
            print(f"  {line}")
        for note in out["notes"]:
            print(f"  note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a demo data directory with >= 3 seeds")
    parser.add_argument("--out", type=Path, default=HERE / "img")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "OPTISCOPE_HOME": str(args.home)}
    env.pop("OPTISCOPE_URL", None)
    env.pop("OPTISCOPE_TOKEN", None)
    port = _free_port()
    server = subprocess.Popen(_optiscope("serve", "--port", str(port)), env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base + "/api/v1")
        listed = httpx.get(base + "/api/v1/runs", params={"limit": 1000, "order": "created_at",
                                                          "descending": "false"}).json()["data"]
        runs = {name: [r["id"] for r in listed if r["name"] == name] for name in ("gpt-adamw", "gpt-normuon", "gpt-muon")}
        print_why(base + "/api/v1", runs, args.top)
        order = runs["gpt-adamw"] + runs["gpt-normuon"] + runs["gpt-muon"]
        url = (f"{base}/compare?runs={','.join(order)}&keys=val_loss&metric=val_loss&target={TARGET}"
               f"&direction=below&baseline={order[0]}")
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            page.locator("#cmp-why-list li").first.wait_for(timeout=120_000)
            page.locator("#cmp-ttt-groups-table").wait_for(timeout=120_000)
            page.wait_for_function("document.querySelectorAll('#cmp-scalars .js-fill').length >= 3", timeout=120_000)
            time.sleep(2.0)  # let plotly finish its transitions
            page.locator("section", has=page.locator("#cmp-why")).screenshot(path=str(args.out / "why.png"))
            page.locator("section", has=page.locator("#cmp-scalars")).screenshot(path=str(args.out / "groups.png"))
            print(f"\nwrote {args.out / 'why.png'} and {args.out / 'groups.png'}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
