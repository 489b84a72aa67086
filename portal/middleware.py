"""Citizens' sessions: short when idle, bounded from login.

A citizen's login stores its time in the session (:func:`portal.signals`
receiver of ``user_logged_in``). Each request then renews the idle expiry
(``PACS_PORTAL_SESSION_IDLE_SECONDS``; at most once a minute, so a page's
images do not each write the session) and ends the session once
``PACS_PORTAL_SESSION_MAX_SECONDS`` have passed since login.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _

LOGIN_AT = "portal_login_at"
SEEN_AT = "portal_seen_at"
RENEW_EVERY = 60


class CitizenSessionMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        session = getattr(request, "session", None)
        login_at = session.get(LOGIN_AT) if session is not None else None
        if login_at is not None:
            now = time.time()
            if now - float(login_at) > settings.PACS_PORTAL_SESSION_MAX_SECONDS:
                logout(request)
                messages.info(request, _("La sessione è scaduta: entri di nuovo."))
                return redirect("portal:login")
            if session is not None and now - float(session.get(SEEN_AT, 0)) > RENEW_EVERY:
                session[SEEN_AT] = now
                session.set_expiry(settings.PACS_PORTAL_SESSION_IDLE_SECONDS)
        return self.get_response(request)
