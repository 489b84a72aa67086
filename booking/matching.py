"""Tying an arriving study to its CUP booking, and the queue of those that do not tie.

The accession number the CUP gave the booking reaches the modality through the
worklist and comes back in the study; it finds the booking. The patient is
then checked, because a modality operator can pick the wrong worklist entry
or type an accession number by hand:

* **identity** agrees when the study's patient *is* the booking's patient, or
  the DICOM PatientID (normalised) is the booking patient's codice fiscale,
  or — the decision taken here for studies sent under a local identifier —
  the PatientID is a local one (not a valid codice fiscale) or missing, the
  study's patient is *provisional*, and both the name and the birth date are in the
  header and agree. The accession number is ours, given through the
  worklist, and name plus birth date confirm it is the same person; a
  provisional patient is exactly what reconciliation exists to resolve, so
  the study's patient follows the booking's and the local PatientID's mapping
  moves with it (``archive.patients.study_patient_assign``). A local ID that
  the facility already maps to an *identified* patient other than the
  booking's names someone else: the queue.
* **name**: DICOM PN ``FAMILY^GIVEN^MIDDLE`` against the patient's family and
  given names, case-insensitively, ignoring accents, spaces, apostrophes and
  any other punctuation (``D'ANGELO`` = ``Dangelo``, ``NICOLÒ`` = ``Nicolo``);
  a missing name does not agree.
* **birth date**: must agree when the header has one.
* Sex is shown among the differences but does not decide.

Anything else goes to the reconciliation queue with a reason and the list of
differences, where staff link, re-assign or reject it. Matching runs again for
every batch of new instances: a linked study or a resolved item is left
alone, a pending item is re-evaluated.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from archive.dicom import parse_da
from archive.dicom_header import Header, read_header
from archive.models import Instance, Patient, Study
from archive.patients import patient_dicom_name, study_patient_assign
from archive.storage import retrieve
from archive.storage import tiers as storage
from kernel.audit import audit_record
from kernel.codice_fiscale import is_valid_codice_fiscale, normalize_codice_fiscale
from kernel.models import AuditEvent

from .models import Booking, Reconciliation
from .services import BookingError, _audit_detail, booking_status_set

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

SYSTEM = "booking.match"

# Bookings that can still receive their images; a reported booking always has its study.
_LINKABLE = (Booking.Status.BOOKED, Booking.Status.ARRIVED, Booking.Status.IN_PROGRESS, Booking.Status.PERFORMED)


# --- comparing ------------------------------------------------------------------


def name_key(value: str) -> str:
    """A name reduced to what identifies it: no accents, no case, only letters and digits."""
    decomposed = unicodedata.normalize("NFKD", value or "")
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\W_]+", "", bare.casefold())


def split_person_name(value: str) -> tuple[str, str, str]:
    """Family, given and middle names of a DICOM PN (its alphabetic group only)."""
    parts = (value or "").split("=")[0].split("^")
    parts += [""] * (3 - len(parts))
    return parts[0].strip(), parts[1].strip(), parts[2].strip()


def name_agrees(*, dicom_name: str, family_name: str, given_name: str) -> bool:
    family, given, middle = split_person_name(dicom_name)
    if not name_key(family) or name_key(family) != name_key(family_name):
        return False
    # "ROSSI^MARIO^LUIGI" and a registry given name "MARIO LUIGI" are the same person.
    return name_key(given_name) in {name_key(given), name_key(given + middle)}


@dataclass(frozen=True)
class DicomIdentity:
    """The patient attributes as the modality sent them."""

    patient_name: str
    patient_id: str
    birth_date: dt.date | None
    sex: str

    @classmethod
    def of_study(cls, study: Study) -> DicomIdentity:
        return cls(
            patient_name=study.patient_name,
            patient_id=study.dicom_patient_id,
            birth_date=study.patient_birth_date,
            sex=study.patient_sex,
        )


def _date(value: dt.date | None) -> str:
    return value.isoformat() if value else ""


def identity_differences(*, patient: Patient, dicom: DicomIdentity) -> list[dict[str, str]]:
    """Each attribute on which the header and the booking's patient disagree, as
    ``{"field", "booking", "dicom"}``; the PatientID only when it is a codice fiscale
    (a local identifier is not expected to equal anything of the booking)."""
    diffs: list[dict[str, str]] = []
    cf = normalize_codice_fiscale(dicom.patient_id)
    if is_valid_codice_fiscale(cf) and cf != patient.codice_fiscale:
        diffs.append({"field": "patient_id", "booking": patient.codice_fiscale or "", "dicom": dicom.patient_id})
    if not name_agrees(dicom_name=dicom.patient_name, family_name=patient.family_name, given_name=patient.given_name):
        diffs.append({"field": "patient_name", "booking": patient_dicom_name(patient), "dicom": dicom.patient_name})
    if dicom.birth_date is not None and dicom.birth_date != patient.birth_date:
        diffs.append({"field": "birth_date", "booking": _date(patient.birth_date), "dicom": _date(dicom.birth_date)})
    sex = (dicom.sex or "")[:1].upper()
    if sex and patient.sex and sex != patient.sex:
        diffs.append({"field": "sex", "booking": patient.sex, "dicom": dicom.sex})
    return diffs


def _identity_agrees(study: Study, booking: Booking, diffs: list[dict[str, str]]) -> bool:
    decisive = {d["field"] for d in diffs} - {"sex"}
    if decisive:
        return False
    patient = booking.patient
    if study.patient_id == patient.pk:
        return True
    cf = normalize_codice_fiscale(study.dicom_patient_id)
    if cf and cf == patient.codice_fiscale:
        return True
    # A local PatientID that made a provisional patient: name (checked above) and birth date must both be there.
    return bool(study.patient.provisional and not is_valid_codice_fiscale(cf) and study.patient_birth_date is not None)


# --- the reconciliation page's comparison -----------------------------------------------


@dataclass(frozen=True)
class CompareRow:
    label: str
    booking: str
    dicom: str
    differs: bool
    # False for attributes shown for context only (free-text descriptions).
    compared: bool = True


# The header elements shown side by side with the booking.
_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "Modality",
)


def _first_instance(study: Study) -> Instance | None:
    return (
        retrieve.instances_with_copies(Instance.objects.filter(series__study=study))
        .order_by("series__series_number", "series__pk", "instance_number", "pk")
        .first()
    )


def _study_header(study: Study) -> tuple[Header | None, Instance | None, str]:
    """The header of the study's first instance, or why it cannot be read."""
    instance = _first_instance(study)
    if instance is None:
        return None, None, _("Lo studio non ha istanze archiviate.")
    try:
        with retrieve.instance_open(instance) as fh:
            return read_header(fh), instance, ""
    except (retrieve.NotAvailable, storage.StorageError, OSError) as exc:
        logger.error("header of %s not readable for reconciliation: %s", instance.sop_instance_uid, exc)
        return None, instance, _("Il file archiviato non è leggibile.")
    except Exception:  # pydicom raises many types on a damaged file
        logger.exception("header of %s not readable for reconciliation", instance.sop_instance_uid)
        return None, instance, _("Il file archiviato non è leggibile come DICOM.")


