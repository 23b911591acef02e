"""Import trusts nothing it imports, and no stored row can break a read (issue 16, section 3).

Every crafted file of the issue is sent to the real app (SQLite and PostgreSQL): each is a 422
that names the line and the field, nothing of it is stored, and the runs list still answers 200.
Then rows that break the schema are written straight into the database with SQL (as an older
version or another tool could have) and every read still answers 200, serving the sound data and
flagging the damaged part.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.reliability.conftest import InProc

API = "/api/v1"
Lines = list[dict[str, Any]]


def _source_export(inproc: InProc, project: str) -> tuple[str, Lines]:
    """A real export (run header, series + chunk, array, event) of a run in ``project``."""
    rid = inproc.create_run(project=project, name="source", tags=["a"])["id"]
    r = inproc.client.post(f"{API}/runs/{rid}/batches", headers=inproc.auth, json={
        "scalars": [{"key": "loss", "steps": [0, 1, 2], "values": [3.0, 2.0, 1.0]}],
        "arrays": [{"key": "sv.weight", "layer": "fc", "step": 1, "values": [1.0, 2.0, 3.0, 4.0], "shape": [2, 2]}],
        "events": [{"kind": "alert", "level": "warning", "step": 1, "message": "m"}]})
    assert r.status_code == 200, r.text
    export = inproc.client.get(f"{API}/runs/{rid}/export")
    assert export.status_code == 200
    lines = [json.loads(ln) for ln in export.content.splitlines()]
    assert [ln["type"] for ln in lines] == ["run", "series", "chunk", "array", "event"]
    return rid, lines


def _renamed(lines: Lines) -> tuple[str, Lines]:
    """The same file under a fresh run id (so a 201 would be a new run, not a 409)."""
    new = json.loads(json.dumps(lines))
    new[0]["run"]["id"] = uuid.uuid4().hex
    return new[0]["run"]["id"], new


def _ndjson(lines: Lines, sep: bytes = b"\n", prefix: bytes = b"") -> bytes:
    return prefix + sep.join(json.dumps(ln).encode() for ln in lines) + sep


def _assert_not_stored(inproc: InProc, run_id: str) -> None:
    assert inproc.client.get(f"{API}/runs/{run_id}").status_code == 404
    listed = inproc.client.get(f"{API}/runs", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    assert run_id not in {r["id"] for r in listed.json()["data"]}


@pytest.mark.parametrize("prefix,sep", [(b"\n", b"\n"), (b"   \t\n", b"\n"), (b"", b"\r\n"), (b"\r\n\r\n", b"\r\n")],
                         ids=["blank-first-line", "whitespace-first-line", "crlf", "crlf-blank-lines"])
def test_scoped_token_cannot_import_into_another_project_whatever_the_layout(
        inproc: InProc, prefix: bytes, sep: bytes) -> None:
    victim = "victim-" + uuid.uuid4().hex[:8]
    _, lines = _source_export(inproc, victim)
    new_id, lines = _renamed(lines)
    _, scoped = inproc.new_token(project="mine-" + uuid.uuid4().hex[:8])
    r = inproc.client.post(f"{API}/runs/import", content=_ndjson(lines, sep, prefix),
                           headers={"Authorization": f"Bearer {scoped}"})
    assert r.status_code == 403, r.text
    assert victim in r.text
    _assert_not_stored(inproc, new_id)
    # The same layout from a token that may write there is a valid file: 201, data intact.
    r = inproc.client.post(f"{API}/runs/import", content=_ndjson(lines, sep, prefix), headers=inproc.auth)
    assert r.status_code == 201, r.text
    keys = inproc.client.get(f"{API}/runs/{new_id}/keys").json()
    assert keys["scalars"][0]["count"] == 3 and keys["arrays"][0]["count"] == 1


def _set(line: int, *path: str | int, value: Any) -> Callable[[Lines], None]:
    def edit(lines: Lines) -> None:
        obj: Any = lines[line]
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = value
    return edit


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# (edit, physical line of the error, a field name the error must name)
CRAFTED: dict[str, tuple[Callable[[Lines], None], int, str]] = {
    "status pwned": (_set(0, "run", "status", value="pwned"), 1, "status"),
    "config a list": (_set(0, "run", "config", value=[1, 2]), 1, "config"),
    "summary a string": (_set(0, "run", "summary", value="x"), 1, "summary"),
    "tags [1]": (_set(0, "run", "tags", value=[1]), 1, "tags"),
    "last_step x": (_set(0, "run", "last_step", value="x"), 1, "last_step"),
    "world_size -5": (_set(0, "run", "world_size", value=-5), 1, "world_size"),
    "created_at beyond UTC": (_set(0, "run", "created_at", value="9999-12-31T23:59:59-05:00"), 1, "created_at"),
    "finished_at not a date": (_set(0, "run", "finished_at", value="yesterday"), 1, "finished_at"),
    "chunk values 3 bytes": (_set(2, "values", value=_b64(b"abc")), 3, "values"),
    "chunk n not the bytes": (lambda ls: ls[2].update(n=ls[2]["n"] + 1), 3, "n="),
    "chunk invalid base64": (_set(2, "steps", value="!!not base64!!"), 3, "steps"),
    "chunk step 2**64": (_set(2, "step_max", value=2**64), 3, "step_max"),
    "array shape not the values": (_set(3, "shape", value=[3, 3]), 4, "shape"),
    "array values invalid base64": (_set(3, "values", value="%%%"), 4, "values"),
    "array step 2**64": (_set(3, "step", value=2**64), 4, "step"),
    "event kind 100 kB": (_set(4, "kind", value="k" * 100_000), 5, "kind"),
    "event step 2**64": (_set(4, "step", value=2**64), 5, "step"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_import_is_422_naming_line_and_field_and_stores_nothing(inproc: InProc, name: str) -> None:
    edit, line, field = CRAFTED[name]
    _, lines = _source_export(inproc, "crafted-" + uuid.uuid4().hex[:8])
    new_id, lines = _renamed(lines)
    edit(lines)
    r = inproc.client.post(f"{API}/runs/import", content=_ndjson(lines), headers=inproc.auth)
    assert r.status_code == 422, (name, r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert any(d["loc"][:2] == ["body", f"line {line}"] for d in detail), detail
    assert any(field in json.dumps(d) for d in detail), (field, detail)
    assert len(r.content) < 20_000  # a 100 kB input is not echoed back
    _assert_not_stored(inproc, new_id)
    series = inproc.client.get(f"{API}/series", params={"run_id": lines[0]["run"]["id"], "key": "loss"})
    assert series.status_code == 404  # no half-imported run to read either


@pytest.mark.parametrize("body", [b'[{"type": "run"}]', b'"optiscope-run/1"', b"42\n", b"null", b"", b"\n \r\n"],
                         ids=["array", "string", "number", "null", "empty", "blank"])
def test_import_body_that_is_not_ndjson_objects_is_422(inproc: InProc, body: bytes) -> None:
    before = inproc.client.get(f"{API}/runs", params={"limit": 1000}).json()["count"]
    r = inproc.client.post(f"{API}/runs/import", content=body, headers=inproc.auth)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "body"
    after = inproc.client.get(f"{API}/runs", params={"limit": 1000})
    assert after.status_code == 200 and after.json()["count"] == before


# -- defence in depth: rows that break the schema, written with SQL ---------------------------------


def _sql(inproc: InProc, statements: list[tuple[str, dict[str, Any]]]) -> None:
    engine = create_engine(inproc.db_url)
    try:
        with engine.begin() as conn:
            for stmt, params in statements:
                conn.execute(text(stmt), params)
    finally:
        engine.dispose()


def _json(inproc: InProc, param: str) -> str:
    return f":{param}" if inproc.engine == "sqlite" else f"CAST(:{param} AS json)"


def test_a_damaged_run_row_never_breaks_the_runs_list_or_its_own_reads(inproc: InProc) -> None:
    project = "damaged-" + uuid.uuid4().hex[:8]
    good = inproc.create_run(project=project, name="good")["id"]
    bad = inproc.create_run(project=project, name="bad")["id"]
    last_step = "'x'" if inproc.engine == "sqlite" else "NULL"  # PostgreSQL's BIGINT cannot hold text
    _sql(inproc, [(f"UPDATE run SET status = 'pwned', config = {_json(inproc, 'config')}, "
                   f"summary = {_json(inproc, 'summary')}, tags = {_json(inproc, 'tags')}, world_size = -5, "
                   f"last_step = {last_step} WHERE id = :id",
                   {"config": "[1, 2]", "summary": '"x"', "tags": "[1]", "id": bad})])
    try:
        _check_damaged_run_is_served(inproc, project, good, bad)
    finally:  # the PostgreSQL database is shared by the session: leave no damaged row behind
        _sql(inproc, [("DELETE FROM run WHERE id = :id", {"id": bad})])


def _check_damaged_run_is_served(inproc: InProc, project: str, good: str, bad: str) -> None:
    listed = inproc.client.get(f"{API}/runs", params={"project": project})
    assert listed.status_code == 200, listed.text
    rows = {r["id"]: r for r in listed.json()["data"]}
    assert set(rows) == {good, bad}
    assert "damaged" not in rows[good] and rows[good]["name"] == "good"
    assert rows[bad]["damaged"] is True and rows[bad]["name"] == "bad"
    assert {e.split(":")[0] for e in rows[bad]["errors"]} >= {"status", "config", "summary"}
    assert rows[bad]["config"] == {} and rows[bad]["summary"] == {}
    for path in (f"/runs/{bad}", f"/runs/{bad}/keys", f"/runs/{bad}/latest", f"/runs/{bad}/events",
                 f"/runs/{bad}/arrays"):
        assert inproc.client.get(API + path).status_code == 200, path
    for params in ({"status": "running"}, {"order": "-last_step"}, {"q": "ba"}):
        assert inproc.client.get(f"{API}/runs", params=params).status_code == 200, params
    # and it can still be cleaned up
    assert inproc.client.delete(f"{API}/runs/{bad}", headers=inproc.auth).status_code == 204


def test_damaged_chunks_and_arrays_are_skipped_and_flagged_not_500(inproc: InProc) -> None:
    rid, _ = _source_export(inproc, "damaged-data-" + uuid.uuid4().hex[:8])
    r = inproc.client.post(f"{API}/runs/{rid}/batches", headers=inproc.auth, json={
        "scalars": [{"key": "loss", "steps": list(range(3, 20_000)), "values": [0.5] * 19_997}],
        "arrays": [{"key": "sv.weight", "layer": "fc", "step": s, "values": [1.0, 2.0]} for s in (2, 3)]})
    assert r.status_code == 200, r.text
    blob = "X'616263'" if inproc.engine == "sqlite" else "'\\x616263'::bytea"
    _sql(inproc, [
        (f"UPDATE series_chunk SET \"values\" = {blob} WHERE seq = 0 AND series_id = "
         "(SELECT id FROM series WHERE run_id = :id AND key = 'loss')", {"id": rid}),
        (f"UPDATE array_record SET \"values\" = {blob} WHERE run_id = :id AND step = 2", {"id": rid}),
        (f"UPDATE series SET last_value = {blob} WHERE run_id = :id AND key = 'loss'", {"id": rid}),
        (f"UPDATE array_record SET shape = {_json(inproc, 'shape')} WHERE run_id = :id AND step = 3",
         {"id": rid, "shape": "[7, 7]"}),
    ])
    try:
        r = inproc.client.get(f"{API}/series", params={"run_id": rid, "key": "loss", "points": 20_000})
        assert r.status_code == 200, r.text
        (s,) = r.json()["series"]
        assert s["damaged"] == 1 and 0 < s["total"] < 20_000  # the sound chunks are served
        for path in ("latest", "keys"):
            r = inproc.client.get(f"{API}/runs/{rid}/{path}")
            assert r.status_code == 200, (path, r.text)
        assert inproc.client.get(f"{API}/runs/{rid}/latest").json()["loss"]["value"] is None
        r = inproc.client.get(f"{API}/runs/{rid}/arrays", params={"key": "sv.weight"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["damaged"] == 2 and [rec["step"] for rec in body["records"]] == [1]
        assert body["records"][0]["values"] == [1.0, 2.0, 3.0, 4.0]
    finally:  # the PostgreSQL database is shared by the session: leave no damaged row behind
        _sql(inproc, [("DELETE FROM run WHERE id = :id", {"id": rid})])
