"""Package boundaries from docs/ARCHITECTURE.md, checked on the source.

The probe runs on training machines that install only torch + httpx, the dashboard talks to the
server over HTTP only, and the server knows neither: an import across these lines would make an
extra fail to install or run on its own, so it is a bug even when every package happens to be
installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "probe": {"server", "dashboard", "migrations"},
    "server": {"probe", "dashboard"},
    "dashboard": {"server", "probe", "migrations"},
    "migrations": {"probe", "dashboard"},
}
# Modules one side may import across a line, because they import only the standard library (checked below).
ALLOWED_ACROSS = {"server": {"dashboard.host_policy"}}
# The only heavy third-party modules each side may import.
FORBIDDEN_THIRD_PARTY = {
    "probe": {"fastapi", "sqlalchemy", "alembic", "dash", "plotly", "uvicorn"},
    "dashboard": {"torch", "sqlalchemy", "alembic"},
    "server": {"torch", "dash", "plotly"},
}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _imported_top_levels(path: Path, allowed: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    return {name.split(".")[0] for name in _imported_modules(path) if name not in allowed}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_across_boundary(package: str) -> None:
    offenders = []
    banned = FORBIDDEN[package] | FORBIDDEN_THIRD_PARTY.get(package, set())
    for path in _sources(package):
        rel = path.relative_to(ROOT)
        for name in _imported_top_levels(path, ALLOWED_ACROSS.get(package, set())) & banned:
            offenders.append(f"{rel} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_every_package_has_sources() -> None:
    for package in FORBIDDEN:
        assert _sources(package), f"{package}/ has no Python sources"


@pytest.mark.parametrize("module", sorted(set().union(*ALLOWED_ACROSS.values())))
def test_modules_allowed_across_a_line_import_only_the_standard_library(module: str) -> None:
    import sys

    path = ROOT / (module.replace(".", "/") + ".py")
    outside = {name.split(".")[0] for name in _imported_modules(path)} - set(sys.stdlib_module_names) - {"__future__"}
    assert not outside, f"{module} imports {sorted(outside)}"


def test_the_served_app_does_not_import_scipy_stats_until_a_statistic_needs_it(tmp_path: Path) -> None:
    """scipy.stats costs ~1.2 s to import (several on a busy machine): every ``optiscope serve`` start, and
    so every live-server test, paid it before its first group band or why with seeds, if any."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from server.config import Settings\n"
        "from server.main import create_app\n"
        f"create_app(Settings(home={str(tmp_path)!r}, reaper_interval=0))\n"
        "assert 'dashboard' in sys.modules, 'the dashboard was not mounted: the check would prove nothing'\n"
        "assert 'scipy.stats' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