def _header_values(header: Header | None, study: Study) -> dict[str, str]:
    """The header's values by keyword; the index's values when the file cannot be read."""
    if header is not None:
        values = {row.keyword: row.value for row in header.rows if row.depth == 0 and row.keyword in _KEYWORDS}
        return {kw: values.get(kw, "") for kw in _KEYWORDS}
    return {
        "PatientName": study.patient_name,
        "PatientID": study.dicom_patient_id,
        "IssuerOfPatientID": study.issuer_of_patient_id,
        "PatientBirthDate": study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else "",
        "PatientSex": study.patient_sex,
        "AccessionNumber": study.accession_number,
        "StudyDate": study.study_date.strftime("%Y%m%d") if study.study_date else "",
        "StudyTime": study.study_time,
        "StudyDescription": study.study_description,
        "Modality": study.modalities_in_study,
    }


def _day(value: dt.date | None) -> str:
    return value.strftime("%d/%m/%Y") if value else ""


def _time(value: str) -> str:
    digits = value.strip()
    return f"{digits[:2]}:{digits[2:4]}" if len(digits) >= 4 and digits[:4].isdigit() else digits


def compare_rows(booking: Booking | None, dicom: dict[str, str]) -> list[CompareRow]:
    """The booking and the header, one attribute a row, with the rows that differ flagged."""
    birth = parse_da(dicom["PatientBirthDate"])
    study_day = parse_da(dicom["StudyDate"])
    dicom_cells = {
        "name": dicom["PatientName"],
        "id": dicom["PatientID"] + (f" ({dicom['IssuerOfPatientID']})" if dicom["IssuerOfPatientID"] else ""),
        "birth": _day(birth) or dicom["PatientBirthDate"],
        "sex": dicom["PatientSex"],
        "acc": dicom["AccessionNumber"],
        "date": " ".join(filter(None, [_day(study_day) or dicom["StudyDate"], _time(dicom["StudyTime"])])),
        "description": dicom["StudyDescription"],
        "modality": dicom["Modality"],
    }
    labels = {
        "name": _("Cognome^Nome"),
        "id": _("Identificativo del paziente"),
        "birth": _("Data di nascita"),
        "sex": _("Sesso"),
        "acc": _("Accession number"),
        "date": _("Data dell'esame"),
        "description": _("Esame"),
        "modality": _("Modalità"),
    }
    if booking is None:
        return [CompareRow(labels[k], "", v, False) for k, v in dicom_cells.items()]
    patient = booking.patient
    identity = DicomIdentity(
        patient_name=dicom["PatientName"], patient_id=dicom["PatientID"], birth_date=birth, sex=dicom["PatientSex"]
    )
    differ = {d["field"] for d in identity_differences(patient=patient, dicom=identity)}
    scheduled = timezone.localtime(booking.scheduled_at)
    booking_cells = {
        "name": patient_dicom_name(patient),
        "id": patient.codice_fiscale or _("(provvisorio)"),
        "birth": _day(patient.birth_date),
        "sex": patient.sex,
        "acc": booking.accession_number,
        "date": scheduled.strftime("%d/%m/%Y %H:%M"),
        "description": f"{booking.procedure.code} – {booking.procedure.description}",
        "modality": f"{booking.procedure.modality} ({booking.station.ae_title})",
    }
    flags = {
        "name": "patient_name" in differ,
        # Shown as different whenever it is not the codice fiscale: a local ID is
        # legitimate but is not the booking's identifier, and staff should see that.
        "id": normalize_codice_fiscale(dicom["PatientID"]) != (patient.codice_fiscale or ""),
        "birth": "birth_date" in differ,
        "sex": "sex" in differ,
        "acc": dicom["AccessionNumber"].strip() != booking.accession_number,
        "date": study_day is not None and study_day != scheduled.date(),
        "description": False,  # free text on both sides: shown, not compared
        "modality": bool(dicom["Modality"]) and booking.procedure.modality not in dicom["Modality"].split("\\"),
    }
    return [
        CompareRow(labels[k], booking_cells[k], dicom_cells[k], flags[k], compared=k != "description") for k in labels
    ]


