"""Run the demo: serve, train every spec live in a small pool of subprocesses, then compare.

Why subprocesses everywhere: the server (and the dashboard it mounts) must stay responsive while the
CPU trains, and a training that crashes must not take the others down. The orchestrator itself never
imports the server or the dashboard — it starts ``optiscope serve`` like a user would and talks HTTP,
so the demo exercises exactly the path a real user's training takes (probe → HTTP → store → dashboard).

Trainings run in a small pool of worker processes (``python -m probe.demo.train --worker``, at most 2 at a
time on a 2-core machine); each run is still its own probe run. Workers report progress on stdout as
``@@optiscope {json}`` lines (see :mod:`probe.demo.train`); everything else they print goes to a log file
under ``$OPTISCOPE_HOME/demo/logs/<session>/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import urlencode

import httpx

from probe.demo.specs import PROGRESS_PREFIX, Comparison, RunSpec, build_specs, comparisons

__all__ = ["DemoConfig", "DemoResult", "RunOutcome", "run_demo", "compare_counts", "format_table",
           "format_group_table", "format_spread", "format_speedup", "WHY_PAIRS"]

PROJECT = "demo"
DEFAULT_PORT = 8000
HEALTH_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class DemoConfig:
    """What ``optiscope demo`` was asked to do."""

    home: Path
    port: int | None = None  # None: 8000, or a free port when 8000 is taken
    quick: bool = False
    exit_when_done: bool = False
    workers: int | None = None  # None: 2 on small machines (the issue's "at most 2 on 2 cores")
    gpu: bool | None = None  # None: use CUDA when available
    seeds: int = 1  # > 1: every recipe once per seed; the tables become seed groups with intervals
    out: TextIO = field(default_factory=lambda: sys.stdout)


@dataclass
class RunOutcome:
    """One training subprocess, as the orchestrator saw it."""

    spec: RunSpec
    run_id: str | None = None
    returncode: int | None = None
    wall_s: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # the server's view after the run ended
    lost: dict[str, Any] = field(default_factory=dict)  # sent ≠ stored, per key; empty when nothing was lost
    log_path: Path | None = None


@dataclass
class DemoResult:
    """The demo's end state (also written to ``$OPTISCOPE_HOME/demo/sessions/<session>.json``)."""

    session: str
    url: str
    runs: list[RunOutcome]
    tables: list[dict[str, Any]]
    wall_s: float

    @property
    def ok(self) -> bool:
        return all(r.returncode == 0 and r.status == "finished" and not r.lost for r in self.runs)


# --------------------------------------------------------------------------------------------------
# server


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _choose_port(requested: int | None) -> int:
    if requested is not None:
        if requested and not _port_is_free(requested):
            raise RuntimeError(f"port {requested} on 127.0.0.1 is in use; pass another --port")
        return requested or _free_port()
    return DEFAULT_PORT if _port_is_free(DEFAULT_PORT) else _free_port()


