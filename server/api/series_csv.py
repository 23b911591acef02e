"""One run's series as JSON or CSV: ``GET /runs/{run_id}/series?key=loss&key=acc``.

CSV is what a spreadsheet, pandas or a paper's plotting script reads (the dashboard's per-panel
"CSV" download uses it). It answers ``?format=csv`` or ``Accept: text/csv``; without either it is the
JSON of ``GET /series`` for this run. The read scoping is the run's (``ReadRunDep``): a
project-scoped token gets 404 for another project's run, as for every read.

A CSV has every stored point in the step range (the chart's downsampling is for drawing, not for
export) unless ``points`` asks for fewer; it is written in one long table ``run_id, key, step, time,
value`` (non-finite values as ``nan``/``inf``/``-inf``, as pandas reads them), streamed per series.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from server import store
from server.api.deps import ReadRunDep, SessionDep
from server.downsample import downsample_indices
from server.errors import InvalidBody
from server.store.series import list_series, load_points
from server.wire import WireJSONResponse

router = APIRouter(tags=["query"])
CSV_COLUMNS = ("run_id", "key", "step", "time", "value")
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
JSON_MAX_POINTS = 20_000  # as GET /series


def wants_csv(request: Request, format: str | None) -> bool:
    """``?format=`` decides; without it, an ``Accept`` that names text/csv does."""
    if format is not None:
        return format == "csv"
    return "text/csv" in request.headers.get("accept", "").lower()


def _number(value: float) -> str:
    return repr(float(value))  # shortest round-trip form; nan / inf / -inf for non-finite


def csv_rows(sessionmaker: Callable[[], Session], run_id: str, series: Sequence[tuple[str, int]], *,
             step_min: float | None, step_max: float | None, points: int | None) -> Iterator[str]:
    """The CSV text, header first, one chunk per ``(key, series id)``, read with its own session
    (the request's is closed before the stream starts, as for array reads)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    session = sessionmaker()
    try:
        for key, series_id in series:
            pts = load_points(session=session, series_id=series_id, x_min=step_min, x_max=step_max,
                              with_times=True)
            if points is not None and len(pts) > points:
                pts = pts.take(downsample_indices(pts.values, points))
            buf.seek(0)
            buf.truncate()
            for step, t, v in zip(pts.steps.tolist(), pts.times.tolist(), pts.values.tolist()):
                writer.writerow((run_id, key, step, _number(t), _number(v)))
            yield buf.getvalue()
    finally:
        session.close()


def csv_filename(run_id: str, keys: Sequence[str]) -> str:
    """A file name that says what is inside, safe in a Content-Disposition header."""
    stem = "-".join([run_id, *keys])[:120]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) + ".csv"


@router.get("/runs/{run_id}/series")
def read_run_series(
    request: Request, run: ReadRunDep, session: SessionDep,
    key: Annotated[list[str], Query(min_length=1, max_length=500)],
    format: Literal["json", "csv"] | None = None,
    points: Annotated[int | None, Query(ge=2, le=10_000_000)] = None,
    step_min: float | None = None,
    step_max: float | None = None,
) -> Response:
    keys = list(dict.fromkeys(key))
    if wants_csv(request, format):
        by_key = {s.key: s.id for s in list_series(session=session, run_id=run.id, keys=keys)}
        found = [(k, by_key[k]) for k in keys if k in by_key]  # unknown keys: no rows
        run_id = run.id
        session.close()
        return StreamingResponse(
            csv_rows(request.app.state.sessionmaker, run_id, found, step_min=step_min, step_max=step_max,
                     points=points),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{csv_filename(run_id, keys)}"'})
    if points is not None and points > JSON_MAX_POINTS:
        raise InvalidBody([{"loc": ["query", "points"], "type": "less_than_equal",
                            "msg": f"points may be at most {JSON_MAX_POINTS} for JSON (a CSV has no limit)"}])
    series = store.read_series(session=session, run_ids=[run.id], keys=keys, x="step",
                               points=points or 2000, x_min=step_min, x_max=step_max,
                               cache=request.app.state.series_cache)
    return WireJSONResponse({"series": series})
