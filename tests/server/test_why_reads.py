"""``GET /analysis/why`` reads each per-layer series only near each run's matched step: the answer must be
byte for byte the one a full read of every point gives.

The runs are sent through the real ingest API into real SQLite and PostgreSQL: diagnostics logged every
step for 20,000 steps (several chunks of ``CHUNK_POINTS``), sparse ones (every 10 steps, so a step half
way between two is a tie), a KFAC pair (a derived quantity), NaNs, a run resumed without a rewind (it
logs steps 9,000–12,000 a second time: overlapping chunks, duplicate steps) and one rewound to 15,000.
The reference is the straightforward computation: ``load_run_data`` of every point, then ``why``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from server.analysis import why
from server.analysis.crossing import SAMPLES_KEY
from server.analysis.layers import is_compared
from server.store.analysis import ChunkMeta, chunks_near, index_diagnostics, load_run_data, select_runs
from server.store.series import CHUNK_POINTS
from server.wire import WireJSONResponse
from tests.server.conftest import Api

N_STEPS = 20_000
LAYERS = [f"blocks.{b}.{part}.weight" for b in range(2) for part in ("attn.qkv", "mlp.fc")]


def _send(api: Api, run_id: str, scalars: list[dict[str, Any]]) -> None:
    r = api.post(f"/runs/{run_id}/batches", json={"scalars": scalars})
    assert r.status_code == 200, r.text


def _scalars(steps: np.ndarray, rng: np.random.Generator, level: float, *, progress: bool) -> list[dict[str, Any]]:
    """One batch over ``steps``: dense diagnostics at every step, sparse ones at multiples of 10 (50 for
    the KFAC pair), and with ``progress`` val_loss every 100 steps and samples_seen every 50."""
    out: list[dict[str, Any]] = []

    def add(key: str, st: np.ndarray, values: np.ndarray) -> None:
        if len(st):
            out.append({"key": key, "steps": st.tolist(), "times": (1000.0 + st).tolist(),
                        "values": ["NaN" if not np.isfinite(v) else float(v) for v in values]})

    sparse, kfac = steps[steps % 10 == 0], steps[steps % 50 == 0]
    for i, layer in enumerate(LAYERS):
        dense = level * (1 + i) * (1 + 0.05 * rng.standard_normal(len(steps)))
        dense[steps % 997 == 0] = np.nan  # a few broken points: a nearest NaN is "not logged there"
        add(f"update_ratio/{layer}", steps, dense)
        add(f"neuron.cv/{layer}", sparse, 0.2 * level * (1 + 0.1 * rng.standard_normal(len(sparse))))
        add(f"kfac.A_eig_max/{layer}", kfac, 50 * level * np.exp(0.1 * rng.standard_normal(len(kfac))))
        add(f"kfac.A_eig_min/{layer}", kfac, 0.5 * np.exp(0.1 * rng.standard_normal(len(kfac))))
    if progress:
        ev, sm = steps[steps % 100 == 0], steps[steps % 50 == 0]
        add("val_loss", ev, 3.0 * np.exp(-ev / (8000 * level)) + 0.01 * rng.standard_normal(len(ev)))
        add(SAMPLES_KEY, sm, 32.0 * (sm + 1))
    return out


def _run(api: Api, project: str, name: str, seed: int, level: float, *, resume: str | None = None) -> str:
    """A run logged over 0..N_STEPS in batches of uneven size (some over CHUNK_POINTS: split there).

    ``resume="again"``: after step 12,000 the run is resumed without a rewind, logs 9,000..12,000 again,
    then nothing until 14,000 (a chunk range repeated exactly, and a gap after it);
    ``resume="rewind"``: it logs to 18,000, then is resumed from step 15,000 (points at >= 15,000 dropped)
    and logs 15,000.. again."""
    run_id = uuid.uuid4().hex
    r = api.post("/runs", json={"id": run_id, "project": project, "name": name,
                                "config": {"optimizer": name, "seed": seed}})
    assert r.status_code == 201, r.text
    rng = np.random.default_rng(seed)
    stops = {None: [0, 9000, 12_000, N_STEPS], "again": [0, 9000, 12_000], "rewind": [0, 9000, 18_000]}[resume]
    for lo, hi in zip(stops, stops[1:], strict=False):
        _send(api, run_id, _scalars(np.arange(lo, hi), rng, level, progress=True))
    if resume is not None:
        from_step = {"again": None, "rewind": 15_000}[resume]
        r = api.post("/runs", json={"id": run_id, "project": project, "name": name,
                                    "config": {"optimizer": name, "seed": seed},
                                    "resume": {"id": uuid.uuid4().hex, "from_step": from_step}})
        assert r.status_code in (200, 201), r.text
        if from_step is None:  # 9,000..12,000 again (a chunk with the same range), then a gap to 14,000
            _send(api, run_id, _scalars(np.arange(9000, 12_000), rng, level * 1.01, progress=False))
            _send(api, run_id, _scalars(np.arange(14_000, N_STEPS), rng, level * 1.01, progress=False))
        else:
            _send(api, run_id, _scalars(np.arange(from_step, N_STEPS), rng, level * 1.01, progress=True))
    return run_id


@pytest.fixture
def runs(make_api: Callable[..., Api]) -> tuple[Api, list[str], list[str]]:
    api = make_api(max_body_bytes=64 * 1024 * 1024)  # a 9,000-step batch of 16 keys is ~2 MB of JSON
    project = uuid.uuid4().hex
    a = [_run(api, project, "gpt-a", 0, 1.0), _run(api, project, "gpt-a", 1, 1.0, resume="rewind")]
    b = [_run(api, project, "gpt-b", 0, 1.3, resume="again"), _run(api, project, "gpt-b", 1, 1.3)]
    return api, a, b


def _full_read(api: Api, params: dict[str, Any], a_ids: Sequence[str], b_ids: Sequence[str]) -> bytes:
    """What the endpoint answered before it read selectively: every point of every series, then ``why``."""
    key = params.get("key", "val_loss")
    session = api.app.state.sessionmaker()
    try:
        data = load_run_data(session=session, runs=select_runs(session=session, run_ids=[*a_ids, *b_ids]),
                             want=lambda k: is_compared(k) or k in (key, SAMPLES_KEY))
    finally:
        session.close()
    by_id = {r.id: r for r in data}
    a_runs, b_runs = [by_id[i] for i in a_ids], [by_id[i] for i in b_ids]
    top = params.get("top", 10)
    result = why(a_runs, b_runs, a_label=a_runs[0].name, baseline_label=b_runs[0].name, match=params.get("match", "step"),
                 at=None if params.get("at") is None else float(params["at"]),  # the query's float
                 match_key=key, direction=params.get("direction", "below"), top=top)
    out = result.as_dict()
    out["rows"] = out["rows"][:top]
    out.update(a_run_ids=list(a_ids), baseline_run_ids=list(b_ids))
    return bytes(WireJSONResponse(out).body)


def _ask(api: Api, params: dict[str, Any], a_ids: Sequence[str], b_ids: Sequence[str]) -> bytes:
    query = [("run_id", i) for i in [*a_ids, *b_ids]] + [("a_run", i) for i in a_ids] + [
        ("baseline_run", i) for i in b_ids] + list(params.items())
    r = api.get("/analysis/why", params=query)
    assert r.status_code == 200, r.text
    return r.content


# match by step at chunk edges (5,000-point batches, a 9,000-point batch split at CHUNK_POINTS), inside
# the resumed run's repeated range and in the gap after it (nearest: a step logged twice), half way between
# two sparse points (a tie), before the first and after the last step, and by default; by loss and by samples, given and by default.
AT_STEPS = [None, 0, 15, 4999, 5000, 8191, CHUNK_POINTS, 8193, 8999, 9000, 10_505, 11_999, 12_000, 12_500, 14_999,
            15_000, 17_995, 19_999, -5, 25_000]
REQUESTS: list[dict[str, Any]] = [
    *({"match": "step", "at": at, "top": 100} for at in AT_STEPS),
    {"match": "loss", "top": 100}, {"match": "loss", "at": 1.5, "top": 100}, {"match": "loss", "at": 0.4},
    {"match": "samples", "top": 100}, {"match": "samples", "at": 32.0 * 10_001, "top": 100},
    {"match": "loss", "key": "update_ratio/blocks.0.mlp.fc.weight", "direction": "above", "at": 1.9, "top": 100},
]


def test_why_reads_near_the_matched_step_and_answers_as_a_full_read(runs: tuple[Api, list[str], list[str]]) -> None:
    api, a, b = runs
    for params in REQUESTS:
        params = {k: v for k, v in params.items() if v is not None}
        for a_ids, b_ids in ((a, b), (a[:1], b[:1]), (a[1:], b[:1])):
            got = _ask(api, params, a_ids, b_ids)
            assert got == _full_read(api, params, a_ids, b_ids), (params, a_ids, b_ids)
    # and the answers are not empty: rows compared, some per-layer difference flagged (b logs 1.3x higher)
    out = api.get("/analysis/why", params=[("run_id", i) for i in a + b] + [("a_run", i) for i in a] + [
        ("baseline_run", i) for i in b] + [("at", 10_505), ("top", 100)]).json()
    assert out["compared"] >= 8 and out["significant"] >= 1
    assert {r["diagnostic"] for r in out["rows"]} >= {"update_ratio", "neuron.cv", "kfac.A_spread"}


def test_chunks_near_keep_every_chunk_that_can_hold_the_nearest_point(
        runs: tuple[Api, list[str], list[str]]) -> None:
    api, a, b = runs
    session = api.app.state.sessionmaker()
    try:
        index = index_diagnostics(session=session, run_ids=[a[0], a[1], b[0]], want=is_compared)
    finally:
        session.close()
    dense = {index.keys[sid]: cs for sid, cs in index.chunks.items()}
    plain = dense[(a[0], f"update_ratio/{LAYERS[0]}")]
    assert [(c.step_min, c.step_max) for c in plain] == [
        (0, CHUNK_POINTS - 1), (CHUNK_POINTS, 8999), (9000, 11_999), (12_000, 19_999)]
    # the chunk holding the step and its two neighbours (the nearest point may be the next one's first)
    assert [c.seq for c in chunks_near(plain, 10_505)] == [1, 2, 3]
    assert [c.seq for c in chunks_near(plain, 4999)] == [0, 1]
    assert [c.seq for c in chunks_near(plain, 12_000)] == [2, 3]
    assert [c.seq for c in chunks_near(plain, 25_000)] == [3] and [c.seq for c in chunks_near(plain, -5)] == [0]
    rewound = dense[(a[1], f"update_ratio/{LAYERS[0]}")]  # 9,000..17,191 cut at 15,000, 17,192.. dropped
    assert [(c.step_min, c.step_max) for c in rewound] == [
        (0, CHUNK_POINTS - 1), (CHUNK_POINTS, 8999), (9000, 14_999), (15_000, 19_999)]
    resumed = dense[(b[0], f"update_ratio/{LAYERS[0]}")]
    assert [(c.step_min, c.step_max) for c in resumed] == [
        (0, CHUNK_POINTS - 1), (CHUNK_POINTS, 8999), (9000, 11_999), (9000, 11_999), (14_000, 19_999)]
    assert [c.seq for c in chunks_near(resumed, 10_505)] == [1, 2, 3, 4]  # both copies of the repeated range
    assert [c.seq for c in chunks_near(resumed, 13_000)] == [2, 3, 4]  # in the gap: both copies before it
    assert [c.seq for c in chunks_near(resumed, 19_000)] == [2, 3, 4]
    # the default step match reads each series' last step from the chunks' ranges: dense, sparse, KFAC
    assert set(index.last_steps()[b[0]]) == {N_STEPS - 1, N_STEPS - 10, N_STEPS - 50}


def test_chunks_near_with_equal_edges_keeps_every_chunk_that_shares_them() -> None:
    def chunk(seq: int, lo: int, hi: int) -> ChunkMeta:
        return ChunkMeta(id=seq, seq=seq, step_min=lo, step_max=hi)

    chunks = [chunk(0, 0, 100), chunk(1, 50, 100), chunk(2, 90, 99), chunk(3, 200, 300), chunk(4, 200, 250),
              chunk(5, 201, 400)]
    assert [c.seq for c in chunks_near(chunks, 150)] == [0, 1, 3, 4]  # both ending at 100, both starting at 200
    assert [c.seq for c in chunks_near(chunks, 95)] == [0, 1, 2, 3, 4]
    assert [c.seq for c in chunks_near(chunks, 500)] == [5]
    assert chunks_near([], 5) == []



def test_why_links_quote_as_urlencode_does() -> None:
    """The links are built with cached quoting; they must be the characters ``urlencode`` gives."""
    from urllib.parse import urlencode

    from server.analysis.panels import _query

    for params in ({"tab": "spectra", "layer": "blocks.0.mlp.fc.weight", "step": 40},
                   {"layer": "a b+c&d=e/f,g?h#i%j", "step": -3, "metric": "ünï"},
                   {"runs": "r1,r2,r3", "keys": "sv.update.cond/h.0.attn weight"}):
        assert _query(params) == urlencode(params, safe=",/")


def _damage_chunk(api: Api, run_id: str, key: str, seq: int, **blobs: bytes) -> None:
    """Overwrite blobs of one stored chunk directly in the database, as an older version or another tool
    might have left them (the ingest API never writes such a row)."""
    from sqlalchemy import select, update

    from server.models import Series, SeriesChunk

    session = api.app.state.sessionmaker()
    try:
        cid = session.execute(
            select(SeriesChunk.id).join(Series, Series.id == SeriesChunk.series_id)
            .where(Series.run_id == run_id, Series.key == key, SeriesChunk.seq == seq)
        ).scalar_one()
        session.execute(update(SeriesChunk).where(SeriesChunk.id == cid).values(**blobs))
        session.commit()
    finally:
        session.close()


def test_why_skips_an_unreadable_chunk_answers_with_the_rest_and_names_it(
        make_api: Callable[..., Api]) -> None:
    api = make_api(max_body_bytes=64 * 1024 * 1024)
    project = uuid.uuid4().hex

    def small_run(name: str, seed: int, level: float) -> str:  # two batches: two chunks per series
        run_id = uuid.uuid4().hex
        r = api.post("/runs", json={"id": run_id, "project": project, "name": name,
                                    "config": {"optimizer": name, "seed": seed}})
        assert r.status_code == 201, r.text
        rng = np.random.default_rng(seed)
        for lo, hi in ((0, 1000), (1000, 2000)):
            _send(api, run_id, _scalars(np.arange(lo, hi), rng, level, progress=True))
        return run_id

    a = [small_run("gpt-a", 0, 1.0), small_run("gpt-a", 1, 1.0)]
    b = [small_run("gpt-b", 0, 1.3), small_run("gpt-b", 1, 1.3)]
    diag = f"update_ratio/{LAYERS[0]}"
    # the chunk holding the matched step: 3 bytes are no float64s; a progress series' steps cut short
    _damage_chunk(api, a[0], diag, 1, values=b"\x01\x02\x03")
    _damage_chunk(api, b[1], "val_loss", 0, steps=b"\x00" * 12)
    for params in ({"match": "step", "at": 1500, "top": 100}, {"match": "loss", "top": 100}):
        query = [("run_id", i) for i in a + b] + [("a_run", i) for i in a] + [
            ("baseline_run", i) for i in b] + list(params.items())
        r = api.get("/analysis/why", params=query)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["damaged"] == [{"run_id": a[0], "key": diag, "chunks": 1},
                                  {"run_id": b[1], "key": "val_loss", "chunks": 1}]
        assert f"run {a[0]}: 1 unreadable stored chunk(s) of {diag} skipped" in out["notes"]
        assert out["compared"] >= 8 and out["significant"] >= 1  # the rest is still compared
        # the same rows as a full read of what is readable (the damaged chunks skipped there too)
        reference = json.loads(_full_read(api, params, a, b))
        assert out["rows"] == reference["rows"] and out["matched_steps"] == reference["matched_steps"]
    r = api.get("/analysis/time-to-target", params=[("run_id", i) for i in a + b] + [
        ("key", "val_loss"), ("target", 2.5), ("baseline_run", b[0])])
    assert r.status_code == 200, r.text  # the same reader: skipped and named there too
    assert r.json()["damaged"] == [{"run_id": b[1], "key": "val_loss", "chunks": 1}]
