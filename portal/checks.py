"""System checks of the portal: the pages' front-end packages are on disk."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def check_front_end(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Bootstrap Italia and PDF.js are served from node_modules (settings.STATICFILES_DIRS), installed by ``npm ci``."""
    errors: list[CheckMessage] = []
    css = settings.BOOTSTRAP_ITALIA_DIR / "css" / "bootstrap-italia.min.css"
    if not css.is_file():
        errors.append(
            Error(
                f"Bootstrap Italia is not installed: {css} is missing.",
                hint="Run `npm ci` in the project folder (make run and make test do it).",
                id="portal.E001",
            )
        )
    pdfjs = settings.PDFJS_DIR / "legacy" / "build" / "pdf.min.mjs"
    if not pdfjs.is_file():
        errors.append(
            Error(
                f"PDF.js is not installed: {pdfjs} is missing (the exam page shows the report with it).",
                hint="Run `npm ci` in the project folder (make run and make test do it).",
                id="portal.E002",
            )
        )
    return errors