@dataclass(frozen=True)
class Comparison:
    """The reconciliation page's side-by-side: the booking against the header of the
    study's first stored instance (or, when that cannot be read, the index and why)."""

    rows: list[CompareRow]
    header: Header | None
    instance: Instance | None
    header_error: str

    @property
    def differences(self) -> int:
        return sum(1 for r in self.rows if r.differs)


def reconciliation_compare(*, reconciliation: Reconciliation) -> Comparison:
    """The item's study read and set beside its proposed booking (the first instance's header is read from its tier)."""
    study = reconciliation.study
    header, instance, header_error = _study_header(study)
    rows = compare_rows(reconciliation.booking, _header_values(header, study))
    return Comparison(rows=rows, header=header, instance=instance, header_error=header_error)


def booking_linkable(booking: Booking | None) -> bool:
    """Whether the study may be linked to ``booking``: active, without a study, not yet reported."""
    return bool(
        booking is not None and booking.is_active() and booking.study_id is None and booking.status in _LINKABLE
    )


# --- matching -------------------------------------------------------------------


@dataclass(frozen=True)
class MatchOutcome:
    """What :func:`study_match` did.

    ``result`` is ``linked`` (matched now), ``already_linked``, ``queued`` (a
    pending reconciliation created or re-evaluated), ``resolved`` (staff already
    decided; left alone) or ``missing`` (no such study).
    """

    result: str
    booking_pk: int | None = None
    reconciliation_pk: int | None = None
    reason: str = ""
    differences: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def study_match(*, study_pk: int) -> MatchOutcome:
    """Link the study to the booking with its accession number, or queue it for staff.

    Idempotent and safe to run concurrently for the same study: the study row
    is locked first, then the booking row, and the booking is claimed with a
    conditional update (``study IS NULL``), so two workers never both link.
    """
    with transaction.atomic():
        study = Study.objects.select_for_update(of=("self",)).select_related("patient").filter(pk=study_pk).first()
        if study is None:
            return MatchOutcome("missing")
        linked = Booking.objects.filter(study_id=study.pk).values_list("pk", flat=True).first()
        if linked is not None:
            return MatchOutcome("already_linked", booking_pk=linked)
        pending = Reconciliation.objects.select_for_update().filter(study=study).first()
        if pending is not None and pending.state != Reconciliation.State.PENDING:
            return MatchOutcome("resolved", booking_pk=pending.booking_id, reconciliation_pk=pending.pk)

        accession = study.accession_number.strip()
        booking = None
        if accession:
            booking = (
                Booking.objects.select_for_update(of=("self",))
                .select_related("patient", "facility", "procedure", "station")
                .filter(accession_number=accession)
                .first()
            )
        diffs = identity_differences(patient=booking.patient, dicom=DicomIdentity.of_study(study)) if booking else []
        reason: str  # a Reconciliation.Reason, or "" when the booking is linked
        if not accession:
            reason = Reconciliation.Reason.NO_ACCESSION
        elif booking is None:
            reason = Reconciliation.Reason.NO_BOOKING
        elif not booking.is_active():
            reason = Reconciliation.Reason.BOOKING_CANCELLED
        elif booking.study_id is not None or booking.status not in _LINKABLE:
            reason = Reconciliation.Reason.BOOKING_TAKEN
        elif not _identity_agrees(study, booking, diffs):
            reason = Reconciliation.Reason.IDENTITY_MISMATCH
        else:
            reason = ""

        if booking is not None and not reason:
            if not _claim(booking, study):
                reason = Reconciliation.Reason.BOOKING_TAKEN
            else:
                _linked(study, booking, user=None, source="", note="", system=SYSTEM)
                if pending is not None:
                    _resolve(pending, state=Reconciliation.State.LINKED, booking=booking, user=None, note="")
                audit_record(
                    action="booking.match",
                    system=SYSTEM,
                    study=study,
                    patient=booking.patient,
                    detail=_audit_detail(booking, result="linked", differences=diffs),
                )
                logger.info("study %s linked to booking %s", study.study_instance_uid, booking.accession_number)
                return MatchOutcome(
                    "linked",
                    booking_pk=booking.pk,
                    reconciliation_pk=pending.pk if pending else None,
                    differences=diffs,
                )

        item, changed = _queue(study, pending, booking=booking, reason=reason, differences=diffs)
        if changed:
            audit_record(
                action="booking.match",
                outcome=AuditEvent.Outcome.WARNING,
                system=SYSTEM,
                study=study,
                detail={
                    "result": "queued",
                    "reason": reason,
                    "accession_number": accession,
                    "booking": booking.accession_number if booking else None,
                    "differences": diffs,
                    "reconciliation": item.pk,
                },
            )
            logger.warning("study %s queued for reconciliation: %s", study.study_instance_uid, reason)
        return MatchOutcome(
            "queued",
            booking_pk=booking.pk if booking else None,
            reconciliation_pk=item.pk,
            reason=reason,
            differences=diffs,
        )


