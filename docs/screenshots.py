"""Make the README's screenshots: run the quick demo, then photograph its pages in headless Chromium.

    .venv/bin/python docs/screenshots.py            # writes docs/img/{runs,run,spectra,compare}.png

The pictures come from real training runs (``optiscope demo --quick``) served by the real
``optiscope serve``; nothing is staged. Chromium is Debian's (/usr/bin/chromium), driven by Playwright
without a browser download.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _optiscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "probe.cli", *args]


def _wait_healthy(api: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(api + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server at {api} did not become healthy")


def _shoot(page, url: str, out: Path, wait_selector: str, plots: bool = True) -> None:  # noqa: ANN001
    page.goto(url)
    page.locator(wait_selector).first.wait_for(timeout=60_000)
    if plots:  # wait until a chart has drawn its data (plotly renders traces as .trace groups)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .trace').length > 0",
                               timeout=60_000)
    time.sleep(2.0)  # let plotly finish its transitions
    page.screenshot(path=str(out), full_page=False)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "img")
    parser.add_argument("--home", type=Path, default=None, help="reuse a demo data directory")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = args.home or Path(tempfile.mkdtemp(prefix="optiscope-shots-"))
    env = {**os.environ, "OPTISCOPE_HOME": str(home)}
    env.pop("OPTISCOPE_URL", None)
    env.pop("OPTISCOPE_TOKEN", None)
    if args.home is None:
        subprocess.run(_optiscope("demo", "--quick", "--exit-when-done", "--port", str(_free_port())),
                       env=env, check=True, stdout=subprocess.DEVNULL)
    port = _free_port()
    server = subprocess.Popen(_optiscope("serve", "--port", str(port)), env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base + "/api/v1")
        runs = httpx.get(base + "/api/v1/runs", params={"limit": 100}).json()["data"]
        by_name = {r["name"]: r["id"] for r in runs}
        gpt = [r["id"] for r in sorted(runs, key=lambda r: r["name"]) if r["name"].startswith("gpt")]  # AdamW first: the baseline
        normuon = next(r["id"] for r in runs if "normuon" in r["name"] and r["name"].startswith("gpt"))
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            _shoot(page, base + "/", args.out / "runs.png", "text=" + next(iter(by_name)), plots=False)
            _shoot(page, f"{base}/runs/{normuon}?tab=scalars", args.out / "run.png", "#run-name")
            _shoot(page, f"{base}/runs/{normuon}?tab=spectra", args.out / "spectra.png", "#run-name")
            compare = (f"{base}/compare?runs={','.join(gpt)}&keys=loss,val_loss&metric=val_loss&target=2.4"
                       f"&direction=below&baseline={gpt[0]}")
            _shoot(page, compare, args.out / "compare.png", "table")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
