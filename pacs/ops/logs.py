"""The request's id on every log line it causes, and one access line per request.

``X-Request-ID`` from the client (a reverse proxy that made one, a caller
tracing its own request) is kept when it is a sane token
(``kernel.logs.sane_id``), else a new id is made; either is bound for the
request (``kernel.logs``) and echoed in the response's ``X-Request-ID``. The
access line says method, path (without the query string: a QIDO query names
patients), status and duration; gunicorn's own access log is off
(``deploy/pacs-web.service``, the Procfile), so the line is written once, in
the same format as the rest.

First in ``MIDDLEWARE``: everything below it logs with the id. The context is
emptied when a request starts and when Django says it finished
(``request_finished``, once the response is closed): Django's own line for a
4xx or 5xx answer is written after the middleware returned, and must carry
the id; gunicorn's threads serve one request after another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

from kernel import logs

logger = logging.getLogger("pacs.request")

HEADER = "X-Request-ID"


def _ids_clear(**_kwargs: Any) -> None:
    logs.ids_clear()


request_finished.connect(_ids_clear, dispatch_uid="pacs.ops.logs.ids_clear")


class RequestIdMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        started = self._start(request)
        response = self.get_response(request)
        self._finish(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = self._start(request)
        response = await cast(Awaitable[HttpResponse], self.get_response(request))
        self._finish(request, response, started)
        return response

    @staticmethod
    def _start(request: HttpRequest) -> float:
        logs.ids_clear()
        request_id = logs.sane_id(request.headers.get(HEADER)) or logs.new_id()
        request.request_id = request_id  # type: ignore[attr-defined]  # for views that show it (an error page)
        logs.ids_bind(request_id=request_id)
        return time.monotonic()

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponse, started: float) -> None:
        response[HEADER] = request.request_id  # type: ignore[attr-defined]
        logger.info(
            "%s %s %d %.1f ms",
            request.method,
            request.path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
