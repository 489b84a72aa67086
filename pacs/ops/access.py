"""Who may read the operations endpoints that are not public.

One gate for ``/metrics`` (always) and ``/health/ready/`` (when
``PACS_HEALTH_RESTRICTED``): the client's address (``kernel.web.client_ip``,
so a trusted proxy's X-Forwarded-For counts) must be in
``PACS_METRICS_ALLOWED_IPS`` (addresses or networks; loopback by default; an
empty list allows any address), and when ``PACS_METRICS_TOKEN_FILE`` names a
file, the request must carry ``Authorization: Bearer <its content>``. A
scraper outside the machine needs the token: an address alone is easy to
share behind a NAT.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest

from kernel.web import address_in, client_ip


def _token() -> str:
    path = settings.PACS_METRICS_TOKEN_FILE
    if not path:
        return ""
    # Read at each request: a rotated token takes effect without a restart.
    return Path(path).read_text(encoding="utf-8").strip()


def allowed(request: HttpRequest) -> bool:
    """True when ``request`` may read the metrics (and the restricted readiness)."""
    networks = settings.PACS_METRICS_ALLOWED_IPS
    if networks and not address_in(client_ip(request), networks):
        return False
    token = _token()
    if token:
        scheme, _, given = str(request.headers.get("Authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return False
    return True
