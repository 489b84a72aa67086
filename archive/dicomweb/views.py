"""DICOMweb endpoints (PS3.18) under ``/dicomweb/`` and ``/dicomweb/<facility>/``: thin adapters.

Each view authenticates (DRF token or staff session), checks the permission,
calls one service function of this package, and writes one audit event
for what it served or refused (a search's names the patients it returned).

What a request sees is decided by the access policy (``archive.access``),
carried by the :class:`~archive.dicomweb.scope.Scope`: a study the patient hid
(*oscuramento*) or one outside the user's health authority is simply absent
from QIDO-RS at every level and answers 404 to every retrieval, exactly as a
study that is not archived. STOW-RS stores into any study (a modality's later
images of a hidden study must not be lost) and answers the same whether the
study was there, hidden or new (see :mod:`archive.dicomweb.stow`). DRF's content negotiation is switched off
(it would answer 406 to ``Accept: multipart/related; type="application/dicom"``):
the service functions negotiate DICOM media types themselves.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import get_script_prefix
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView, exception_handler

from archive.rendering.previews import rendition_exists, rendition_may_exist
from kernel.audit import audit_record
from kernel.models import AuditEvent
from kernel.web import client_ip

from .. import access
from ..api_tokens import ApiTokenAuthentication
from ..models import Facility, Study
from .media import DICOM_JSON, DicomwebError, MediaRange, dumps, error_body, json_acceptable, parse_accept
from .multipart import Part, Streamed, body_of, multipart_content_type, multipart_stream, new_boundary
from .native_xml import dataset_to_native_xml
from .qido import qido_search
from .rendered import RENDITION, render_instance, render_params, rendered_many_response, thumbnail_of
from .scope import Scope, instance_one_select, instance_rows_select, instance_url, instances_select, study_get
from .stow import DICOM_XML, stow, stow_answer_type
from .wado import (
    bulkdata_response,
    frames_response,
    instances_retrieve_response,
    metadata_response,
    parse_frame_list,
)
from .wado_uri import wado_uri_file, wado_uri_parse, wado_uri_wants_dicom

logger = logging.getLogger(__name__)

RETRIEVE = "dicomweb.retrieve"
METADATA = "dicomweb.metadata"
STORE = "dicomweb.store"
SEARCH = "dicomweb.search"
_MAX_WARNINGS = 10


class _AnyContent(BaseContentNegotiation):
    """Errors are JSON whatever the Accept header; the views negotiate the rest."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class _HasPerm(BasePermission):
    perm = "archive.view_instance"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.has_perm(self.perm))


class CanRead(_HasPerm):
    message = "reading images needs the archive.view_instance permission"


class CanStore(_HasPerm):
    perm = "archive.add_instance"
    message = "storing images needs the archive.add_instance permission"


@dataclass
class AuditNote:
    """What one request touched, filled in by the handler as it learns it."""

    action: str
    study: Study | None = None
    study_instance_uid: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    outcome: str = AuditEvent.Outcome.SUCCESS
    # A search's: the patients it returned (kernel.audit bounds them).
    patients: list[int] | None = None


def public_url(request: Any, path: str) -> str:
    """An absolute URL for ``path``: on PACS_PUBLIC_URL when set (behind a proxy, or for
    clients that send a Host without the port, as dicomweb-client does), else on the request's Host."""
    if settings.PACS_PUBLIC_URL:
        return settings.PACS_PUBLIC_URL + path
    return str(request.build_absolute_uri(path))


_client_address = client_ip


