"""The capacity plan is where operators look for it: docs/CAPACITY.md, linked from the
README and the deployment guide, and it names the script that reproduces its figures.

Its figures are not checked (they are measurements of one machine on one day)."""

from __future__ import annotations

import re

from tests.conftest import REPO

CAPACITY = REPO / "docs" / "CAPACITY.md"


def _links(text: str) -> set[str]:
    return set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text))


def test_the_capacity_plan_exists_and_names_its_script() -> None:
    text = CAPACITY.read_text(encoding="utf-8")
    assert text.startswith("# "), "docs/CAPACITY.md has no title"
    assert "bench/capacity/run.py" in text
    assert (REPO / "bench" / "capacity" / "run.py").is_file()


def test_the_readme_and_the_deployment_guide_link_the_capacity_plan() -> None:
    assert "docs/CAPACITY.md" in _links((REPO / "README.md").read_text(encoding="utf-8"))
    assert "CAPACITY.md" in _links((REPO / "docs" / "DEPLOYMENT.md").read_text(encoding="utf-8"))
