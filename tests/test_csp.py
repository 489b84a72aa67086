"""The Content-Security-Policy: the project's own templates and scripts satisfy it,
every page carries it, and only the API's documentation pages relax it (inline
styles and a blob: worker, which Swagger UI and Redoc need). A real browser
checks the pages themselves in tests/interop/test_browser_csp.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client

from tests.conftest import REPO

TEMPLATES = sorted((REPO / "templates").rglob("*.html"))
SCRIPTS = sorted((REPO / "pacs" / "static").glob("*.js"))

# What the policy refuses in a page: a <script> without src (other than a JSON data
# block), a <style> element or style="" attribute without the nonce, an on...=""
# handler, a javascript: URL.
_INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/(?:ld\+)?json\")[^>]*>", re.I), "inline script"),
    (re.compile(r"<style(?![^>]*\bnonce=)[^>]*>", re.I), "<style> element"),
    (re.compile(r"\sstyle\s*=", re.I), "style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "event handler attribute"),
    (re.compile(r"javascript:", re.I), "javascript: URL"),
]


def _directives(header: str) -> dict[str, str]:
    return dict((d.strip().split(" ", 1) + [""])[:2] for d in header.split(";") if d.strip())


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(REPO / "templates")))
def test_no_template_has_what_the_policy_refuses(template: Path) -> None:
    """The admin's DICOM header page had a <style> and a style attribute per row."""
    text = template.read_text()
    found = [what for pattern, what in _INLINE if pattern.search(text)]
    assert not found, f"{template.name}: {found}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_evaluates_strings(script: Path) -> None:
    text = script.read_text()
    assert not re.search(r"\beval\s*\(|new\s+Function\s*\(|set(?:Timeout|Interval)\s*\(\s*['\"]", text)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/accounts/login/", "/fse/accesso/", "/api/schema/"])
def test_every_answer_carries_the_policy(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 200
    directives = _directives(response["Content-Security-Policy"])
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'self'" and directives["form-action"] == "'self'"


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/schema/swagger/", "/api/schema/redoc/"])
def test_the_api_documentation_relaxes_styles_only(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 200
    directives = _directives(response["Content-Security-Policy"])
    assert directives["style-src"] == "'self' 'unsafe-inline'"
    assert directives["script-src"] == "'self'"  # Swagger UI's start-up script is a file
    html = response.content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)


def test_swagger_ui_start_up_script_is_served_as_a_file(client: Client, db: None) -> None:
    page = client.get("/api/schema/swagger/").content.decode()
    [script_url] = [u for u in re.findall(r'<script src="([^"]+)"', page) if "script" in u.split("?", 1)[-1]]
    script = client.get(script_url.replace("&amp;", "&"))
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()


def test_the_api_answers_json_not_browsable_pages(client: Client, db: None) -> None:
    """DRF's browsable pages have inline styles the policy refuses."""
    response = client.get("/api/facilities/", HTTP_ACCEPT="text/html,*/*;q=0.8")
    # Anonymous: the 401 is a problem document (kernel.problems), JSON as well.
    assert response["Content-Type"].startswith(("application/json", "application/problem+json"))