def _claim(booking: Booking, study: Study) -> bool:
    """Set the booking's study unless another worker already did (checked on one row)."""
    claimed = Booking.objects.filter(pk=booking.pk, study__isnull=True).update(study=study, updated_at=timezone.now())
    if claimed != 1:
        return False
    booking.study = study
    return True


def _linked(study: Study, booking: Booking, *, user: User | None, source: str, note: str, system: str = "") -> None:
    """The booking holds the study: mark it performed, give the study the request's clinical
    question and priority (the radiologist's work list and report start from them) and make
    the study's patient the booking's."""
    Study.objects.filter(pk=study.pk).update(reason_for_request=booking.clinical_question, priority=booking.priority)
    study.reason_for_request, study.priority = booking.clinical_question, booking.priority
    if booking.status != Booking.Status.PERFORMED:
        booking_status_set(booking=booking, status=Booking.Status.PERFORMED, user=user, system=system, note=note)
        booking.status = Booking.Status.PERFORMED
    if study.patient_id != booking.patient_id:
        study_patient_assign(
            study=study,
            patient=booking.patient,
            user=user,
            source=source,
            reason=note or _("collegato alla prenotazione %(acc)s") % {"acc": booking.accession_number},
            detail={"booking": booking.accession_number, "system": system},
        )


