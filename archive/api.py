"""The small REST API beside DICOMweb: facilities, studies, reports and API tokens.

Described by drf-spectacular at ``/api/schema/`` (Swagger UI at
``/api/schema/swagger/``, Redoc at ``/api/schema/redoc/``). Reading patient
data (the studies, the reports) is audited like every other access; a list
names the patients it returned.

Studies and reports go through the access policy (``archive.access``): a study
the patient hid (*oscuramento*), or one of another health authority, is absent
from lists and answers 404 with the body of a study or report that does not
exist, never 403.

Errors are RFC 9457 problems by code (:mod:`kernel.problems`), as in every API of
the project.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

from django.conf import settings
from django.contrib.auth import authenticate
from django.db.models import QuerySet
from django.http import HttpResponse
from django.urls import get_script_prefix
from django.utils.translation import gettext
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from knox.models import AuthToken
from rest_framework import generics, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from archive.reporting import services as reports
from kernel.audit import audit_record
from kernel.errors import Conflict, Forbidden, Invalid, NotFound
from kernel.models import AuditEvent
from kernel.problems import problem_responses
from kernel.web import AuthenticatedRequest, HasModelPerms, content_disposition

from . import access
from .api_tokens import ApiTokenAuthentication, api_token_issue, api_token_revoke
from .models import Facility, Report, Study


def _absolute(request: Request | None, path: str) -> str:
    if request is None:
        return path
    from .dicomweb.views import public_url

    return public_url(request, get_script_prefix().rstrip("/") + path)


class _ModelPerm(BasePermission):
    perm = ""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(self.perm))


class StudyPagination(LimitOffsetPagination):
    """Pages of studies: ``limit`` from 1 to ``max_limit``, ``offset`` from 0 to
    PACS_QUERY_MAX_OFFSET. Anything else answers 400 (DRF's own class falls back to
    its default for a bad value, and an offset past the database's integer answered 500)."""

    default_limit = 100
    max_limit = 1000

    def get_limit(self, request: Request) -> int:
        value = _page_param(request, self.limit_query_param, low=1, high=self.max_limit or self.default_limit)
        return self.default_limit if value is None else value

    def get_offset(self, request: Request) -> int:
        value = _page_param(request, self.offset_query_param, low=0, high=int(settings.PACS_QUERY_MAX_OFFSET))
        return 0 if value is None else value


def _page_param(request: Request, name: str, *, low: int, high: int) -> int | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return None
    sign = -1 if text.startswith("-") else 1
    digits = text[1:] if sign < 0 else text
    # Digits only: int() would take "+5" and "5_000", and refuse thousands of digits.
    if not (digits.isascii() and digits.isdigit()):
        raise ValidationError({name: [gettext("%(name)s deve essere un numero intero.") % {"name": name}]})
    digits = digits.lstrip("0") or "0"
    value = sign * (int(digits) if len(digits) <= 18 else high + 1)
    if not low <= value <= high:
        message = gettext("%(name)s deve essere tra %(low)d e %(high)d.") % {"name": name, "low": low, "high": high}
        raise ValidationError({name: [message]})
    return value


class CanViewFacilities(_ModelPerm):
    perm = "archive.view_facility"


class CanViewStudies(_ModelPerm):
    perm = "archive.view_study"


class FacilitySerializer(serializers.ModelSerializer):
    authority = serializers.CharField(source="authority.code", read_only=True)
    authority_name = serializers.CharField(source="authority.name", read_only=True)
    dicomweb_url = serializers.SerializerMethodField()

    class Meta:
        model = Facility
        fields = ["code", "name", "authority", "authority_name", "ae_title", "dicom_port", "dicomweb_url"]

    def get_dicomweb_url(self, obj: Facility) -> str:
        return _absolute(self.context.get("request"), f"/dicomweb/{obj.code}")


class StudySerializer(serializers.ModelSerializer):
    facility = serializers.CharField(source="facility.code", read_only=True)
    modalities = serializers.ListField(source="modality_list", child=serializers.CharField(), read_only=True)
    retrieve_url = serializers.SerializerMethodField(help_text="The study's WADO-RS URL.")

    class Meta:
        model = Study
        fields = [
            "study_instance_uid",
            "facility",
            "patient_name",
            "dicom_patient_id",
            "issuer_of_patient_id",
            "patient_birth_date",
            "patient_sex",
            "study_date",
            "study_time",
            "accession_number",
            "study_id",
            "study_description",
            "referring_physician_name",
            "modalities",
            "number_of_series",
            "number_of_instances",
            "last_received_at",
            "retrieve_url",
        ]
        read_only_fields = fields

    def get_retrieve_url(self, obj: Study) -> str:
        return _absolute(self.context.get("request"), f"/dicomweb/studies/{obj.study_instance_uid}")


class FacilityListView(generics.ListAPIView):
    """The region's facilities and each one's DICOMweb root."""

    queryset = Facility.objects.select_related("authority").order_by("code")
    serializer_class = FacilitySerializer
    permission_classes = [CanViewFacilities]


class FacilityDetailView(generics.RetrieveAPIView):
    queryset = Facility.objects.select_related("authority")
    serializer_class = FacilitySerializer
    permission_classes = [CanViewFacilities]
    lookup_field = "code"


def _audit(
    request: Request,
    action: str,
    *,
    study: Study | None = None,
    detail: dict[str, Any],
    outcome: str = AuditEvent.Outcome.SUCCESS,
    patients: list[int] | None = None,
) -> None:
    audit_record(
        action=action,
        outcome=outcome,
        user=request.user,
        study=study,
        source=str(request.META.get("REMOTE_ADDR", "")),
        detail={"path": request.path[:500], **detail},
        patients=patients,
    )


@extend_schema(
    parameters=[
        OpenApiParameter("facility", str, description="Facility code of origin."),
        OpenApiParameter("patient_id", str, description="The PatientID as the modality sent it."),
        OpenApiParameter("accession_number", str),
    ]
)
class StudyListView(generics.ListAPIView):
    """Archived studies, newest first, filtered by facility, PatientID or accession number."""

    serializer_class = StudySerializer
    permission_classes = [CanViewStudies]
    pagination_class = StudyPagination

    def get_queryset(self) -> QuerySet[Study]:
        principal = access.principal_for_request(self.request)
        qs = access.studies_visible(principal, Study.objects.select_related("facility")).order_by("-study_date", "-id")
        params = self.request.query_params
        if params.get("facility"):
            qs = qs.filter(facility__code=params["facility"])
        if params.get("patient_id"):
            qs = qs.filter(dicom_patient_id=params["patient_id"])
        if params.get("accession_number"):
            qs = qs.filter(accession_number=params["accession_number"])
        return qs

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        rows = list(page if page is not None else queryset)
        data = self.get_serializer(rows, many=True).data
        response = self.get_paginated_response(data) if page is not None else Response(data)
        filters = {k: v for k, v in request.query_params.items() if k in ("facility", "patient_id", "accession_number")}
        _audit(
            request,
            "api.studies",
            detail={"filters": filters, "returned": len(rows)},
            patients=[s.patient_id for s in rows],
        )
        return response


class StudyDetailView(generics.RetrieveAPIView):
    """One study; 404 for one that is not archived or that the user may not see (the same answer)."""

    serializer_class = StudySerializer
    permission_classes = [CanViewStudies]
    lookup_field = "study_instance_uid"
    queryset = Study.objects.select_related("facility", "patient")

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        study = self.get_queryset().filter(study_instance_uid=kwargs["study_instance_uid"]).first()
        if study is None:
            raise access.StudyNotVisible()
        verdict = access.study_verdict(access.principal_for_request(request), study)
        if verdict is not access.Verdict.VISIBLE:
            # Audited with the reason; answered exactly as a study that is not there.
            _audit(
                request, "api.study", study=study, outcome=AuditEvent.Outcome.DENIED, detail={"reason": verdict.value}
            )
            raise access.StudyNotVisible(verdict)
        _audit(request, "api.study", study=study, detail={})
        return Response(self.get_serializer(study).data)


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(write_only=True)
    password = serializers.CharField(write_only=True, trim_whitespace=False, style={"input_type": "password"})

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # Through the authentication backends, django-axes first: wrong passwords count
        # towards the lockout as on the login pages.
        user = authenticate(request=self.context.get("request"), username=attrs["username"], password=attrs["password"])
        if user is None:
            raise serializers.ValidationError(gettext("Credenziali non valide."), code="authorization")
        attrs["user"] = user
        return attrs


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(
        help_text="Da inviare come 'Authorization: Token <token>' o 'Authorization: Bearer <token>'."
    )
    expiry = serializers.DateTimeField(help_text="Scadenza (PACS_API_TOKEN_HOURS dal rilascio).")


class TokenView(APIView):
    """Exchange a username and password for an API token (``Authorization: Token <key>`` or ``Bearer <key>``),
    used by DICOMweb clients and external CUP systems too; DELETE revokes the token sent.

    Only staff and service accounts get one (403 for a citizen or an account without
    permissions); it expires after ``PACS_API_TOKEN_HOURS``. Wrong passwords count
    towards the login lockout (429 once locked out)."""

    authentication_classes = [ApiTokenAuthentication]
    serializer_class = TokenRequestSerializer

    def get_permissions(self) -> list[BasePermission]:
        return [IsAuthenticated()] if self.request.method == "DELETE" else [AllowAny()]

    @extend_schema(
        request=TokenRequestSerializer,
        responses={
            200: TokenSerializer,
            **problem_responses(
                {
                    400: "Credenziali mancanti o errate.",
                    403: "Cittadino o account senza permessi (code citizen, no_permission, inactive): nessun token.",
                    429: "Troppi tentativi errati (code locked_out): accesso bloccato.",
                }
            ),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            if getattr(request, "axes_locked_out", False) or getattr(request._request, "axes_locked_out", False):
                raise Forbidden(gettext("Troppi tentativi errati: accesso bloccato per ora."), code="locked_out")
            raise ValidationError(serializer.errors)
        # An account that may not have one: TokenRefused, a 403 problem.
        issued = api_token_issue(user=serializer.validated_data["user"])
        return Response({"token": issued.key, "expiry": issued.expiry})

    @extend_schema(
        description="Revoke the token this request is authenticated with (its client logs out).",
        request=None,
        responses={204: None},
    )
    def delete(self, request: Request) -> Response:
        if isinstance(request.auth, AuthToken):
            api_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Reports ----------------------------------------------------------------------
#
# Reading, editing a draft (any radiologist who may change reports and open
# the study, not only its author) and discarding it (its author only). Signing
# is not offered here: it
# re-authenticates the radiologist interactively (password and second factor)
# on the report page. A signed version never changes: PATCH and DELETE answer
# 409 and change nothing. The services in archive.reporting.services decide everything and
# audit what they do; these views audit the reads and what they refuse.

REPORT_TAGS = ["Referti"]


def _report_errors(*codes: int) -> dict[tuple[int, str], OpenApiResponse]:
    text = {
        400: "Richiesta non valida.",
        401: "Credenziali mancanti o non valide.",
        403: "Permesso mancante o (per scartarla, code author) bozza di un altro radiologo.",
        404: "Referto o studio inesistente, oppure che l'utente non può vedere (la stessa risposta, code not_found); "
        "code not_signed: il referto non ha ancora un PDF.",
        409: "Il referto è firmato (code signed), oppure la bozza è stata salvata (conflict), presa in carico "
        "(claimed) o scartata (discarded) da altri dopo la revisione indicata.",
    }
    return problem_responses({code: text[code] for code in codes})


class ReportApiView(APIView):
    # Token first: an anonymous request gets 401 with WWW-Authenticate.
    authentication_classes = [ApiTokenAuthentication, SessionAuthentication]
    permission_classes = [HasModelPerms]
    required_perms: ClassVar[dict[str, tuple[str, ...]]] = {"GET": ("archive.view_report",)}
    audit_action = "report.view"
    request: AuthenticatedRequest  # in the handlers, past HasModelPerms

    def source(self) -> str:
        return str(self.request.META.get("REMOTE_ADDR", ""))

    def audit(
        self, action: str, *, study: Study | None, outcome: str = AuditEvent.Outcome.SUCCESS, **detail: Any
    ) -> None:
        audit_record(
            action=action,
            outcome=outcome,
            user=self.request.user,
            study=study,
            source=self.source(),
            detail={"api": self.request.method, "path": self.request.path[:500], **detail},
        )

    def permission_denied(self, request: Request, message: str | None = None, code: str | None = None) -> NoReturn:
        if request.user and request.user.is_authenticated:
            # Refused before any row was read: the audit says who tried what.
            audit_record(
                action=self.audit_action,
                outcome=AuditEvent.Outcome.DENIED,
                user=request.user,
                source=self.source(),
                detail={"api": request.method, "path": request.path[:500], "reason": "permission"},
            )
        super().permission_denied(request, message=message, code=code)

    def report_get(self, pk: int) -> Report:
        """The report ``pk``, if the user may open its study; otherwise the 404 of a report
        that does not exist (the refusal is audited with its reason, never said)."""
        report = (
            Report.objects.select_related("study__facility", "study__patient", "author", "updated_by", "previous")
            .filter(pk=pk)
            .first()
        )
        if report is None:
            raise NotFound(gettext("Referto inesistente."))
        try:
            reports.study_access_check(user=self.request.user, study=report.study, source=self.source())
        except access.StudyNotVisible:
            raise NotFound(gettext("Referto inesistente.")) from None
        return report


class ReportPersonSerializer(serializers.Serializer):
    username = serializers.CharField()
    name = serializers.CharField()


def _person(user: Any) -> dict[str, str]:
    return {"username": user.get_username(), "name": user.get_full_name() or user.get_username()}


class ReportLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    study = serializers.CharField(help_text="Lo studio nell'API.")
    previous = serializers.CharField(allow_null=True, help_text="La versione che questa rettifica o integra.")
    pdf = serializers.CharField(allow_null=True, help_text="Il PDF firmato (solo per un referto firmato).")
    p7m = serializers.CharField(allow_null=True, help_text="La firma CAdES distaccata del PDF (.p7m).")


@extend_schema_field(
    {"type": "string", "pattern": "^(draft|signed)$", "description": "draft (bozza) o signed (firmato)."}
)
class ReportStatusField(serializers.ChoiceField):
    """The report's status, described without an enum: drf-spectacular names
    enums by field name, and the booking's ``status`` has other values."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Report.Status.choices, **kwargs)


class ReportSerializer(serializers.ModelSerializer):
    status = ReportStatusField(read_only=True)
    study = serializers.CharField(source="study.study_instance_uid", help_text="StudyInstanceUID.")
    accession_number = serializers.CharField(source="study.accession_number")
    previous = serializers.IntegerField(source="previous_id", allow_null=True)
    author = serializers.SerializerMethodField()
    updated_by = serializers.SerializerMethodField()
    signer = serializers.CharField(source="signer_name", help_text="Il titolare del certificato di firma.")
    links = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "study",
            "accession_number",
            "version",
            "kind",
            "status",
            "previous",
            "revision",
            "clinical_question",
            "technique",
            "findings",
            "conclusion",
            "author",
            "updated_by",
            "signer",
            "signed_at",
            "pdf_sha256",
            "pdf_size",
            "signature_sha256",
            "created_at",
            "updated_at",
            "links",
        ]
        read_only_fields = fields

    @extend_schema_field(ReportPersonSerializer)
    def get_author(self, obj: Report) -> dict[str, str]:
        return _person(obj.author)

    @extend_schema_field(ReportPersonSerializer(allow_null=True))
    def get_updated_by(self, obj: Report) -> dict[str, str] | None:
        """Who saved the draft last (the author, a colleague, or the signer)."""
        return _person(obj.updated_by) if obj.updated_by_id else None

    @extend_schema_field(ReportLinksSerializer)
    def get_links(self, obj: Report) -> dict[str, str | None]:
        request = self.context.get("request")
        base = f"/api/reports/{obj.pk}/"
        signed = obj.status == Report.Status.SIGNED
        return {
            "self": _absolute(request, base),
            "study": _absolute(request, f"/api/studies/{obj.study.study_instance_uid}/"),
            "previous": _absolute(request, f"/api/reports/{obj.previous_id}/") if obj.previous_id else None,
            "pdf": _absolute(request, f"{base}pdf") if signed else None,
            "p7m": _absolute(request, f"{base}p7m") if signed else None,
        }


class ReportPatchInput(serializers.Serializer):
    revision = serializers.IntegerField(
        min_value=1, help_text="La revisione della bozza che si è letta e modificata (campo revision del GET)."
    )
    clinical_question = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    technique = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    findings = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    conclusion = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)


_SECTIONS = ("clinical_question", "technique", "findings", "conclusion")


@extend_schema(
    tags=REPORT_TAGS,
    parameters=[OpenApiParameter("study", str, required=True, description="Lo StudyInstanceUID.")],
    responses={200: ReportSerializer(many=True), **_report_errors(400, 401, 403, 404)},
)
class ReportListView(ReportApiView):
    """Every version of a study's report, the first first (the draft too, if someone is writing one)."""

    # Named: drf-spectacular tells a list from the responses' lowest key, here a
    # (status, media type) pair of the problems, and would call it a retrieve.
    @extend_schema(operation_id="reports_list")
    def get(self, request: AuthenticatedRequest) -> Response:
        uid = request.query_params.get("study", "").strip()
        if not uid:
            raise Invalid(gettext("Indica lo studio: ?study=<StudyInstanceUID>."))
        study = Study.objects.select_related("facility", "patient").filter(study_instance_uid=uid).first()
        if study is None:
            raise NotFound(gettext("Studio inesistente."))
        try:
            reports.study_access_check(user=request.user, study=study, source=self.source())
        except access.StudyNotVisible:
            raise NotFound(gettext("Studio inesistente.")) from None
        rows = list(
            Report.objects.filter(study=study)
            .select_related("study", "author", "updated_by", "previous")
            .order_by("version")
        )
        self.audit("report.view", study=study, reports=[r.pk for r in rows])
        return Response(ReportSerializer(rows, many=True, context={"request": request}).data)


class ReportDetailView(ReportApiView):
    required_perms: ClassVar[dict[str, tuple[str, ...]]] = {
        "GET": ("archive.view_report",),
        "PATCH": ("archive.view_report", "archive.change_report"),
        "DELETE": ("archive.view_report", "archive.change_report"),
    }

    @property
    def audit_action(self) -> str:  # type: ignore[override]  # a property where the base has a constant
        return {"PATCH": "report.save", "DELETE": "report.discard"}.get(self.request.method or "", "report.view")

    @extend_schema(
        tags=REPORT_TAGS,
        responses={200: ReportSerializer, **_report_errors(401, 403, 404)},
        operation_id="reports_retrieve",
    )
    def get(self, request: AuthenticatedRequest, pk: int) -> Response:
        """A version of a report: its sections, status, signer and the links to its signed files."""
        report = self.report_get(pk)
        self.audit("report.view", study=report.study, report=report.pk, version=report.version)
        return Response(ReportSerializer(report, context={"request": request}).data)

    @extend_schema(
        tags=REPORT_TAGS,
        request=ReportPatchInput,
        responses={200: ReportSerializer, **_report_errors(400, 401, 403, 404, 409)},
        operation_id="reports_partial_update",
    )
    def patch(self, request: AuthenticatedRequest, pk: int) -> Response:
        """Save the sections of a draft read at ``revision``; absent sections stay.

        Any radiologist who may change reports and open the study saves the
        draft, not only its author. A signed report is never changed (409,
        code ``signed``); a draft saved by someone else (or from another
        window) since ``revision`` is not overwritten (409, code ``conflict``,
        the message naming who saved last and when).
        """
        report = self.report_get(pk)
        if report.status == Report.Status.SIGNED:
            self.audit(
                "report.save", study=report.study, outcome=AuditEvent.Outcome.DENIED, report=report.pk, reason="signed"
            )
            raise Conflict(
                gettext("Un referto firmato non si può modificare: si redige una rettifica o un'integrazione."),
                code="signed",
            )
        serializer = ReportPatchInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            saved = reports.report_save(
                report=report,
                user=request.user,
                revision=data["revision"],
                source=self.source(),
                **{name: data.get(name, getattr(report, name)) for name in _SECTIONS},
            )
        except reports.ReportConflict as exc:
            self.audit(
                "report.save",
                study=report.study,
                outcome=AuditEvent.Outcome.FAILURE,
                report=report.pk,
                revision=data["revision"],
                reason=exc.code,
            )
            raise
        return Response(ReportSerializer(saved, context={"request": request}).data)

    @extend_schema(
        tags=REPORT_TAGS,
        responses={204: None, **_report_errors(401, 403, 404, 409)},
        operation_id="reports_destroy",
    )
    def delete(self, request: AuthenticatedRequest, pk: int) -> Response:
        """Discard a draft (its author only: 403 with code ``author`` for a colleague),
        which frees the study. A signed report is never deleted (409)."""
        report = self.report_get(pk)
        if report.status == Report.Status.SIGNED:
            self.audit(
                "report.discard",
                study=report.study,
                outcome=AuditEvent.Outcome.DENIED,
                report=report.pk,
                reason="signed",
            )
            raise Conflict(gettext("Un referto firmato non si può cancellare."), code="signed")
        reports.report_discard(report=report, user=request.user, source=self.source())
        return Response(status=status.HTTP_204_NO_CONTENT)


_FILES = {"pdf": ("application/pdf", "pdf"), "p7m": ("application/pkcs7-signature", "pdf.p7m")}


class ReportFileView(ReportApiView):
    which = "pdf"
    audit_action = "report.download"

    def get(self, request: AuthenticatedRequest, pk: int) -> HttpResponse:
        report = self.report_get(pk)
        if report.status != Report.Status.SIGNED:
            raise NotFound(gettext("Il referto non è firmato: non ha ancora un PDF."), code="not_signed")
        try:
            data = reports.report_file(report=report, which=self.which)
        except reports.ReportError as exc:
            self.audit(
                "report.download",
                study=report.study,
                outcome=AuditEvent.Outcome.FAILURE,
                report=report.pk,
                file=self.which,
                reason=exc.code,
            )
            raise
        self.audit("report.download", study=report.study, report=report.pk, version=report.version, file=self.which)
        media_type, extension = _FILES[self.which]
        name = f"referto-{report.study.accession_number or report.study.pk}-v{report.version}.{extension}"
        response = HttpResponse(data, content_type=media_type)
        response["Content-Disposition"] = content_disposition(name)
        response["Content-Length"] = str(len(data))
        return response


@extend_schema(
    tags=REPORT_TAGS,
    responses={
        (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="Il PDF firmato."),
        **_report_errors(401, 403, 404),
    },
)
class ReportPdfView(ReportFileView):
    """The signed PDF of a report version, checked against the SHA-256 recorded at signing."""

    which = "pdf"


@extend_schema(
    tags=REPORT_TAGS,
    responses={
        (200, "application/pkcs7-signature"): OpenApiResponse(
            OpenApiTypes.BINARY, description="La firma CAdES distaccata (DER) del PDF."
        ),
        **_report_errors(401, 403, 404),
    },
)
class ReportSignatureView(ReportFileView):
    """The detached CAdES signature (.p7m) of the signed PDF; ``openssl cms -verify -binary -inform DER
    -content referto.pdf -CAfile ca.pem`` checks it."""

    which = "p7m"
