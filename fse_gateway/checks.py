"""System checks of the FSE publication: the JWTs go over TLS, the credentials can be read."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured


@register(Tags.security, deploy=True)
def check_fse_transport(app_configs: Any, **kwargs: Any) -> list[Any]:
    """``check --deploy``: the gateway's URLs are https (the JWTs and the reports travel on them)."""
    problems: list[Any] = []
    for name in ("PACS_FSE_GATEWAY_URL", "PACS_FSE_MANIFEST_URL"):
        value = str(getattr(settings, name, ""))
        if value.startswith("http://"):
            problems.append(
                Warning(
                    f"{name} is plain http: the reports and the JWTs would travel unencrypted.",
                    hint="Use the gateway's https address.",
                    id="fse_gateway.W001",
                )
            )
    return problems


@register()
def check_fse_credentials(app_configs: Any, **kwargs: Any) -> list[Any]:
    """With a gateway configured, its signing key and certificate must be readable now, not at the first report."""
    if not settings.PACS_FSE_GATEWAY_URL:
        return []
    from .gateway import _credentials_read

    try:
        _credentials_read(
            settings.PACS_FSE_JWT_KEY_FILE, settings.PACS_FSE_JWT_CERT_FILE, settings.PACS_FSE_JWT_KEY_PASSWORD
        )
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="PACS_FSE_JWT_KEY_FILE, PACS_FSE_JWT_CERT_FILE", id="fse_gateway.E001")]
    return []
