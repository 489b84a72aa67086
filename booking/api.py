"""REST API for external CUP systems, under ``/api/cup/``: the catalogue, the
stations and their free slots, and bookings created, read, moved, cancelled
and given a new distribution choice.

The views only translate: they resolve codes to rows and call ``booking.services``
(which check every rule and write the ``AuditEvent``); a ``BookingError`` is
answered as every API error of the project is, an RFC 9457 problem
(:mod:`kernel.problems`): 400, or 409 for a taken slot or a duplicate
``external_id``, with ``field`` named as the request names it. A booking read
through the API is audited here.
Authentication is by token (``Authorization: Token <key>``, from ``/api/token/``);
permissions are Django model permissions.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, ClassVar

from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from archive.api_tokens import ApiTokenAuthentication
from archive.models import Patient
from kernel.audit import audit_record
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.problems import problem_responses
from kernel.web import AuthenticatedRequest, HasModelPerms

from . import services
from .models import Booking, BookingStatusChange, ConsentText, DistributionChoice, Procedure, Station
from .services import BookingError

logger = logging.getLogger(__name__)

TAGS = ["CUP"]


# --- permissions and errors ---------------------------------------------------------


def _invalid(message: str, field: str) -> BookingError:
    return BookingError(message, field=field)


def _as_requested(error: BookingError, fields: dict[str, str]) -> BookingError:
    """``error`` with its field named as the request names it (``choice.delivery``, not ``delivery``)."""
    error.field = fields.get(error.field or "", error.field)
    return error


class _Duplicate(BookingError):
    """The ``external_id`` is booked already: the problem names that booking (``accession_number``)."""

    def __init__(self, message: str, *, accession_number: str) -> None:
        super().__init__(message, field="external_id", code="duplicate")
        self.extensions = {"accession_number": accession_number}


class CupApiView(APIView):
    # Token first: an anonymous request is answered 401 with WWW-Authenticate,
    # as the CUP's client expects, rather than session authentication's 403.
    authentication_classes = [ApiTokenAuthentication, SessionAuthentication]
    permission_classes = [HasModelPerms]
    required_perms: ClassVar[dict[str, tuple[str, ...]]] = {}
    request: AuthenticatedRequest  # in the handlers, past HasModelPerms

    def source(self) -> str:
        return str(self.request.META.get("REMOTE_ADDR", ""))


READ = ("booking.view_booking",)
CHANGE = ("booking.change_booking",)


def _errors(*codes: int) -> dict[tuple[int, str], OpenApiResponse]:
    text = {
        400: "Richiesta non valida (code invalid, invalid_codice_fiscale, past...; field: il campo in errore).",
        401: "Token mancante o non valido.",
        403: "Permesso mancante.",
        404: "Prenotazione inesistente.",
        409: "Slot già occupato (code slot_taken) o external_id già usato (code duplicate, con accession_number: "
        "la prenotazione già registrata).",
    }
    return problem_responses({code: text[code] for code in codes})


# --- serializers --------------------------------------------------------------------------


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date and time with its UTC offset: a bare local time is
    ambiguous on the night the clocks change, and the CUP may not be in Rome."""

    default_error_messages = {"naive": "Indica data e ora in ISO 8601 con il fuso orario (es. +01:00 o Z)."}

    def to_internal_value(self, value: Any) -> dt.datetime:
        if isinstance(value, str):
            parsed = parse_datetime(value.strip())
            if parsed is not None and timezone.is_naive(parsed):
                self.fail("naive")
        elif isinstance(value, dt.datetime) and timezone.is_naive(value):
            self.fail("naive")
        return super().to_internal_value(value)


class ProcedureOutput(serializers.ModelSerializer):
    class Meta:
        model = Procedure
        fields = ["code", "description", "modality", "body_part"]


class StationOutput(serializers.ModelSerializer):
    facility = serializers.CharField(source="facility.code")

    class Meta:
        model = Station
        fields = ["id", "facility", "ae_title", "name", "modality", "slot_minutes", "opens_at", "closes_at"]


class SlotsOutput(serializers.Serializer):
    station = serializers.IntegerField()
    date = serializers.DateField()
    slot_minutes = serializers.IntegerField()
    free = serializers.ListField(child=serializers.DateTimeField(), help_text="Gli inizi degli slot liberi.")


class ChoiceOutput(serializers.ModelSerializer):
    consent_text_version = serializers.CharField(source="consent_text.version", allow_null=True, default=None)

    class Meta:
        model = DistributionChoice
        fields = [
            "version",
            "delivery",
            "consent_text_version",
            "revokes_consent",
            "channel",
            "recorded_by_name",
            "recorded_at",
            "note",
        ]


