"""The figures script's code paths at small sizes, so ``bench_probe.py``'s table cannot rot unnoticed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import probe_figures as figures  # noqa: E402


def _is_row(row: object) -> bool:
    return (isinstance(row, tuple) and len(row) == 4 and all(isinstance(x, str) for x in row[:3])
            and (row[3] is None or isinstance(row[3], bool)))


def test_mlp_rows_measure_the_probe() -> None:
    rows = figures.mlp64_default(60)
    assert len(rows) == 3 and all(map(_is_row, rows))
    assert "ms/step" in rows[1][1]
    points = figures.mlp64_points(120)
    assert _is_row(points) and points[3] is True  # at 120 steps every quantity has its floor at least


def test_the_alert_is_raised_where_the_budget_cannot_be_met_and_not_where_it_can() -> None:
    raised, absent = figures.alert_rows(200)
    assert raised[3] is True and absent[3] is True


def test_thread_limit_rows_are_measured_or_say_why_not() -> None:
    rows = figures.thread_limit_rows(repeats=1)
    assert rows and all(map(_is_row, rows))
    assert all(r[3] is not None or "not measured" in r[1] for r in rows)


def test_the_table_prints_every_row_with_its_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    figures.print_table([("a", "1×", "≤ 2×", True), ("b", "3×", "≤ 2×", False), ("c", "-", "report", None)], "here")
    out = capsys.readouterr().out
    assert "here" in out and "NOT MET" in out and "n/a" in out
