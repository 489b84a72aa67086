"""Accessibility in the Chromium tests: axe-core (Deque's engine, from npm: package.json)
run on the page as the browser shows it, against WCAG 2.1 A and AA (Legge Stanca).

``assert_accessible(page, what)`` fails on any serious or critical violation and
names each rule, its help page and the elements that break it. axe is evaluated
through the DevTools protocol, so the page's Content-Security-Policy (no inline
script) does not stop it and nothing is added to what the server sends.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

AXE_JS = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING = {"serious", "critical"}


@cache
def _axe_source() -> str:
    if not AXE_JS.is_file():
        raise RuntimeError(f"{AXE_JS} is missing: run `npm ci` (make test does it)")
    return AXE_JS.read_text(encoding="utf-8")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Every WCAG 2.1 A/AA violation axe finds on the page as it is now."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(_axe_source())
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        WCAG_TAGS,
    )
    return list(result["violations"])


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        targets = ", ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        lines.append(f"- [{v['impact']}] {v['id']}: {v['help']} ({v['helpUrl']}) on {targets}")
    return "\n".join(lines)


def assert_accessible(page: Any, what: str) -> list[dict[str, Any]]:
    """No serious or critical WCAG 2.1 AA violation on ``page`` (``what`` names it in the failure).

    Returns the minor and moderate violations, for a test that wants to look at them.
    """
    violations = axe_violations(page)
    blocking = [v for v in violations if v.get("impact") in BLOCKING]
    assert not blocking, f"{what}: {len(blocking)} serious or critical accessibility violations\n{describe(blocking)}"
    return [v for v in violations if v.get("impact") not in BLOCKING]
