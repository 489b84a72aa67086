"""The HTTP edge of the error base: every API of the project answers an error as an
RFC 9457 problem (``application/problem+json``), one shape from the CUP's API and the
archive's alike::

    {"type": "about:blank", "title": "Conflict", "status": 409,
     "detail": "Lo slot delle 10:00 è già occupato.", "code": "slot_taken",
     "field": "scheduled_at"}

``detail`` is the error's ``message`` (Italian, for the operator), ``code`` its stable
machine string, ``field`` the input at fault (``a.b`` for a nested one; null when the
problem is not about one input). A refused request body adds ``errors``, every field's
messages as DRF gives them; an error may add members of its own (``extensions``: the
CUP's ``duplicate`` names the ``accession_number`` already booked). ``type`` is
``about:blank`` and ``title`` the status's phrase: the code says which problem it is.

:func:`problem_exception_handler` is ``REST_FRAMEWORK["EXCEPTION_HANDLER"]``. It
answers a :class:`~kernel.errors.PacsError` by its code (:data:`HTTP_STATUS`) and
reshapes DRF's own answers (a refused body, 401, 403, 404, 405...) into problems.
DICOMweb does not use it: PS3.18 bodies stay ``{"detail": ...}`` (its views keep
DRF's handler). Django views that catch a service error ask :func:`http_status`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

from .errors import PacsError, kind_of

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# code -> HTTP status. The kinds first (kernel.errors: a code not named below answers
# as its kind), then the codes whose status is not their kind's.
HTTP_STATUS: dict[str, int] = {
    "error": 500,
    "invalid": 400,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
    # ReportError (an Invalid): its refusals that are conflicts, its failures.
    "state": 409,  # not a draft, not signed, already amended
    "signed": 409,  # a signed version never changes
    "author": 403,  # only the draft's author discards it
    "missing": 404,  # the report's file is not in the archive
    "damaged": 500,  # ... or not the one signed
    "storage": 500,  # ... or cannot be read
    # BookingError (an Invalid): the CUP's conflicts.
    "slot_taken": 409,
    "duplicate": 409,  # an external_id already booked
    # API tokens: too many wrong passwords.
    "locked_out": 429,
}


def http_status(error: PacsError) -> int:
    """The HTTP status of ``error``: its code's, else its kind's."""
    return HTTP_STATUS.get(error.code) or HTTP_STATUS[kind_of(error)]


def problem(status: int, *, detail: str, code: str, field: str | None = None, **extensions: Any) -> dict[str, Any]:
    """The body of an RFC 9457 problem."""
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": str(detail),
        "code": code,
        "field": field,
        **extensions,
    }


def problem_response(error: PacsError) -> Response:
    """``error`` answered as a problem, with the status of its code."""
    status = http_status(error)
    body = problem(
        status,
        detail=error.message,
        code=error.code,
        field=getattr(error, "field", None),
        **getattr(error, "extensions", {}),
    )
    return Response(body, status=status, content_type=PROBLEM_JSON)


def first_error(errors: Any, prefix: str = "") -> tuple[str | None, str, str]:
    """The first (field path, message, code) of a serializer's nested errors."""
    if isinstance(errors, dict):
        for name, value in errors.items():
            field = None if name == "non_field_errors" else f"{prefix}{name}"
            inner_field, message, code = first_error(value, f"{field}." if field else prefix)
            return (inner_field or field), message, code
    if isinstance(errors, list) and errors:
        return first_error(errors[0], prefix)
    return None, str(errors), getattr(errors, "code", "invalid")


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """``REST_FRAMEWORK["EXCEPTION_HANDLER"]``: a problem for a PacsError and for DRF's own
    answers; None (a 500 from Django, logged) for anything else, as DRF's handler does."""
    if isinstance(exc, PacsError):
        # No set_rollback(), unlike DRF's own: a refusal's audit row, written before the
        # error was raised, stays (a service that must undo its writes uses atomic()).
        return problem_response(exc)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ValidationError):
        field, message, code = first_error(exc.detail)
        response.data = problem(response.status_code, detail=message, code=code, field=field, errors=exc.detail)
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
        code = str(getattr(detail, "code", None) or getattr(exc, "default_code", "error"))
        response.data = problem(response.status_code, detail=str(detail), code=code)
    response.content_type = PROBLEM_JSON
    return response


class ProblemSerializer(serializers.Serializer):
    """An RFC 9457 problem, as every API of the project answers an error (the OpenAPI schema's ``Problem``)."""

    type = serializers.CharField(help_text="about:blank: il codice (code) dice quale problema.")
    title = serializers.CharField(help_text="La frase dello stato HTTP (Bad Request, Conflict...).")
    status = serializers.IntegerField(help_text="Lo stato HTTP della risposta.")
    detail = serializers.CharField(help_text="Il messaggio per l'operatore, in italiano.")
    code = serializers.CharField(
        help_text="Il motivo, stabile, per i programmi: invalid, not_found, not_authenticated, "
        "permission_denied, slot_taken, duplicate, signed, conflict..."
    )
    field = serializers.CharField(
        allow_null=True, help_text="Il campo della richiesta in errore (a.b per i campi annidati), o null."
    )
    errors = serializers.DictField(  # type: ignore[assignment]  # the problem's member "errors"; this serializer only describes the schema and never validates, so Serializer.errors is never read
        required=False, help_text="Solo per una richiesta non valida: gli errori di ogni campo."
    )


def problem_responses(descriptions: dict[int, str]) -> dict[tuple[int, str], Any]:
    """drf-spectacular ``responses`` for these statuses, each a problem with its description."""
    return {
        (status, PROBLEM_JSON): OpenApiResponse(ProblemSerializer, description=text)
        for status, text in descriptions.items()
    }
