"""The runs list as one SQL query: filter, sort and page by any config value or summary metric.

Filters and sorts on JSON fields are evaluated by the database (SQLite's ``json_extract`` /
``json_type``, PostgreSQL's ``json_extract_path_text`` / ``json_typeof``), so "sort 10,000 runs by
final loss" or "``lr >= 0.01``" never loads every row into Python. A JSON field compares as a
number only where it holds a number (a string never raises a cast error on PostgreSQL) and as text
otherwise.

Filter syntax (one condition per string): ``FIELD OP VALUE`` with OP one of ``= != > >= < <= ~``
(``~``: case-insensitive substring). FIELD is ``name``, ``status``, ``tag``, ``project``,
``optimizer`` (the run's optimizer or its ``config.optimizer``), ``summary.<key>``,
``config.<dotted.key>``, or a bare key meaning ``config.<key>``. Sort: a FIELD of the same kinds or
a run column (``created_at``, ``updated_at``, ``name``, ``last_step``, ``status``), ``-`` first for
descending.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Select, String, and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from server.models import Project, Run, RunTag

OPS = ("!=", ">=", "<=", "=", ">", "<", "~")
RUN_COLUMNS = {"created_at": Run.created_at, "updated_at": Run.updated_at, "name": Run.name,
               "last_step": Run.last_step, "status": Run.status}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$")
_KEY_PART = re.compile(r"^[\w\-/]+$")


class QueryError(ValueError):
    """A filter or sort the server cannot evaluate; ``field`` names the query parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Condition:
    """One parsed filter: ``field`` (normalised: ``config.x``, ``summary.x`` or a run field)."""

    field: str
    op: str
    value: str


def _normalise_field(name: str, param: str) -> str:
    if name in ("name", "status", "tag", "project", "optimizer") or name in RUN_COLUMNS:
        return name
    if name.startswith(("config.", "summary.")):
        head, _, rest = name.partition(".")
        path = rest
    else:
        head, path = "config", name
    parts = path.split(".")
    if not path or not all(_KEY_PART.match(p) for p in parts):
        raise QueryError(param, f"{name!r} is not a config or summary key")
    return f"{head}.{path}"


def parse_condition(text: str) -> Condition:
    """``"lr >= 0.01"`` -> Condition("config.lr", ">=", "0.01"); a clear error naming ``filter``."""
    m = _CONDITION.match(text or "")
    if not m:
        raise QueryError("filter", f"expected 'FIELD OP VALUE' with OP one of {' '.join(OPS)}, got {text!r}")
    field, op, value = m.groups()
    if value[:1] in "<>=!~" and value:
        raise QueryError("filter", f"{text!r}: unknown operator {op + value[:1]!r}; use one of {' '.join(OPS)}")
    return Condition(_normalise_field(field, "filter"), op, value.strip().strip("'\""))


def parse_sort(text: str) -> tuple[str, bool]:
    """``"-summary.loss"`` -> ("summary.loss", descending=True)."""
    desc = text.startswith("-")
    name = text.lstrip("-+").strip()
    if name in ("tag", "project"):
        raise QueryError("sort", f"cannot sort by {name!r}")
    return _normalise_field(name, "sort"), desc


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