class DicomwebView(APIView):
    """Base: token first (so that an anonymous client gets 401 with ``WWW-Authenticate: Token, Bearer``)."""

    authentication_classes = [ApiTokenAuthentication, SessionAuthentication]
    permission_classes = [CanRead]
    content_negotiation_class = _AnyContent
    renderer_classes = [JSONRenderer]
    schema = None  # DICOMweb is PS3.18's, not described in the OpenAPI schema
    action = RETRIEVE

    def audit_action(self) -> str:
        return STORE if self.request.method == "POST" else self.action

    # OPTIONS answers the capabilities (PS3.18 8.9): a description of the service,
    # no data, so no authentication, no permission and no audit (capabilities.py).
    def perform_authentication(self, request: Request) -> None:
        if request.method != "OPTIONS":
            super().perform_authentication(request)

    def check_permissions(self, request: Request) -> None:
        if request.method != "OPTIONS":
            super().check_permissions(request)

    def options(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:  # type: ignore[override]  # DRF sends any HttpResponseBase; its stub says Response
        from .capabilities import capabilities_response, resource_route

        facility = kwargs.get("facility")
        base = public_url(request, f"{get_script_prefix()}dicomweb" + (f"/{facility}" if facility else "")) + "/"
        route = resource_route(request.resolver_match.route if request.resolver_match else "")
        return capabilities_response(base=base, accept=request.META.get("HTTP_ACCEPT"), route=route)

    def get_exception_handler(self) -> Any:
        # DRF's own: DICOMweb answers {"detail": ...} as PS3.18 clients expect, not the
        # REST APIs' problem documents (kernel.problems).
        return exception_handler

    def handle_exception(self, exc: Exception) -> HttpResponse:  # type: ignore[override]  # DRF sends any HttpResponseBase; its stub says Response
        note: AuditNote | None = getattr(self, "_note", None)
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed | exceptions.PermissionDenied):
            self._audit(note or AuditNote(self.audit_action()), AuditEvent.Outcome.DENIED, error=str(exc.detail))
        if isinstance(exc, DicomwebError):
            note = note or AuditNote(self.audit_action())
            outcome = (
                AuditEvent.Outcome.DENIED if note.outcome == AuditEvent.Outcome.DENIED else AuditEvent.Outcome.FAILURE
            )
            self._audit(note, outcome, error=exc.message)
            response = HttpResponse(error_body(exc.message), status=exc.status, content_type="application/json")
            if exc.status == 503:
                response["Retry-After"] = "60"
            return response
        return super().handle_exception(exc)

    def _audit(self, note: AuditNote, outcome: str, *, error: str = "") -> None:
        request = self.request
        detail = {
            "method": request.method,
            "path": request.path[:500],
            "accept": request.META.get("HTTP_ACCEPT", "")[:200],
            **note.detail,
        }
        if error:
            detail["error"] = error[:500]
        user = getattr(request, "_user", None)
        try:
            audit_record(
                action=note.action,
                outcome=outcome,
                user=user,
                study=note.study,
                study_instance_uid=note.study_instance_uid,
                source=_client_address(request),
                detail=detail,
                patients=note.patients,
            )
        except Exception:
            # The answer has been decided; a failing audit write must be visible, not silent.
            logger.exception("could not write the audit event for %s %s", request.method, request.path)
            raise

    # --- helpers for the handlers

    def begin(self, **detail: Any) -> AuditNote:
        self._note = AuditNote(self.audit_action(), detail=dict(detail))
        return self._note

    def scope(self, facility: str | None) -> Scope:
        root = f"{get_script_prefix()}dicomweb" + (f"/{facility}" if facility else "")
        base = public_url(self.request, root)
        principal = access.principal_for_request(self.request)
        if facility is None:
            return Scope(None, base, principal)
        found = Facility.objects.filter(code=facility).first()
        if found is None:
            raise DicomwebError(404, f"there is no facility {facility!r}")
        return Scope(found, base, principal)

    def accept(self) -> list[MediaRange]:
        # PS3.18 8.3.3.1: an "accept" query parameter overrides the Accept header.
        override = self.request.query_params.getlist("accept")
        return parse_accept(", ".join(override) if override else self.request.META.get("HTTP_ACCEPT"))

    def select(
        self,
        note: AuditNote,
        scope: Scope,
        *,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> list[Any]:
        note.study_instance_uid = study_uid or ""
        study, instances = instances_select(scope, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
        note.study = study
        note.detail["instances"] = len(instances)
        return instances

    def retrieve(
        self,
        note: AuditNote,
        facility: str | None,
        *,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> HttpResponseBase:
        """WADO-RS of whole instances (study, series, instance): the study checked once against
        the access policy, the instances and their copies read as rows, the files streamed."""
        scope = self.scope(facility)
        note.study_instance_uid = study_uid or ""
        study, rows, among = instance_rows_select(scope, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
        note.study = study
        note.detail["instances"] = len(rows)
        return self.done(note, _streamed(instances_retrieve_response(scope, study_uid, rows, self.accept(), among)))

    def done(self, note: AuditNote, response: HttpResponseBase) -> HttpResponseBase:
        key = _reading_key(self.request, note)
        if key is not None and _reading_recorded(key):
            return response  # this reading's event is written (the first image's)
        if key is not None:
            note.detail["reading_window_s"] = settings.PACS_AUDIT_READING_WINDOW
        self._audit(note, note.outcome)
        if key is not None:
            # Once the event is committed (now, outside a transaction): a rollback leaves no key.
            transaction.on_commit(lambda: _reading_remember(key))
        return response


# --- one event per reading of a study ---------------------------------------------------------------
# A viewer asks for each image of a study on its own (the instance, its frames, its rendering, its
# metadata): a hundred requests for one reading of a CT. The evidence the citizen's access log and
# the auditor need is who opened which study when and through what, not each image; an event per
# image was nine tenths of the audit log at the region's size (docs/CAPACITY.md). So the first image
# request of a reading is audited, with "reading_window_s" in its detail, and the next ones by the
# same user, credential (token or session) and action on the same study are not, one by one, for
# PACS_AUDIT_READING_WINDOW seconds after it; then the next image request writes a new event.
# Always audited: whole studies and series (an export), searches, stores, every refusal and failure,
# and any request when the cache cannot say (the audit errs towards more, never less).

_PER_IMAGE = frozenset(
    {
        "instance",
        "instance.metadata",
        "frames",
        "bulkdata",
        "instance.rendered",
        "instance.thumbnail",
        "frames.rendered",
        "frames.thumbnail",
        "wado-uri",
    }
)


def _reading_key(request: Request, note: AuditNote) -> str | None:
    """The cache key of the reading this request belongs to, or None when it is audited on its own."""
    window = settings.PACS_AUDIT_READING_WINDOW
    if window <= 0 or note.outcome != AuditEvent.Outcome.SUCCESS or note.study is None:
        return None
    if note.detail.get("resource") not in _PER_IMAGE:
        return None
    user = getattr(request, "_user", None)
    if user is None or not user.is_authenticated:
        return None
    # The credential by something random of its own (a row's id may come back after a rollback or
    # a restore), hashed: neither the session's key nor the token's digest goes into the cache.
    token = getattr(request, "_auth", None)
    secret = getattr(token, "digest", None) or getattr(getattr(request._request, "session", None), "session_key", None)
    if not secret:
        return None
    credential = hashlib.sha256(f"{type(token).__name__}:{secret}".encode()).hexdigest()[:32]
    return f"pacs:audit:reading:{user.pk}:{credential}:{note.action}:{note.study.pk}"


def _reading_recorded(key: str) -> bool:
    try:
        return cache.get(key) is not None
    except Exception:
        logger.warning("the cache could not say whether this reading is audited: auditing it", exc_info=True)
        return False


def _reading_remember(key: str) -> None:
    try:
        cache.set(key, 1, timeout=settings.PACS_AUDIT_READING_WINDOW)
    except Exception:
        logger.warning("the cache could not keep this reading: its next image is audited too", exc_info=True)


def _streamed(result: Streamed, status: int = 200) -> StreamingHttpResponse:
    response = StreamingHttpResponse(result.chunks, content_type=result.content_type, status=status)
    for name, value in result.headers.items():
        response[name] = value
    return response


def _warning_header(host: str, texts: list[str]) -> str:
    """RFC 7234 5.5 Warning values (``299 host "text"``), as PS3.18 recommends for statuses."""

    def quoted(text: str) -> str:
        clean = text.encode("ascii", "replace").decode("ascii").replace("\\", "\\\\").replace('"', '\\"')
        return f'"{" ".join(clean.split())[:300]}"'

    return ", ".join(f"299 {host} {quoted(t)}" for t in texts[:_MAX_WARNINGS])


class ServiceRootView(DicomwebView):
    """The service root (``/dicomweb/``, ``/dicomweb/<facility>/``): OPTIONS only, the capabilities."""


# --- WADO-RS ----------------------------------------------------------------------------------------


class StudyView(DicomwebView):
    """``studies/{study}``: GET retrieves the study; POST stores instances into it."""

    def get_permissions(self) -> list[BasePermission]:
        return [CanStore()] if self.request.method == "POST" else [CanRead()]

    def get(self, request: Request, study: str, facility: str | None = None) -> HttpResponseBase:
        note = self.begin(resource="study")
        return self.retrieve(note, facility, study_uid=study)

    def post(self, request: Request, study: str, facility: str | None = None) -> HttpResponseBase:
        return stow_handle(self, facility, study)


class SeriesView(DicomwebView):
    def get(self, request: Request, study: str, series: str, facility: str | None = None) -> HttpResponseBase:
        note = self.begin(resource="series", series=series)
        return self.retrieve(note, facility, study_uid=study, series_uid=series)


class InstanceView(DicomwebView):
    def get(
        self, request: Request, study: str, series: str, instance: str, facility: str | None = None
    ) -> HttpResponseBase:
        note = self.begin(resource="instance", series=series, instance=instance)
        return self.retrieve(note, facility, study_uid=study, series_uid=series, sop_uid=instance)


class MetadataView(DicomwebView):
    """``.../metadata`` at study, series or instance level."""

    action = METADATA

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        facility: str | None = None,
    ) -> HttpResponseBase:
        level = "instance" if instance else "series" if series else "study"
        note = self.begin(resource=f"{level}.metadata", series=series or "", instance=instance or "")
        if not json_acceptable(self.accept()):
            raise DicomwebError(406, "metadata is served as application/dicom+json only")
        scope = self.scope(facility)
        instances = self.select(note, scope, study_uid=study, series_uid=series, sop_uid=instance)
        return self.done(note, _streamed(metadata_response(scope, instances)))


class FramesView(DicomwebView):
    def get(
        self, request: Request, study: str, series: str, instance: str, frames: str, facility: str | None = None
    ) -> HttpResponseBase:
        note = self.begin(resource="frames", series=series, instance=instance, frames=frames[:200])
        numbers = parse_frame_list(frames)
        scope = self.scope(facility)
        (obj,) = self.select(note, scope, study_uid=study, series_uid=series, sop_uid=instance)
        url = instance_url(scope, obj)
        return self.done(note, _streamed(frames_response(obj, numbers, self.accept(), url=url)))


class BulkdataView(DicomwebView):
    def get(
        self, request: Request, study: str, series: str, instance: str, tags: str, facility: str | None = None
    ) -> HttpResponseBase:
        note = self.begin(resource="bulkdata", series=series, instance=instance, tags=tags[:200])
        scope = self.scope(facility)
        (obj,) = self.select(note, scope, study_uid=study, series_uid=series, sop_uid=instance)
        url = instance_url(scope, obj)
        return self.done(note, _streamed(bulkdata_response(obj, tags, self.accept(), url=url)))


class RenderedView(DicomwebView):
    """``.../rendered`` and ``.../thumbnail`` at study, series, instance and frames level."""

    thumbnail = False

    def get(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
        facility: str | None = None,
    ) -> HttpResponseBase:
        level = "frames" if frames else "instance" if instance else "series" if series else "study"
        kind = "thumbnail" if self.thumbnail else "rendered"
        note = self.begin(resource=f"{level}.{kind}", series=series or "", instance=instance or "")
        params = render_params(request.query_params, self.accept(), thumbnail=self.thumbnail)
        numbers = parse_frame_list(frames) if frames else [1]
        scope = self.scope(facility)
        if instance is not None and series is not None:
            # One instance: study, instance and whether a stored rendition matches in one query.
            may_exist = rendition_may_exist(frame=numbers[0], params=params)
            frame = numbers[0]
            note.study_instance_uid = study
            note.study, one = instance_one_select(
                scope,
                study_uid=study,
                series_uid=series,
                sop_uid=instance,
                annotations=(lambda: {RENDITION: rendition_exists(frame=frame, params=params)}) if may_exist else None,
                # What shapes rendition_exists' SQL: the frame and the parameters.
                annotations_key=(RENDITION, frame, params),
            )
            if not may_exist:
                setattr(one, RENDITION, False)
            note.detail["instances"] = 1
            instances = [one]
        else:
            instances = self.select(note, scope, study_uid=study, series_uid=series, sop_uid=instance)
        if self.thumbnail:
            data = thumbnail_of(instances, params, frame=numbers[0])
            return self.done(note, HttpResponse(data, content_type=params.media_type))
        if instance is None:
            return self.done(note, _streamed(rendered_many_response(scope, instances, params)))
        if len(numbers) == 1:
            data = render_instance(instances[0], numbers[0], params)
            return self.done(note, HttpResponse(data, content_type=params.media_type))
        images = [render_instance(instances[0], n, params) for n in numbers]
        boundary = new_boundary()
        url = instance_url(scope, instances[0])
        parts = [
            Part(params.media_type, body_of(data), location=f"{url}/frames/{n}/rendered")
            for n, data in zip(numbers, images, strict=True)
        ]
        streamed = Streamed(multipart_content_type(params.media_type, boundary), multipart_stream(parts, boundary))
        return self.done(note, _streamed(streamed))


class ThumbnailView(RenderedView):
    thumbnail = True


# --- WADO-URI ------------------------------------------------------------------------------------------


class WadoUriView(DicomwebView):
    """``wado?requestType=WADO&studyUID=...&seriesUID=...&objectUID=...`` (PS3.18 chapter 9)."""

    def get(self, request: Request, facility: str | None = None) -> HttpResponseBase:
        note = self.begin(resource="wado-uri", query=request.META.get("QUERY_STRING", "")[:500])
        req = wado_uri_parse(request.query_params)
        scope = self.scope(facility)
        (obj,) = self.select(note, scope, study_uid=req.study_uid, series_uid=req.series_uid, sop_uid=req.sop_uid)
        if wado_uri_wants_dicom(req):
            return self.done(note, _streamed(wado_uri_file(obj, req.transfer_syntax)))
        data = render_instance(obj, req.frame, req.params)
        return self.done(note, HttpResponse(data, content_type=req.params.media_type))


# --- STOW-RS -----------------------------------------------------------------------------------------


def _body_reader(request: Request) -> tuple[Any, int | None]:
    """How to read the request body in chunks, and its declared length.

    A chunked body has no Content-Length; servers that decode it (gunicorn)
    say so with ``wsgi.input_terminated`` and the raw input can be read to
    its end. Django's own stream would read nothing without a length.
    """
    django_request = request._request
    meta = django_request.META
    length_text = meta.get("CONTENT_LENGTH") or ""
    if length_text:
        try:
            length = int(length_text)
        except ValueError:
            raise DicomwebError(400, "Content-Length is not a number") from None
        return django_request.read, length
    if meta.get("wsgi.input_terminated"):
        return meta["wsgi.input"].read, None
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise DicomwebError(411, "this server cannot read a chunked body: send a Content-Length")
    return django_request.read, 0


def stow_handle(view: DicomwebView, facility: str | None, study: str | None) -> HttpResponseBase:
    note = view.begin(resource="studies" if study is None else "study")
    note.study_instance_uid = study or ""
    scope = view.scope(facility)
    answer_type = stow_answer_type(view.accept())  # a 406 before anything is read or stored
    read, length = _body_reader(view.request)
    result = stow(
        read,
        content_type=view.request.META.get("CONTENT_TYPE", ""),
        content_length=length,
        scope=scope,
        study_uid=study,
        user=view.request.user,
    )
    note.detail.update(
        stored=result.stored,
        duplicates=result.duplicates,
        conflicts=result.conflicts,
        failed=result.failed,
        failures=result.failures[:20],
        status=result.status,
    )
    if result.conflict_details:
        note.detail["conflict_details"] = result.conflict_details[:20]
    if len(result.study_ids) == 1:
        note.study = Study.objects.select_related("patient").filter(pk=next(iter(result.study_ids))).first()
    elif result.study_ids:
        note.detail["studies"] = sorted(result.study_ids)[:50]
    if result.status == 409:
        note.outcome = AuditEvent.Outcome.FAILURE
    elif result.status == 202:
        note.outcome = AuditEvent.Outcome.WARNING
    if answer_type == DICOM_XML:
        response = HttpResponse(dataset_to_native_xml(result.dataset), status=result.status, content_type=DICOM_XML)
    else:
        response = HttpResponse(dumps(result.response), status=result.status, content_type=DICOM_JSON)
    if result.warnings:
        response["Warning"] = _warning_header(view.request.get_host(), result.warnings)
    return view.done(note, response)


# --- QIDO-RS ------------------------------------------------------------------------------------------


def qido_handle(
    view: DicomwebView, facility: str | None, *, level: str, study: str | None = None, series: str | None = None
) -> HttpResponseBase:
    request = view.request
    note = view.begin(level=level, query=request.META.get("QUERY_STRING", "")[:500])
    note.study_instance_uid = study or ""
    if not json_acceptable(view.accept()):
        raise DicomwebError(406, "search results are served as application/dicom+json only")
    scope = view.scope(facility)
    result = qido_search(scope, request.query_params, level=level, study_uid=study, series_uid=series)
    note.detail["matches"] = len(result.items)
    note.patients = result.patients
    if study is not None and result.items:
        note.study = study_get(scope, study)
    response = HttpResponse(dumps(result.items), content_type=DICOM_JSON)
    if result.truncated:
        note.detail["truncated"] = True
        # PS3.18 8.3.4.4 (the text the standard gives for this case).
        response["Warning"] = (
            f'299 {request.get_host()}: "The number of results exceeded the maximum supported by the server. '
            'Additional results can be requested."'
        )
    return view.done(note, response)


class StudiesView(DicomwebView):
    """``studies``: POST stores (STOW-RS); GET searches for studies (QIDO-RS)."""

    action = SEARCH

    def get_permissions(self) -> list[BasePermission]:
        return [CanStore()] if self.request.method == "POST" else [CanRead()]

    def get(self, request: Request, facility: str | None = None) -> HttpResponseBase:
        return qido_handle(self, facility, level="STUDY")

    def post(self, request: Request, facility: str | None = None) -> HttpResponseBase:
        return stow_handle(self, facility, None)


class SearchView(DicomwebView):
    """``series``, ``instances``, ``studies/{study}/series``, ``studies/{study}/instances``,
    ``studies/{study}/series/{series}/instances``: QIDO-RS."""

    action = SEARCH
    level = "SERIES"

    def get(
        self, request: Request, study: str | None = None, series: str | None = None, facility: str | None = None
    ) -> HttpResponseBase:
        return qido_handle(self, facility, level=self.level, study=study, series=series)


class SeriesSearchView(SearchView):
    level = "SERIES"


class InstancesSearchView(SearchView):
    level = "IMAGE"
