"""The small REST API beside DICOMweb: facilities, studies and API tokens.

Described by drf-spectacular at ``/api/schema/`` (Swagger UI at
``/api/schema/swagger/``, Redoc at ``/api/schema/redoc/``). Reading patient
data (the studies) is audited like every other access.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import get_script_prefix
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from .audit import audit_record
from .models import Facility, Study


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
    default_limit = 100
    max_limit = 1000


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


def _audit(request: Request, action: str, *, study: Study | None = None, detail: dict[str, Any]) -> None:
    audit_record(
        action=action,
        user=request.user,
        study=study,
        source=str(request.META.get("REMOTE_ADDR", "")),
        detail={"path": request.path[:500], **detail},
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
        qs = Study.objects.select_related("facility").order_by("-study_date", "-id")
        params = self.request.query_params
        if params.get("facility"):
            qs = qs.filter(facility__code=params["facility"])
        if params.get("patient_id"):
            qs = qs.filter(dicom_patient_id=params["patient_id"])
        if params.get("accession_number"):
            qs = qs.filter(accession_number=params["accession_number"])
        return qs

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        results = response.data.get("results", []) if isinstance(response.data, dict) else response.data
        filters = {k: v for k, v in request.query_params.items() if k in ("facility", "patient_id", "accession_number")}
        _audit(request, "api.studies", detail={"filters": filters, "returned": len(results)})
        return response


class StudyDetailView(generics.RetrieveAPIView):
    serializer_class = StudySerializer
    permission_classes = [CanViewStudies]
    lookup_field = "study_instance_uid"
    queryset = Study.objects.select_related("facility", "patient")

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        study = self.get_object()
        _audit(request, "api.study", study=study, detail={})
        return Response(self.get_serializer(study).data)


class TokenView(ObtainAuthToken):
    """Exchange a username and password for the API token (``Authorization: Token <key>``),
    used by DICOMweb clients too."""