def _queue(
    study: Study,
    item: Reconciliation | None,
    *,
    booking: Booking | None,
    reason: str,
    differences: list[dict[str, str]],
) -> tuple[Reconciliation, bool]:
    if item is None:
        item = Reconciliation.objects.create(study=study, booking=booking, reason=reason, differences=differences)
        return item, True
    changed = (item.booking_id, item.reason, item.differences) != (
        booking.pk if booking else None,
        reason,
        differences,
    )
    if changed:
        item.booking, item.reason, item.differences = booking, reason, differences
        item.save(update_fields=["booking", "reason", "differences"])
    return item, changed


def _resolve(item: Reconciliation, *, state: str, booking: Booking | None, user: User | None, note: str) -> None:
    item.state = state
    item.booking = booking
    item.resolved_at = timezone.now()
    item.resolved_by = user if user is not None and user.is_authenticated else None
    item.note = note[:500]
    item.save(update_fields=["state", "booking", "resolved_at", "resolved_by", "note"])


# --- staff actions --------------------------------------------------------------


def _locked_pending(reconciliation: Reconciliation) -> tuple[Reconciliation, Study]:
    study = Study.objects.select_for_update(of=("self",)).select_related("patient").get(pk=reconciliation.study_id)
    item = Reconciliation.objects.select_for_update().get(pk=reconciliation.pk)
    if item.state != Reconciliation.State.PENDING:
        raise BookingError(
            _("Questo studio è già stato riconciliato (%(state)s).") % {"state": item.get_state_display()},
            code="resolved",
        )
    return item, study


def _study_detail(study: Study) -> dict[str, Any]:
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "PatientName": study.patient_name,
        "PatientID": study.dicom_patient_id,
    }