class StatusChangeOutput(serializers.ModelSerializer):
    class Meta:
        model = BookingStatusChange
        fields = ["status", "at", "system", "note"]


class BookingStationOutput(serializers.ModelSerializer):
    class Meta:
        model = Station
        fields = ["id", "ae_title", "name", "modality"]


class BookingOutput(serializers.ModelSerializer):
    facility = serializers.CharField(source="facility.code")
    station = BookingStationOutput()
    procedure = ProcedureOutput()
    patient_codice_fiscale = serializers.CharField(source="patient.codice_fiscale")
    choice = serializers.SerializerMethodField(help_text="La versione in vigore della scelta di consegna.")
    choices = ChoiceOutput(many=True, help_text="Tutte le versioni della scelta, dalla prima.")
    status_history = StatusChangeOutput(source="status_changes", many=True)

    class Meta:
        model = Booking
        fields = [
            "accession_number",
            "study_instance_uid",
            "external_id",
            "status",
            "scheduled_at",
            "facility",
            "station",
            "procedure",
            "patient_codice_fiscale",
            "channel",
            "nre",
            "contact_phone",
            "contact_email",
            "clinical_question",
            "priority",
            "referring_physician",
            "choice",
            "choices",
            "status_history",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(ChoiceOutput(allow_null=True))
    def get_choice(self, obj: Booking) -> dict[str, Any] | None:
        # The prefetched versions, in order: the last is the one in force.
        choices = list(obj.choices.all())
        return ChoiceOutput(choices[-1]).data if choices else None


class ConsentInput(serializers.Serializer):
    given = serializers.BooleanField(help_text="Il paziente ha dato il consenso esplicito alla consegna online.")
    text_version = serializers.CharField(
        max_length=32, help_text="La versione dell'informativa letta dal paziente (ConsentText.version)."
    )
    collected_by = serializers.CharField(max_length=128, help_text="Chi ha raccolto la scelta presso il CUP esterno.")


class ChoiceInput(serializers.Serializer):
    delivery = serializers.ChoiceField(choices=DistributionChoice.Delivery.choices)
    consent = ConsentInput(required=False, help_text="Obbligatorio per la consegna online.")


class ChoiceChangeInput(ChoiceInput):
    channel = serializers.ChoiceField(
        choices=Booking.Channel.choices, required=False, help_text="Se assente, il canale della prenotazione."
    )
    collected_by = serializers.CharField(
        max_length=128, required=False, default="", help_text="Chi ha raccolto la scelta, se non c'è consent."
    )
    note = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class PatientFields(serializers.Serializer):
    codice_fiscale = serializers.CharField(max_length=32)
    family_name = serializers.CharField(max_length=128, required=False, help_text="Solo per un paziente nuovo.")
    given_name = serializers.CharField(max_length=128, required=False, help_text="Solo per un paziente nuovo.")
    birth_date = serializers.DateField(required=False, help_text="Solo per un paziente nuovo.")
    sex = serializers.ChoiceField(choices=["M", "F"], required=False, help_text="Solo per un paziente nuovo.")


class StationRef(serializers.Serializer):
    """Where: ``station_id``, or ``station`` (AE title) with ``facility`` (code)."""

    facility = serializers.CharField(max_length=16, required=False, help_text="Il codice del presidio.")
    station = serializers.CharField(max_length=16, required=False, help_text="L'AE title della diagnostica.")
    station_id = serializers.IntegerField(required=False)


class BookingDetailsInput(serializers.Serializer):
    nre = serializers.CharField(max_length=15, required=False, allow_blank=True)
    contact_phone = serializers.CharField(max_length=32, required=False, allow_blank=True)
    contact_email = serializers.CharField(max_length=254, required=False, allow_blank=True)
    clinical_question = serializers.CharField(required=False, allow_blank=True)
    priority = serializers.ChoiceField(
        choices=Booking.Priority.choices,
        required=False,
        help_text="La classe di priorità della ricetta: U urgente (72 ore), B breve (10 giorni), D differita, "
        "P programmata (il default alla creazione).",
    )
    referring_physician = serializers.CharField(max_length=128, required=False, allow_blank=True)


class BookingCreateInput(PatientFields, StationRef, BookingDetailsInput):
    procedure = serializers.CharField(max_length=16, help_text="Il codice della prestazione nel catalogo.")
    scheduled_at = AwareDateTimeField(help_text="L'inizio di uno slot libero, ISO 8601 con fuso orario.")
    channel = serializers.ChoiceField(choices=Booking.Channel.choices)
    external_id = serializers.CharField(
        max_length=64, required=False, help_text="L'identificativo della prenotazione nel CUP esterno."
    )
    choice = ChoiceInput()


class BookingUpdateInput(StationRef, BookingDetailsInput):
    scheduled_at = AwareDateTimeField(required=False)


class BookingCancelInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


# --- resolving codes to rows ------------------------------------------------------------


def _booking_queryset() -> QuerySet[Booking]:
    return Booking.objects.select_related("facility", "station", "procedure", "patient").prefetch_related(
        Prefetch("choices", queryset=DistributionChoice.objects.select_related("consent_text").order_by("version")),
        Prefetch("status_changes", queryset=BookingStatusChange.objects.order_by("at", "id")),
    )


def _booking_get(accession_number: str) -> Booking:
    booking = _booking_queryset().filter(accession_number=accession_number).first()
    if booking is None:
        raise NotFound(_("Nessuna prenotazione con accession number %(acc)s.") % {"acc": accession_number})
    return booking


def _booking_data(booking: Booking) -> dict[str, Any]:
    # Read again so that the answer shows what the services wrote.
    return BookingOutput(_booking_queryset().get(pk=booking.pk)).data


def _station_resolve(data: dict[str, Any], *, default_facility: str | None = None) -> Station | None:
    if data.get("station_id") is not None:
        station = Station.objects.select_related("facility").filter(pk=data["station_id"]).first()
        if station is None:
            raise _invalid(_("Nessuna diagnostica con id %(id)s.") % {"id": data["station_id"]}, "station_id")
        return station
    if not data.get("station"):
        if data.get("facility") and default_facility is None:
            raise _invalid(_("Indica la diagnostica: station (AE title) oppure station_id."), "station")
        return None
    facility = data.get("facility") or default_facility
    if not facility:
        raise _invalid(
            _("Indica il presidio (facility) della diagnostica %(ae)s.") % {"ae": data["station"]}, "facility"
        )
    station = (
        Station.objects.select_related("facility").filter(facility__code=facility, ae_title=data["station"]).first()
    )
    if station is None:
        raise _invalid(
            _("Il presidio %(f)s non ha una diagnostica con AE title %(ae)s.") % {"f": facility, "ae": data["station"]},
            "station",
        )
    return station


def _consent_text(consent: dict[str, Any] | None, *, field: str) -> ConsentText | None:
    if not consent:
        return None
    text = ConsentText.objects.filter(version=consent["text_version"], published_at__lte=timezone.now()).first()
    if text is None:
        raise _invalid(_("Nessuna informativa in vigore con versione %(v)s.") % {"v": consent["text_version"]}, field)
    return text


def _patient_resolve(request: AuthenticatedRequest, data: dict[str, Any], *, source: str) -> Patient:
    code = normalize_codice_fiscale(data["codice_fiscale"])
    error = codice_fiscale_error(code)
    if error:
        raise BookingError(error, field="codice_fiscale", code="invalid_codice_fiscale")
    patient = Patient.objects.filter(codice_fiscale=code).first()
    if patient is not None:
        return patient
    missing = [name for name in ("family_name", "given_name", "birth_date", "sex") if not data.get(name)]
    if missing:
        raise _invalid(
            _(
                "Nessun paziente con codice fiscale %(code)s: per registrarlo servono "
                "family_name, given_name, birth_date e sex (mancano: %(missing)s)."
            )
            % {"code": code, "missing": ", ".join(missing)},
            "codice_fiscale",
        )
    if not request.user.has_perm("archive.add_patient"):
        raise PermissionDenied(_("Non hai il permesso di registrare nuovi pazienti."))
    return services.patient_create(
        codice_fiscale=code,
        family_name=data["family_name"],
        given_name=data["given_name"],
        birth_date=data["birth_date"],
        sex=data["sex"],
        user=request.user,
        source=source,
    )


# --- views ----------------------------------------------------------------------------------


class ProcedureListView(CupApiView):
    required_perms = {"GET": READ}

    @extend_schema(
        tags=TAGS, operation_id="cup_procedures_list", responses={200: ProcedureOutput(many=True), **_errors(401, 403)}
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        """The bookable catalogue."""
        procedures = Procedure.objects.filter(active=True).order_by("modality", "description")
        return Response(ProcedureOutput(procedures, many=True).data)


class StationListView(CupApiView):
    required_perms = {"GET": READ}

    @extend_schema(
        tags=TAGS,
        operation_id="cup_stations_list",
        parameters=[
            OpenApiParameter("facility", str, description="Il codice del presidio."),
            OpenApiParameter("modality", str, description="La modalità DICOM: CT, MR..."),
        ],
        responses={200: StationOutput(many=True), **_errors(401, 403)},
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        """The active stations, by facility and modality."""
        stations = Station.objects.filter(active=True).select_related("facility")
        if request.query_params.get("facility"):
            stations = stations.filter(facility__code=request.query_params["facility"])
        if request.query_params.get("modality"):
            stations = stations.filter(modality=request.query_params["modality"].upper())
        return Response(StationOutput(stations.order_by("facility__code", "modality", "name"), many=True).data)


class SlotQuery(serializers.Serializer):
    station = serializers.IntegerField()
    date = serializers.DateField()


class SlotListView(CupApiView):
    required_perms = {"GET": READ}

    @extend_schema(
        tags=TAGS,
        operation_id="cup_slots_list",
        parameters=[
            OpenApiParameter("station", int, required=True, description="L'id della diagnostica."),
            OpenApiParameter("date", dt.date, required=True, description="Il giorno, YYYY-MM-DD."),
        ],
        responses={200: SlotsOutput, **_errors(400, 401, 403)},
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        """The free slots of a station's day that are still to come."""
        query = SlotQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        station = Station.objects.filter(pk=query.validated_data["station"], active=True).first()
        if station is None:
            raise _invalid(
                _("Nessuna diagnostica attiva con id %(id)s.") % {"id": query.validated_data["station"]}, "station"
            )
        day = query.validated_data["date"]
        free = services.station_free_slots(station=station, day=day)
        data = {"station": station.pk, "date": day, "slot_minutes": station.slot_minutes, "free": free}
        return Response(SlotsOutput(data).data)


class BookingCollectionView(CupApiView):
    required_perms = {"GET": READ, "POST": ("booking.add_booking",)}

    @extend_schema(
        tags=TAGS,
        operation_id="cup_bookings_by_external_id",
        parameters=[OpenApiParameter("external_id", str, required=True, description="L'id nel CUP esterno.")],
        responses={200: BookingOutput, **_errors(400, 401, 403, 404)},
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        """The booking with the CUP's own id."""
        external_id = request.query_params.get("external_id", "").strip()
        if not external_id:
            raise _invalid(_("Indica external_id."), "external_id")
        booking = _booking_queryset().filter(external_id=external_id).first()
        if booking is None:
            raise NotFound(_("Nessuna prenotazione con external_id %(id)s.") % {"id": external_id})
        _audit_read(request, booking, source=self.source())
        return Response(BookingOutput(booking).data)

    @extend_schema(
        tags=TAGS,
        operation_id="cup_bookings_create",
        request=BookingCreateInput,
        responses={201: BookingOutput, **_errors(400, 401, 403, 409)},
    )
    def post(self, request: AuthenticatedRequest) -> Response:
        """Book an exam; an unknown codice fiscale registers the patient when
        the personal data are given (needs ``archive.add_patient``)."""
        serializer = BookingCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        source = self.source()
        external_id = data.get("external_id") or None
        if external_id:
            _duplicate_check(external_id)
        procedure = Procedure.objects.filter(code=data["procedure"]).first()
        if procedure is None:
            raise _invalid(_("Nessuna prestazione con codice %(code)s.") % {"code": data["procedure"]}, "procedure")
        station = _station_resolve(data)
        if station is None:
            raise _invalid(_("Indica la diagnostica: facility e station (AE title), oppure station_id."), "station")
        choice = data["choice"]
        consent = choice.get("consent")
        consent_text = _consent_text(consent, field="choice.consent.text_version")
        # The patient registered for this booking goes with it if the booking fails.
        with transaction.atomic():
            patient = _patient_resolve(request, data, source=source)
            try:
                booking = services.booking_create(
                    patient=patient,
                    procedure=procedure,
                    station=station,
                    scheduled_at=data["scheduled_at"],
                    delivery=choice["delivery"],
                    consent_given=bool(consent and consent["given"]),
                    consent_text=consent_text,
                    channel=data["channel"],
                    user=request.user,
                    nre=data.get("nre", ""),
                    contact_phone=data.get("contact_phone", ""),
                    contact_email=data.get("contact_email", ""),
                    clinical_question=data.get("clinical_question", ""),
                    priority=data.get("priority", Booking.Priority.PLANNED),
                    referring_physician=data.get("referring_physician", ""),
                    recorded_by_name=consent["collected_by"] if consent else "",
                    external_id=external_id,
                    source=source,
                )
            except BookingError as exc:
                if exc.code == "duplicate" and external_id:
                    _duplicate_check(external_id)
                raise _as_requested(exc, _CHOICE_FIELDS_NESTED) from None
        return Response(_booking_data(booking), status=status.HTTP_201_CREATED)


_CHOICE_FIELDS_NESTED = {"delivery": "choice.delivery", "consent_given": "choice.consent.given"}
_CHOICE_FIELDS = {"consent_given": "consent.given"}


def _duplicate_check(external_id: str) -> None:
    existing = Booking.objects.filter(external_id=external_id).values_list("accession_number", flat=True).first()
    if existing is not None:
        raise _Duplicate(
            _("La prenotazione con external_id %(id)s esiste già: %(acc)s.") % {"id": external_id, "acc": existing},
            accession_number=existing,
        )


def _audit_read(request: AuthenticatedRequest, booking: Booking, *, source: str) -> None:
    audit_record(
        action="cup.api.booking.read",
        user=request.user,
        patient=booking.patient,
        source=source,
        detail={"accession_number": booking.accession_number, "path": request.path[:500]},
    )


class BookingDetailView(CupApiView):
    required_perms = {"GET": READ, "PATCH": CHANGE}

    @extend_schema(
        tags=TAGS, operation_id="cup_bookings_retrieve", responses={200: BookingOutput, **_errors(401, 403, 404)}
    )
    def get(self, request: AuthenticatedRequest, accession_number: str) -> Response:
        """A booking with its current choice and its history."""
        booking = _booking_get(accession_number)
        _audit_read(request, booking, source=self.source())
        return Response(BookingOutput(booking).data)

    @extend_schema(
        tags=TAGS,
        operation_id="cup_bookings_update",
        request=BookingUpdateInput,
        responses={200: BookingOutput, **_errors(400, 401, 403, 404, 409)},
    )
    def patch(self, request: AuthenticatedRequest, accession_number: str) -> Response:
        """Move the booking (station, scheduled_at) or change its contacts,
        clinical question, NRE or referring physician; absent fields stay."""
        booking = _booking_get(accession_number)
        serializer = BookingUpdateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        station = _station_resolve(data, default_facility=booking.facility.code)
        booking = services.booking_update(
            booking=booking,
            user=request.user,
            source=self.source(),
            station=station,
            scheduled_at=data.get("scheduled_at"),
            nre=data.get("nre"),
            contact_phone=data.get("contact_phone"),
            contact_email=data.get("contact_email"),
            clinical_question=data.get("clinical_question"),
            priority=data.get("priority"),
            referring_physician=data.get("referring_physician"),
        )
        return Response(_booking_data(booking))


class BookingCancelView(CupApiView):
    required_perms = {"POST": CHANGE}

    @extend_schema(
        tags=TAGS,
        operation_id="cup_bookings_cancel",
        request=BookingCancelInput,
        responses={200: BookingOutput, **_errors(400, 401, 403, 404)},
    )
    def post(self, request: AuthenticatedRequest, accession_number: str) -> Response:
        """Cancel the booking; its slot is free again."""
        booking = _booking_get(accession_number)
        serializer = BookingCancelInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        booking = services.booking_cancel(
            booking=booking, user=request.user, reason=serializer.validated_data["reason"], source=self.source()
        )
        return Response(_booking_data(booking))


class BookingChoiceView(CupApiView):
    required_perms = {"POST": CHANGE}

    @extend_schema(
        tags=TAGS,
        operation_id="cup_bookings_choice",
        request=ChoiceChangeInput,
        responses={
            201: OpenApiResponse(BookingOutput, description="Registrata una nuova versione della scelta."),
            200: OpenApiResponse(BookingOutput, description="La scelta era già questa: nessuna nuova versione."),
            **_errors(400, 401, 403, 404),
        },
    )
    def post(self, request: AuthenticatedRequest, accession_number: str) -> Response:
        """A new version of the distribution choice; CD after online revokes the consent."""
        booking = _booking_get(accession_number)
        serializer = ChoiceChangeInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        consent = data.get("consent")
        consent_text = _consent_text(consent, field="consent.text_version")
        before = booking.current_choice()
        try:
            choice = services.distribution_choose(
                booking=booking,
                delivery=data["delivery"],
                consent_given=bool(consent and consent["given"]),
                consent_text=consent_text,
                channel=data.get("channel") or booking.channel,
                user=request.user,
                recorded_by_name=consent["collected_by"] if consent else data["collected_by"],
                note=data["note"],
                source=self.source(),
            )
        except BookingError as exc:
            raise _as_requested(exc, _CHOICE_FIELDS) from None
        created = before is None or choice.pk != before.pk
        return Response(_booking_data(booking), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)
