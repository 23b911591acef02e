"""The user documentation stands on its own: every link and script it names is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path = (doc.parent / target).resolve()
        if not path.exists() or ROOT not in path.parents:
            broken.append(target)
    assert broken == []
    assert "/work/" not in text, "a development machine's path"


def test_every_benchmark_script_the_readme_cites_exists() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"(?:benchmarks/)?(bench_\w+\.py)", text))
    assert cited, "the README cites its benchmark scripts"
    assert sorted(c for c in cited if not (ROOT / "benchmarks" / c).is_file()) == []


def test_architecture_states_the_order_of_spectra_and_factor_eigenvalues() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert re.search(r"`sv\.<S>` \(singular values, \*\*descending\*\*", text)
    assert re.search(r"`kfac\.A_eigs`, `kfac\.G_eigs` \(factor eigenvalues,\s+\*\*ascending\*\*", text)