class _Server:
    """``optiscope serve`` on loopback in a subprocess, with its output in a log file."""

    def __init__(self, *, home: Path, port: int, log_path: Path) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "OPTISCOPE_HOME": str(home)}
        env.pop("OPTISCOPE_DATABASE_URL", None)  # the demo is the embedded default: SQLite under home
        self.process = subprocess.Popen(
            [sys.executable, "-m", "probe.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # our Ctrl-C handling stops it in order, after the trainings
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - spawned from the main thread, before any other
        )

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"optiscope serve exited with code {self.process.returncode}:\n{_tail(self.log_path)}"
                    )
                try:
                    answer = client.get(f"{self.url}/api/v1/health")
                    if answer.status_code == 200:
                        return dict(answer.json())
                except httpx.HTTPError as exc:
                    last_error = exc
                time.sleep(0.2)
        raise RuntimeError(f"optiscope serve did not answer /api/v1/health in {timeout:.0f} s ({last_error})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _die_with_parent() -> None:
    """In the forked child: ask Linux to SIGTERM it when the demo process dies, however it dies.

    Signals the demo can catch (SIGTERM, SIGINT, SIGHUP: see ``probe.demo.cli``) stop the server
    in order; this covers the rest (SIGKILL, a crash), where the server, in its own session,
    would otherwise be re-parented to PID 1 and keep the port. Elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_token(home: Path, timeout: float = 10.0) -> str:
    """The plaintext local token that ``optiscope serve`` writes for loopback use."""
    path = home / "local-token"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and (token := path.read_text(encoding="utf-8").strip()):
            return token
        time.sleep(0.1)
    raise RuntimeError(f"optiscope serve did not write {path}")


# --------------------------------------------------------------------------------------------------
# trainings


class _Progress:
    """One tqdm bar per run on a terminal; plain lines otherwise (CI logs, pipes).

    Off a terminal a bar's carriage returns would pile up as garbage in the log, so each run prints a
    line when it starts, one at each quarter of its steps (``[label] 50% 120/240 steps loss=2.71``) and
    one when it ends: a reader of a CI log still sees every run move, without one line per step.
    """

    QUARTERS = (25, 50, 75)

    def __init__(self, specs: list[RunSpec], out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._bars: dict[str, Any] = {}
        self._printed_pct: dict[str, int] = {}
        self._interactive = out.isatty()
        width = max(len(s.label) for s in specs)
        if self._interactive:
            import shutil

            from tqdm import tqdm

            # A terminal that reports 0 columns (some CI ptys) would make tqdm draw nothing.
            columns = shutil.get_terminal_size(fallback=(100, 24)).columns or 100
            for position, spec in enumerate(specs):
                self._bars[spec.label] = tqdm(
                    total=1, desc=spec.label.ljust(width), position=position, leave=True, file=out,
                    unit="step", ncols=min(columns, 140), bar_format="{desc} {bar} {n_fmt}/{total_fmt}{postfix}",
                )
                self._bars[spec.label].set_postfix_str("waiting", refresh=True)

    def started(self, spec: RunSpec, run_id: str, url: str) -> None:
        if not self._interactive:
            self._print(f"[{spec.label}] started: {url}/runs/{run_id}")

    def update(self, spec: RunSpec, step: int, total: int, postfix: str) -> None:
        bar = self._bars.get(spec.label)
        if bar is None:
            if not self._interactive and total > 0:
                self._print_quarter(spec, step, total, postfix)
            return
        with self._lock:
            if bar.total != total:
                bar.total = total
            bar.n = step
            bar.set_postfix_str(postfix, refresh=False)
            bar.refresh()

    def finished(self, outcome: RunOutcome) -> None:
        final = outcome.report.get("final", {})
        detail = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, (int, float)))
        state = "finished" if outcome.returncode == 0 else f"FAILED (exit {outcome.returncode}; log {outcome.log_path})"
        if self._interactive:
            bar = self._bars[outcome.spec.label]
            with self._lock:
                bar.set_postfix_str(f"{state} {outcome.wall_s:.0f}s {detail}", refresh=True)
        else:
            self._print(f"[{outcome.spec.label}] {state} in {outcome.wall_s:.1f} s  {detail}")

    def _print_quarter(self, spec: RunSpec, step: int, total: int, postfix: str) -> None:
        """Print the highest quarter this step reached, once (progress messages may skip a quarter)."""
        if step >= total:  # the last message of a run; its "finished" line follows
            return
        pct = 100 * step // total
        reached = [q for q in self.QUARTERS if pct >= q and q > self._printed_pct.get(spec.label, 0)]
        if not reached:
            return
        self._printed_pct[spec.label] = reached[-1]
        self._print(f"[{spec.label}] {reached[-1]}% {step}/{total} steps {postfix}".rstrip())

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self._out, flush=True)


class _Worker:
    """One long-lived ``python -m probe.demo.train --worker`` process that trains the jobs it is sent.

    Why not one process per run: ``import torch`` (plus torch's lazy imports on the first optimizer)
    costs several seconds on a busy 2-core machine, as much as a quick run trains. One worker per pool
    slot pays it once, and starts paying it while the server is still starting (the server URL and token
    travel with each job, not in the environment). If a worker dies mid-run, that run is marked failed
    and the next job starts a fresh worker.
    """

    def __init__(self, *, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._child: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Spawn the process now (it imports torch and warms up while nothing waits for it)."""
        self._ensure()

    def _ensure(self) -> subprocess.Popen[str]:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "probe.demo.train", "--worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=self._env, text=True,
                bufsize=1,
            )
        return self._child

    def train(self, job: dict[str, Any], on_message: Callable[[dict[str, Any]], None]) -> int:
        """Send one job and relay its progress messages; returns the run's exit code (1 if the worker died)."""
        child = self._ensure()
        assert child.stdin is not None and child.stdout is not None  # noqa: S101 - PIPEs set above
        try:
            child.stdin.write(json.dumps(job) + "\n")
            child.stdin.flush()
        except BrokenPipeError:
            return 1
        for line in child.stdout:
            if not line.startswith(PROGRESS_PREFIX):
                self._log.write(line)
                continue
            try:
                message = json.loads(line[len(PROGRESS_PREFIX):])
            except json.JSONDecodeError:
                self._log.write(line)
                continue
            if message.get("event") == "done":
                return int(message.get("code", 1))
            on_message(message)
        child.wait()
        self._log.write(f"worker exited with code {child.returncode} during {job['spec']['name']}\n")
        return 1

    def terminate(self, timeout: float = 5.0) -> None:
        """Stop the worker now, mid-run (the demo itself is being stopped)."""
        child = self._child
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def close(self) -> None:
        if self._child is not None and self._child.poll() is None:
            assert self._child.stdin is not None  # noqa: S101
            self._child.stdin.close()  # the worker ends after its current job
            try:
                self._child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self._log.close()


def _run_pool(
    specs: list[RunSpec],
    *,
    workers: list[_Worker],
    session: str,
    reports: Path,
    url: str,
    token: str,
    progress: _Progress,
) -> list[RunOutcome]:
    """Train ``specs`` (in order) on the ``workers``, each taking the next job when free; outcomes in spec order."""
    import queue

    jobs: queue.Queue[RunOutcome] = queue.Queue()
    outcomes = [RunOutcome(spec=spec) for spec in specs]
    for outcome in outcomes:
        jobs.put(outcome)

    def serve(worker: _Worker) -> None:
        while True:
            try:
                outcome = jobs.get_nowait()
            except queue.Empty:
                return
            _train_one(outcome, worker, session=session, reports=reports, url=url, token=token, progress=progress)

    threads = [threading.Thread(target=serve, args=(w,), name=f"demo-worker-{i}", daemon=True)
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # join with a timeout so Ctrl-C reaches the main thread
            t.join(timeout=0.5)
    return outcomes


def _train_one(
    outcome: RunOutcome, worker: _Worker, *, session: str, reports: Path, url: str, token: str,
    progress: _Progress,
) -> None:
    spec = outcome.spec
    outcome.log_path = worker.log_path
    report_path = reports / f"{spec.label}.json"
    job = {
        "spec": dataclasses.asdict(spec),
        "project": PROJECT,
        "tags": ["demo", f"session-{session}", spec.group],
        "report": str(report_path),
        "url": url,
        "token": token,
    }

    def on_message(message: dict[str, Any]) -> None:
        if message.get("event") == "run":
            outcome.run_id = str(message["id"])
            progress.started(spec, outcome.run_id, url)
        elif message.get("event") == "progress":
            postfix = " ".join(
                f"{k}={v:.3g}" for k, v in message.items()
                if k not in ("event", "step", "total") and isinstance(v, (int, float))
            )
            progress.update(spec, int(message["step"]), int(message["total"]), postfix)

    started = time.monotonic()
    outcome.returncode = worker.train(job, on_message)
    outcome.wall_s = time.monotonic() - started
    if report_path.is_file():
        outcome.report = json.loads(report_path.read_text(encoding="utf-8"))
        outcome.run_id = outcome.run_id or outcome.report.get("run_id")
    progress.finished(outcome)


def compare_counts(report: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    """Points the training handed to the probe (``report``) vs points the server stored (``/keys``).

    Returns only the mismatches, ``{"scalar:<key>": [sent, stored], "array:<key>|<layer>": [...]}``;
    an empty dict means nothing was lost (and nothing duplicated).
    """
    stored_scalars = {row["key"]: int(row["count"]) for row in keys.get("scalars", [])}
    stored_arrays = {f"{row['key']}|{row['layer']}": int(row["count"]) for row in keys.get("arrays", [])}
    lost: dict[str, Any] = {}
    for kind, sent, stored in (
        ("scalar", report.get("scalars", {}), stored_scalars),
        ("array", report.get("arrays", {}), stored_arrays),
    ):
        for key in sorted(set(sent) | set(stored)):
            if int(sent.get(key, 0)) != stored.get(key, 0):
                lost[f"{kind}:{key}"] = [int(sent.get(key, 0)), stored.get(key, 0)]
    return lost


def _verify(outcomes: list[RunOutcome], client: httpx.Client) -> None:
    """Fill each outcome's server status and sent-vs-stored mismatches."""
    for outcome in outcomes:
        if not outcome.run_id:
            continue
        answer = client.get(f"/api/v1/runs/{outcome.run_id}")
        if answer.status_code == 200:
            outcome.status = answer.json().get("status")
        if outcome.report:
            keys = client.get(f"/api/v1/runs/{outcome.run_id}/keys")
            keys.raise_for_status()
            outcome.lost = compare_counts(outcome.report, keys.json())
            if outcome.report.get("dropped"):
                outcome.lost["dropped_by_client"] = outcome.report["dropped"]


# --------------------------------------------------------------------------------------------------
# time-to-target


def _time_to_target(
    comparison: Comparison, outcomes: list[RunOutcome], client: httpx.Client
) -> dict[str, Any] | None:
    runs = [o for o in outcomes if o.spec.group == comparison.group and o.run_id]
    baseline = next((o for o in runs if o.spec.name == comparison.baseline), None)
    if not runs or baseline is None:
        return None
    ordered = [baseline, *[o for o in runs if o is not baseline]]
    params: list[tuple[str, str | float]] = [("run_id", o.run_id or "") for o in ordered]
    params += [
        ("key", comparison.key),
        ("target", comparison.target),
        ("direction", comparison.direction),
        ("baseline", baseline.run_id or ""),
    ]
    answer = client.get("/api/v1/time-to-target", params=params)
    answer.raise_for_status()
    table = dict(answer.json())
    names = {o.run_id: o.spec.name for o in ordered}
    for row in table.get("rows", []):
        row["name"] = names.get(row.get("run_id"), row.get("name"))
        final = next((o.report.get("final", {}) for o in ordered if o.run_id == row.get("run_id")), {})
        row["final"] = final.get(comparison.key)
    table.update(group=comparison.group, title=comparison.title, claim=comparison.claim)
    table["compare_path"] = "/compare?" + urlencode({
        "runs": ",".join(o.run_id or "" for o in ordered), "keys": f"loss,{comparison.key}",
        "metric": comparison.key, "target": comparison.target, "direction": comparison.direction,
        "baseline": baseline.run_id or "",
    }, safe=",")
    return table


def _group_time_to_target(
    comparison: Comparison, outcomes: list[RunOutcome], client: httpx.Client
) -> dict[str, Any] | None:
    """The comparison's seed groups from ``/analysis/time-to-target`` (the compare page's group table)."""
    runs = [o for o in outcomes if o.spec.group == comparison.group and o.run_id]
    baseline = next((o for o in runs if o.spec.name == comparison.baseline), None)
    if not runs or baseline is None:
        return None
    params: list[tuple[str, str | float]] = [("run_id", o.run_id or "") for o in runs]
    params += [("key", comparison.key), ("target", comparison.target), ("direction", comparison.direction),
               ("baseline_run", baseline.run_id or "")]
    answer = client.get("/api/v1/analysis/time-to-target", params=params)
    answer.raise_for_status()
    table = dict(answer.json())
    table.update(kind="groups", group=comparison.group, title=comparison.title, claim=comparison.claim)
    table["compare_path"] = "/compare?" + urlencode({
        "runs": ",".join(o.run_id or "" for o in runs), "keys": f"loss,{comparison.key}",
        "metric": comparison.key, "target": comparison.target, "direction": comparison.direction,
        "baseline": baseline.run_id or "",
    }, safe=",")
    return table


# (comparison group, A's run name, baseline's run name): the "why" lines the demo prints with seeds
WHY_PAIRS = (("language", "gpt-normuon", "gpt-adamw"), ("language", "gpt-normuon", "gpt-muon"))
WHY_LINES = 3


def _why_lines(table: dict[str, Any], outcomes: list[RunOutcome], client: httpx.Client) -> list[str]:
    """Top "why" lines for the comparison's pairs, matched where each run first reached the target."""
    lines = []
    for group, a_name, b_name in WHY_PAIRS:
        if group != table.get("group"):
            continue
        a = [o.run_id for o in outcomes if o.spec.group == group and o.spec.name == a_name and o.run_id]
        b = [o.run_id for o in outcomes if o.spec.group == group and o.spec.name == b_name and o.run_id]
        if not a or not b:
            continue
        params: list[tuple[str, str | float]] = [("run_id", r) for r in a + b]
        params += [("a_run", r) for r in a] + [("baseline_run", r) for r in b]
        params += [("match", "loss"), ("key", table["key"]), ("at", table["target"]),
                   ("direction", table["direction"]), ("top", WHY_LINES)]
        answer = client.get("/api/v1/analysis/why", params=params)
        if answer.status_code == 200:
            lines += [f"{line}  [vs {b_name}]" for line in answer.json().get("lines", [])]
    return lines


def format_spread(row: dict[str, Any], unit: str, fmt: str) -> str:
    """``"154 ± 11"``: a group row's mean ± sd of ``unit`` (steps, time_s, samples); "—" if none reached."""
    mean, sd = row.get(f"{unit}_mean"), row.get(f"{unit}_sd")
    if mean is None:
        return "—"
    return format(mean, fmt) + ("" if sd is None else f" ± {format(sd, fmt)}")


def format_speedup(row: dict[str, Any], name: str) -> str:
    """``"×2.14 [1.82, 2.42]"`` (+ " no difference" when the interval contains 1), or "baseline"."""
    if row.get("baseline"):
        return "baseline"
    ratio, low, high = row.get(f"speedup_{name}"), row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    if ratio is None:
        return "—"
    text = f"×{ratio:.2f}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")
    return text + (" no difference" if row.get(f"{name}_verdict") == "no difference at this n" else "")


def format_group_table(table: dict[str, Any]) -> str:
    """Render one ``/analysis/time-to-target`` answer: per seed group, steps and wall time to the
    target as mean ± sd, the evaluation interval, and speedups with their bootstrap 95 % intervals."""
    spread, speedup = format_spread, format_speedup

    def num(value: Any, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    sign = "≥" if table.get("direction") == "above" else "≤"
    lines = [
        f"{table['group']}: {table['title']}",
        f"  target {table['key']} {sign} {table['target']:g}; speedup = baseline ÷ group, bootstrap 95% interval "
        "over seeds (paired by seed)",
        f"  claim checked: {table['claim']}",
        f"  {'group':<16} {'n':>5} {'steps':>13} {'eval every':>10} {'time_s':>13} {'×steps [95% CI]':>28}"
        f" {'×time [95% CI]':>28}",
    ]
    for row in table.get("rows", []):
        n = f"{row['n_reached']}/{row['n']}"
        lines.append(
            f"  {row['group']:<16} {n:>5} {spread(row, 'steps', '.0f'):>13} {num(row.get('eval_interval'), 'd'):>10}"
            f" {spread(row, 'time_s', '.1f'):>13} {speedup(row, 'steps'):>28} {speedup(row, 'time'):>28}"
        )
    return "\n".join(lines)


def format_table(table: dict[str, Any]) -> str:
    """Render one ``/time-to-target`` answer as the plain-text table the demo prints."""

    def num(value: Any, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    sign = "≥" if table.get("direction") == "above" else "≤"
    lines = [
        f"{table['group']}: {table['title']}",
        f"  target {table['key']} {sign} {table['target']:g}; speedup = baseline ÷ run (> 1 is faster)",
        f"  claim checked: {table['claim']}",
        f"  {'run':<16} {'reached':>7} {'step':>6} {'time_s':>7} {'samples':>8} {'final':>7}"
        f" {'×steps':>7} {'×time':>6} {'×samples':>8}",
    ]
    for row in table.get("rows", []):
        lines.append(
            f"  {row['name']:<16} {('yes' if row['reached'] else 'no'):>7} {num(row.get('step'), 'd'):>6}"
            f" {num(row.get('time_s'), '.1f'):>7} {num(row.get('samples_seen'), '.0f'):>8}"
            f" {num(row.get('final'), '.3f'):>7} {num(row.get('speedup_steps'), '.2f'):>7}"
            f" {num(row.get('speedup_time'), '.2f'):>6} {num(row.get('speedup_samples'), '.2f'):>8}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the demo


def _detect_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _default_workers(gpu: bool) -> int:
    cpus = os.cpu_count() or 1
    if gpu:
        return 3
    return max(1, min(2, cpus)) if cpus <= 4 else min(4, cpus // 2)


def run_demo(config: DemoConfig, *, on_ready: Callable[[str], None] | None = None) -> DemoResult:
    """Serve, train all runs, verify, print the time-to-target tables; serve until Ctrl-C unless told not to.

    Never deletes anything under ``config.home``: every invocation adds a new session of runs to the
    same store, so earlier demos stay browsable next to the new one.
    """
    out = config.out
    started = time.monotonic()
    home = config.home.expanduser().resolve()
    session = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    demo_dir = home / "demo"
    logs = demo_dir / "logs" / session
    reports = demo_dir / "reports" / session
    for path in (logs, reports, demo_dir / "sessions"):
        path.mkdir(parents=True, exist_ok=True)

    server = _Server(home=home, port=_choose_port(config.port), log_path=logs / "server.log")
    pool: list[_Worker] = []
    try:
        # Detecting CUDA imports torch (seconds on a busy CPU): done while the server starts up.
        gpu = _detect_gpu() if config.gpu is None else config.gpu
        specs = build_specs(quick=config.quick, gpu=gpu, seeds=config.seeds)
        workers = config.workers or _default_workers(gpu)
        env = {
            **os.environ,
            "OPTISCOPE_HOME": str(home),
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers)),
            "PYTHONUNBUFFERED": "1",
        }
        pool = [_Worker(env=env, log_path=logs / f"worker-{i}.log") for i in range(min(workers, len(specs)))]
        for worker in pool:
            worker.start()
        health = server.wait_healthy()
        token = _read_token(home)
        print(
            f"Optiscope is serving at {server.url}/  (API {server.url}/api/v1, {health.get('database')} "
            f"under {home})",
            file=out,
            flush=True,
        )
        print(
            f"Training {len(specs)} runs ({'quick' if config.quick else 'full'}, "
            f"{config.seeds} seed{'s' if config.seeds > 1 else ''} each, "
            f"{'GPU' if gpu else 'CPU'}, {len(pool)} at a time); open the URL to watch them live.",
            file=out,
            flush=True,
        )
        if on_ready is not None:
            on_ready(server.url)

        progress = _Progress(specs, out)
        try:
            outcomes = _run_pool(
                specs, workers=pool, session=session, reports=reports, url=server.url, token=token,
                progress=progress,
            )
        finally:
            progress.close()
            for worker in pool:
                worker.close()

        with httpx.Client(base_url=server.url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}) as client:
            _verify(outcomes, client)
            table_of = _group_time_to_target if config.seeds > 1 else _time_to_target
            tables = [t for c in comparisons(quick=config.quick) if (t := table_of(c, outcomes, client))]
            if config.seeds > 1:
                for table in tables:
                    table["why"] = _why_lines(table, outcomes, client)

        result = DemoResult(session=session, url=server.url, runs=outcomes, tables=tables,
                            wall_s=time.monotonic() - started)
        _write_session(demo_dir / "sessions" / f"{session}.json", result)
        _print_summary(result, out)
        if not config.exit_when_done:
            print(f"Still serving at {server.url}/ — press Ctrl-C to stop.", file=out, flush=True)
            try:
                server.process.wait()
            except KeyboardInterrupt:  # the normal way to end a demo that went well
                print("\nStopped.", file=out, flush=True)
        return result
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP turned into one by probe.demo.cli
        print("\nStopping.", file=out, flush=True)
        for worker in pool:
            worker.terminate()
        raise
    finally:
        for worker in pool:
            worker.close()
        server.stop()


def _write_session(path: Path, result: DemoResult) -> None:
    record = {
        "session": result.session,
        "url": result.url,
        "wall_s": result.wall_s,
        "ok": result.ok,
        "runs": [
            {
                "name": o.spec.name,
                "label": o.spec.label,
                "seed": o.spec.seed,
                "group": o.spec.group,
                "optimizer": o.spec.optimizer,
                "infobatch": o.spec.infobatch,
                "run_id": o.run_id,
                "returncode": o.returncode,
                "status": o.status,
                "wall_s": o.wall_s,
                "lost": o.lost,
                "report": o.report,
            }
            for o in result.runs
        ],
        "tables": result.tables,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")


def _print_summary(result: DemoResult, out: TextIO) -> None:
    print("", file=out)
    if result.tables:
        print("Time to target (the server's /time-to-target, as on the compare page). Steps and samples are "
              "machine-independent; time_s is wall time with the trainings sharing the CPU, so it is noisy.",
              file=out)
        print("", file=out)
    for table in result.tables:
        print(format_group_table(table) if table.get("kind") == "groups" else format_table(table), file=out)
        for line in table.get("why") or []:
            print(f"  why: {line}", file=out)
        if table.get("compare_path"):
            print(f"  side by side: {result.url}{table['compare_path']}", file=out)
        print("", file=out)
    failed = [o for o in result.runs if o.returncode != 0 or o.status != "finished"]
    lossy = [o for o in result.runs if o.lost]
    sent = sum(sum(o.report.get("scalars", {}).values()) + sum(o.report.get("arrays", {}).values())
               for o in result.runs)
    for o in failed:
        print(f"run {o.spec.label} did not finish (exit {o.returncode}, status {o.status}); log: {o.log_path}",
              file=out)
        print(_tail(o.log_path) if o.log_path else "", file=out)
    for o in lossy:
        print(f"run {o.spec.label}: sent ≠ stored for {o.lost}", file=out)
    if not failed and not lossy:
        print(f"All {len(result.runs)} runs finished; {sent} points sent = {sent} stored "
              f"(nothing lost). Demo took {result.wall_s:.0f} s.", file=out)
    print(f"All runs: {result.url}/  (each demo adds a new session; earlier ones stay)", file=out, flush=True)
