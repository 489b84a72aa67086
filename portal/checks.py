"""System checks of the portal: the pages' front-end packages are on disk."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def check_front_end(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Bootstrap Italia is served from node_modules (settings.STATICFILES_DIRS), installed by ``npm ci``."""
    css = settings.BOOTSTRAP_ITALIA_DIR / "css" / "bootstrap-italia.min.css"
    if css.is_file():
        return []
    return [
        Error(
            f"Bootstrap Italia is not installed: {css} is missing.",
            hint="Run `npm ci` in the project folder (make run and make test do it).",
            id="portal.E001",
        )
    ]