class _Json:
    """JSON field accessors for the session's dialect."""

    def __init__(self, dialect: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise QueryError("filter", f"JSON filters are not supported on {dialect}")
        self.pg = dialect == "postgresql"

    def _column(self, field: str) -> tuple[Any, list[str]]:
        head, _, path = field.partition(".")
        return (Run.config if head == "config" else Run.summary), path.split(".")

    def number(self, field: str) -> ColumnElement[Any]:
        col, parts = self._column(field)
        if self.pg:
            node = func.json_extract_path(col, *[literal(p) for p in parts])
            return case((func.json_typeof(node) == "number",
                         cast(func.json_extract_path_text(col, *[literal(p) for p in parts]), Float)), else_=None)
        path = "$." + ".".join(f'"{p}"' for p in parts)
        return case((func.json_type(col, path).in_(("integer", "real")), func.json_extract(col, path)), else_=None)

    def text(self, field: str) -> ColumnElement[Any]:
        col, parts = self._column(field)
        if self.pg:
            return func.json_extract_path_text(col, *[literal(p) for p in parts])
        path = "$." + ".".join(f'"{p}"' for p in parts)
        return cast(func.json_extract(col, path), String)


def _compare(expr: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
    return {"=": expr == value, "!=": expr != value, ">": expr > value, ">=": expr >= value,
            "<": expr < value, "<=": expr <= value}[op]


def _condition(cond: Condition, js: _Json) -> ColumnElement[bool]:
    f, op, v = cond.field, cond.op, cond.value
    if f == "tag":
        if op not in ("=", "!=", "~"):
            raise QueryError("filter", f"tag takes = != or ~, not {op}")
        sub = select(RunTag.run_id).where(func.lower(RunTag.tag).contains(v.lower(), autoescape=True)
                                          if op == "~" else RunTag.tag == v)
        return Run.id.not_in(sub) if op == "!=" else Run.id.in_(sub)
    if f in ("name", "status", "project", "optimizer") or f in RUN_COLUMNS:
        if f == "optimizer":
            exprs = [Run.optimizer, js.text("config.optimizer")]
        else:
            exprs = [Project.name if f == "project" else RUN_COLUMNS[f]]
        if f == "last_step" and op != "~":
            num = _number(v)
            if num is None:
                raise QueryError("filter", f"last_step compares with a number, got {v!r}")
            return _compare(Run.last_step, op, num)
        if op == "~":
            return or_(*[func.lower(e).contains(v.lower(), autoescape=True) for e in exprs])
        parts = [_compare(e, op, v) for e in exprs]
        return and_(*parts) if op == "!=" else or_(*parts)
    if op == "~":
        return func.lower(js.text(f)).contains(v.lower(), autoescape=True)
    num = _number(v)
    if num is not None:
        if op in ("=", "!="):  # 0.01 also matches a config that holds the string "0.01"
            text_match = js.text(f) == v
            hit = or_(js.number(f) == num, text_match)
            return ~hit if op == "!=" else hit
        return _compare(js.number(f), op, num)
    if op in (">", ">=", "<", "<="):
        return _compare(js.text(f), op, v)
    if v.lower() in ("true", "false"):  # JSON booleans: 1/0 on SQLite, 'true'/'false' on PostgreSQL
        alt = ("1" if v.lower() == "true" else "0") if not js.pg else v.lower()
        hit = or_(js.text(f) == v, js.text(f) == alt)
        return ~hit if op == "!=" else hit
    return _compare(js.text(f), op, v)


@dataclass(frozen=True, slots=True)
class RunQuery:
    """What the runs list asks for; every part is evaluated in SQL."""

    project: str | None = None
    status: str | None = None
    tags: Sequence[str] = ()
    q: str | None = None
    ids: Sequence[str] = ()  # only these runs (the compare page reads the runs its URL names at once)
    filters: Sequence[Condition] = ()
    sort: str = "-created_at"
    limit: int = 200
    offset: int = 0
    updated_since: dt.datetime | None = None


def _filtered(query: RunQuery, js: _Json) -> Select[Any]:
    stmt = select(Run, Project.name).join(Project, Project.id == Run.project_id)
    if query.project:
        stmt = stmt.where(Project.name == query.project)
    if query.status:
        stmt = stmt.where(Run.status == query.status)
    for tag in query.tags:
        stmt = stmt.where(Run.id.in_(select(RunTag.run_id).where(RunTag.tag == tag)))
    if query.q:
        stmt = stmt.where(func.lower(Run.name).contains(query.q.lower(), autoescape=True))
    if query.ids:
        stmt = stmt.where(Run.id.in_(list(query.ids)))
    for cond in query.filters:
        stmt = stmt.where(_condition(cond, js))
    return stmt


def _order(stmt: Select[Any], sort: str, js: _Json) -> Select[Any]:
    field, desc = parse_sort(sort)
    if field in RUN_COLUMNS:
        col = RUN_COLUMNS[field]
        keys = [col.desc() if desc else col.asc()]
    elif field == "optimizer":
        keys = [Run.optimizer.desc().nulls_last() if desc else Run.optimizer.asc().nulls_last()]
    else:  # numbers first (by value), then text values, runs without the field last
        num, txt = js.number(field), js.text(field)
        keys = [(num.desc() if desc else num.asc()).nulls_last(), (txt.desc() if desc else txt.asc()).nulls_last()]
    return stmt.order_by(*keys, Run.id)


def query_runs(session: Session, query: RunQuery) -> tuple[list[tuple[Run, str]], int, int]:
    """(page of runs with project names, total matching, matching rows changed since
    ``updated_since``). With ``updated_since`` the page holds only the changed runs: a dashboard that
    refreshes every few seconds then moves the few rows that changed instead of the whole page."""
    js = _Json(session.get_bind().dialect.name)
    stmt = _filtered(query, js)
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    changed = total
    if query.updated_since is not None:
        stmt = stmt.where(Run.updated_at > query.updated_since)
        changed = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    stmt = _order(stmt, query.sort, js).limit(query.limit).offset(query.offset)
    return [(r, p) for r, p in session.execute(stmt).all()], int(total), int(changed)


def facets(session: Session, *, project: str | None = None) -> dict[str, list[str]]:
    """Projects, tags and the top-level config / summary keys across all runs (of ``project``),
    for the table's dropdowns and its column chooser."""
    dialect = session.get_bind().dialect.name
    projects = list(session.scalars(select(Project.name).order_by(Project.name)))
    tag_stmt = select(RunTag.tag).distinct().order_by(RunTag.tag)
    runs = select(Run.id, Run.config, Run.summary).join(Project, Project.id == Run.project_id)
    if project:
        tag_stmt = tag_stmt.join(Run, Run.id == RunTag.run_id).join(Project, Project.id == Run.project_id).where(
            Project.name == project)
        runs = runs.where(Project.name == project)
    sub = runs.subquery()
    out: dict[str, list[str]] = {"projects": projects, "tags": list(session.scalars(tag_stmt))}
    for name, col in (("config_keys", sub.c.config), ("summary_keys", sub.c.summary)):
        if dialect == "postgresql":
            keys = func.json_object_keys(case((func.json_typeof(col) == "object", col), else_=None))
            stmt = select(keys.label("k")).select_from(sub).distinct()
        else:
            each = func.json_each(col).table_valued("key", "type")
            stmt = select(each.c.key).select_from(sub).join(each, literal(True)).distinct()
        out[name] = sorted(str(k) for k in session.scalars(stmt) if k is not None)
    return out