def reconciliation_link(
    *,
    reconciliation: Reconciliation,
    booking: Booking,
    user: User | None,
    source: str = "",
    note: str = "",
) -> Reconciliation:
    """Link the study to ``booking`` (the proposed one or another): the booking is
    performed, the study's patient becomes the booking's and its AccessionNumber
    in the index becomes the booking's (the stored files are not changed)."""
    note = note.strip()
    with transaction.atomic():
        item, study = _locked_pending(reconciliation)
        booking = (
            Booking.objects.select_for_update(of=("self",))
            .select_related("patient", "facility", "procedure", "station")
            .get(pk=booking.pk)
        )
        acc = booking.accession_number
        if not booking.is_active():
            raise BookingError(_("La prenotazione %(acc)s è annullata.") % {"acc": acc}, field="booking")
        if booking.study_id is not None and booking.study_id != study.pk:
            raise BookingError(
                _("La prenotazione %(acc)s è già collegata a un altro studio.") % {"acc": acc}, field="booking"
            )
        if booking.status not in _LINKABLE:
            raise BookingError(
                _("La prenotazione %(acc)s è %(status)s: non si può collegare a uno studio.")
                % {"acc": acc, "status": booking.get_status_display()},
                field="booking",
            )
        other = Booking.objects.filter(study_id=study.pk).exclude(pk=booking.pk).first()
        if other is not None:
            raise BookingError(
                _("Lo studio è già collegato alla prenotazione %(acc)s.") % {"acc": other.accession_number},
                field="booking",
            )
        before = _study_detail(study)
        if booking.study_id is None and not _claim(booking, study):
            raise BookingError(
                _("La prenotazione %(acc)s è già collegata a un altro studio.") % {"acc": acc}, field="booking"
            )
        if study.accession_number != acc:
            Study.objects.filter(pk=study.pk).update(accession_number=acc)
            study.accession_number = acc
        _linked(study, booking, user=user, source=source, note=note)
        _resolve(item, state=Reconciliation.State.LINKED, booking=booking, user=user, note=note)
        audit_record(
            action="booking.reconciliation.link",
            user=user,
            study=study,
            patient=booking.patient,
            source=source,
            detail=_audit_detail(
                booking,
                reconciliation=item.pk,
                reason=item.reason,
                proposed=reconciliation.booking_id,
                before=before,
                note=note[:500],
            ),
        )
    return item


def reconciliation_reassign(
    *,
    reconciliation: Reconciliation,
    patient: Patient,
    user: User | None,
    source: str = "",
    note: str = "",
) -> Reconciliation:
    """Put the study under an identified patient without a booking (an emergency exam)."""
    note = note.strip()
    if patient.provisional or not patient.codice_fiscale:
        raise BookingError(
            _("Si può riassegnare solo a un paziente identificato da codice fiscale."), field="codice_fiscale"
        )
    with transaction.atomic():
        item, study = _locked_pending(reconciliation)
        before = _study_detail(study)
        study_patient_assign(
            study=study,
            patient=patient,
            user=user,
            source=source,
            reason=note or _("riassegnato dalla riconciliazione"),
            detail={"reconciliation": item.pk},
        )
        proposed = item.booking.accession_number if item.booking else None
        _resolve(item, state=Reconciliation.State.REASSIGNED, booking=None, user=user, note=note)
        audit_record(
            action="booking.reconciliation.reassign",
            user=user,
            study=study,
            patient=patient,
            source=source,
            detail={
                "reconciliation": item.pk,
                "reason": item.reason,
                "proposed": proposed,
                "before": before,
                "note": note[:500],
            },
        )
    return item


def reconciliation_reject(
    *,
    reconciliation: Reconciliation,
    user: User | None,
    source: str = "",
    note: str,
) -> Reconciliation:
    """Close the item: the proposed match is wrong or the study is not a booked exam.

    Nothing else changes; the note saying why is required.
    """
    note = note.strip()
    if not note:
        raise BookingError(_("Indicare il motivo per cui lo studio viene respinto."), field="note", code="required")
    with transaction.atomic():
        item, study = _locked_pending(reconciliation)
        proposed = item.booking.accession_number if item.booking else None
        # The proposed booking stays on the row: what was rejected is part of the record.
        _resolve(item, state=Reconciliation.State.REJECTED, booking=item.booking, user=user, note=note)
        audit_record(
            action="booking.reconciliation.reject",
            user=user,
            study=study,
            source=source,
            detail={"reconciliation": item.pk, "reason": item.reason, "proposed": proposed, "note": note[:500]},
        )
    return item
