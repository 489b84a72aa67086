"""The rules of the citizen portal: what is published and until when, what an
exam's status is for the citizen, who may act for whom, and the oscuramento.

Pages call these functions; they hold no rule of their own.

Publication
    A signed report version is published when its study's booking has an
    online choice (consent not revoked): one :class:`~portal.models.Publication`
    per (booking, report), created by :func:`publish_on_report_signed` on
    ``archive.signals.report_signed``. An addendum (*integrazione*) is
    published next to the versions before it, which stay valid. A correction
    (*rettifica*) replaces them: every earlier publication of the booking is
    withdrawn with reason ``superseded``, whatever order the signals arrive
    in, so the citizen sees the corrected text only. Each publication has its
    own window: ``published_at`` + ``PACS_PORTAL_AVAILABILITY_DAYS``.

Consent revoked
    Availability is computed from the booking's *current* choice, so a
    revocation (a newer choice that is not online) takes the exam off line at
    once, withdrawn or not. :func:`publications_withdraw_for_revocation`
    records the withdrawal on the rows (who, when, why) and is for the page or
    service that accepts the revocation to call. Today
    ``booking.services.distribution_choose`` refuses any change once the
    booking is reported, so a revocation after publication only arrives as a
    choice row written by another path (an external CUP, a future page).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Prefetch, Q
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from archive.audit import audit_record
from archive.models import Patient, Report, Study
from booking.models import Booking, DistributionChoice

from .models import EMERGENCY_REASON_MIN_LENGTH, Concealment, Delegation, EmergencyAccess, Publication

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

PUBLISH_SYSTEM = "portal.publish"


# --- Publication -----------------------------------------------------------------


def availability_days() -> int:
    return int(settings.PACS_PORTAL_AVAILABILITY_DAYS)


def _supersede(booking: Booking, *, now: dt.datetime) -> int:
    """Withdraw every live publication older than the booking's latest published correction."""
    latest = (
        Publication.objects.filter(booking=booking, report__kind=Report.Kind.CORRECTION)
        .order_by("-report__version")
        .values_list("report__version", flat=True)
        .first()
    )
    if latest is None:
        return 0
    return Publication.objects.filter(booking=booking, withdrawn_at__isnull=True, report__version__lt=latest).update(
        withdrawn_at=now, withdrawn_reason=Publication.WithdrawnReason.SUPERSEDED
    )


def report_publish(*, report_pk: int, study_pk: int, now: dt.datetime | None = None) -> str:
    """Publish the signed report ``report_pk`` to the citizen if the choice is online; what happened.

    Idempotent: a second call for the same report finds its publication.
    Returns one of ``published``, ``already_published``, ``not_signed``,
    ``no_booking``, ``cancelled``, ``not_online``.
    """
    report = Report.objects.filter(pk=report_pk, study_id=study_pk, status=Report.Status.SIGNED).first()
    if report is None:
        logger.warning(
            "report_signed for report %s of study %s, which is not a signed report of it", report_pk, study_pk
        )
        return "not_signed"
    now = now or timezone.now()
    with transaction.atomic():
        # Locked: two versions signed at once must agree on which supersedes which.
        booking = (
            Booking.objects.select_for_update(of=("self",)).select_related("patient").filter(study_id=study_pk).first()
        )
        if booking is None:
            return "no_booking"
        if booking.status == Booking.Status.CANCELLED:
            return "cancelled"
        choice = booking.current_choice()
        if choice is None or choice.delivery != DistributionChoice.Delivery.ONLINE:
            return "not_online"
        publication, created = Publication.objects.get_or_create(
            booking=booking,
            report=report,
            defaults={"published_at": now, "available_until": now + dt.timedelta(days=availability_days())},
        )
        if not created:
            return "already_published"
        superseded = _supersede(booking, now=now)
        audit_record(
            action="portal.publish",
            system=PUBLISH_SYSTEM,
            patient=booking.patient,
            study=report.study,
            detail={
                "accession_number": booking.accession_number,
                "report": report.pk,
                "version": report.version,
                "kind": report.kind,
                "choice_version": choice.version,
                "available_until": publication.available_until.isoformat(),
                "superseded": superseded,
            },
        )
    logger.info("report %s of booking %s published to the FSE", report_pk, booking.accession_number)
    return "published"


def publications_withdraw_for_revocation(
    *, booking: Booking, user: AbstractBaseUser | None, source: str = "", now: dt.datetime | None = None
) -> int:
    """Record that the booking's live publications are withdrawn because consent was revoked; how many.

    Call it after the revoking choice is recorded. Availability already
    follows the current choice; this writes who withdrew and when.
    """
    now = now or timezone.now()
    with transaction.atomic():
        count = Publication.objects.filter(booking=booking, withdrawn_at__isnull=True).update(
            withdrawn_at=now,
            withdrawn_by=user if user is not None and user.is_authenticated else None,
            withdrawn_reason=Publication.WithdrawnReason.CONSENT_REVOKED,
        )
        if count:
            audit_record(
                action="portal.withdraw",
                user=user,
                patient=booking.patient,
                study=booking.study,
                source=source,
                detail={"accession_number": booking.accession_number, "reason": "consent_revoked", "count": count},
            )
    return count


# --- The exam's status for the citizen ------------------------------------------------


@dataclass(frozen=True)
class ExamStatus:
    code: str  # booked, awaiting_report, available_online, on_cd, expired, withdrawn, cancelled
    label: str
    facility_name: str = ""  # where to collect the CD, or ask for a copy
    available_until: dt.datetime | None = None
    hint: str = ""  # what to do next, for expired and withdrawn


def _current_choice(booking: Booking) -> DistributionChoice | None:
    # Uses the prefetched choices of citizen_exams when they are there.
    if "choices" in getattr(booking, "_prefetched_objects_cache", {}):
        choices = list(booking.choices.all())
        return max(choices, key=lambda c: c.version) if choices else None
    return booking.current_choice()


def _has_signed_report(booking: Booking) -> bool:
    annotated = getattr(booking, "has_signed_report", None)
    if annotated is not None:
        return bool(annotated)
    if booking.study_id is None:
        return False
    return Report.objects.filter(study_id=booking.study_id, status=Report.Status.SIGNED).exists()


def _copy_hint(facility_name: str) -> str:
    return _(
        "Per avere una copia del referto e delle immagini rivolgersi al presidio %(facility)s "
        "o al CUP della propria azienda sanitaria."
    ) % {"facility": facility_name}


def exam_status(*, booking: Booking, now: dt.datetime | None = None) -> ExamStatus:
    """What the citizen is told about ``booking``: booked, awaiting the report, online, on CD...

    Online only with the current choice online (consent not revoked), a
    signed report and a publication neither withdrawn nor expired.
    """
    now = now or timezone.now()
    facility = booking.facility.name
    if booking.status == Booking.Status.CANCELLED:
        return ExamStatus("cancelled", _("Prenotazione annullata"))
    if booking.status in (Booking.Status.BOOKED, Booking.Status.ARRIVED):
        return ExamStatus("booked", _("Prenotato"), facility_name=facility)
    if not _has_signed_report(booking):
        return ExamStatus("awaiting_report", _("Eseguito, in attesa del referto"), facility_name=facility)
    publications = list(booking.publications.all())
    choice = _current_choice(booking)
    if choice is None or choice.delivery != DistributionChoice.Delivery.ONLINE:
        if publications:
            # It was online, and the consent was revoked afterwards.
            return ExamStatus(
                "withdrawn",
                _("Ritirato dal Fascicolo: consenso alla consegna online revocato"),
                facility_name=facility,
                hint=_copy_hint(facility),
            )
        return ExamStatus(
            "on_cd",
            _("Su CD, da ritirare presso %(facility)s") % {"facility": facility},
            facility_name=facility,
        )
    live = [p for p in publications if p.is_live(now)]
    if live:
        until = max(p.available_until for p in live)
        return ExamStatus(
            "available_online",
            _("Disponibile online fino al %(date)s") % {"date": date_format(timezone.localtime(until), "DATE_FORMAT")},
            facility_name=facility,
            available_until=until,
        )
    not_withdrawn = [p for p in publications if p.withdrawn_at is None]
    if not_withdrawn:
        until = max(p.available_until for p in not_withdrawn)
        return ExamStatus(
            "expired",
            _("Non più disponibile online dal %(date)s")
            % {"date": date_format(timezone.localtime(until), "DATE_FORMAT")},
            facility_name=facility,
            available_until=until,
            hint=_copy_hint(facility),
        )
    if publications:
        return ExamStatus("withdrawn", _("Ritirato dal Fascicolo"), facility_name=facility, hint=_copy_hint(facility))
    # Signed, online, but not (yet) published: the receiver has not run.
    return ExamStatus("awaiting_report", _("Refertato, in corso di pubblicazione"), facility_name=facility)


def is_available_online(*, booking: Booking, now: dt.datetime | None = None) -> bool:
    return exam_status(booking=booking, now=now).code == "available_online"


def live_publications(
    *, booking: Booking, now: dt.datetime | None = None, status: ExamStatus | None = None
) -> list[Publication]:
    """The report versions the citizen may download now, oldest first (empty unless available online).

    ``status``: the booking's :func:`exam_status` at ``now``, when the caller has it already.
    """
    now = now or timezone.now()
    status = status or exam_status(booking=booking, now=now)
    if status.code != "available_online":
        return []
    return [p for p in booking.publications.select_related("report").order_by("report__version") if p.is_live(now)]


# --- Who may act for whom ------------------------------------------------------------


def delegations_in_force(now: dt.datetime) -> Q:
    """The delegations in force at ``now``: started, not ended, not revoked."""
    return Q(revoked_at__isnull=True, valid_from__lte=now) & (Q(valid_until__isnull=True) | Q(valid_until__gt=now))


def patients_acted_for(*, patient: Patient, now: dt.datetime | None = None) -> list[Patient]:
    """The citizen themselves, then everyone who delegated them and whose delegation is in force."""
    now = now or timezone.now()
    delegators = (
        Patient.objects.filter(
            pk__in=Delegation.objects.filter(delegations_in_force(now), delegate=patient).values("delegator_id")
        )
        .exclude(pk=patient.pk)
        .order_by("family_name", "given_name", "pk")
    )
    return [patient, *delegators]


def citizen_exams(*, patient: Patient, now: dt.datetime | None = None) -> list[Booking]:
    """The bookings of everyone the citizen may act for, newest first, ready for :func:`exam_status`."""
    ids = [p.pk for p in patients_acted_for(patient=patient, now=now)]
    signed = Report.objects.filter(study_id=OuterRef("study_id"), status=Report.Status.SIGNED)
    return list(
        Booking.objects.filter(patient_id__in=ids)
        .select_related("patient", "facility", "procedure", "study")
        # Ordered on their own columns: the models' default ordering would join the bookings again.
        .prefetch_related(
            Prefetch("choices", queryset=DistributionChoice.objects.order_by("version")),
            Prefetch("publications", queryset=Publication.objects.order_by("published_at", "pk")),
        )
        .annotate(has_signed_report=Exists(signed))
        .order_by("-scheduled_at", "-pk")
    )


def citizen_may_see(*, citizen: Patient, booking: Booking, now: dt.datetime | None = None) -> bool:
    """Whether the booking is the citizen's own or of someone they act for now."""
    return booking.patient_id in {p.pk for p in patients_acted_for(patient=citizen, now=now)}


def delegation_register(
    *,
    delegator: Patient,
    delegate: Patient,
    kind: str,
    evidence: str,
    user: AbstractBaseUser,
    valid_from: dt.datetime | None = None,
    valid_until: dt.datetime | None = None,
    source: str = "",
) -> Delegation:
    """Record a *delega* that staff checked on ``evidence``; audited ``portal.delegation.register``."""
    if delegator.pk == delegate.pk:
        raise ValueError(_("Un cittadino non può delegare sé stesso."))
    if kind not in Delegation.Kind.values:
        raise ValueError(_("Tipo di delega sconosciuto: %(kind)s.") % {"kind": kind})
    if not evidence.strip():
        raise ValueError(_("Indicare il documento che giustifica la delega."))
    valid_from = valid_from or timezone.now()
    if valid_until is not None and valid_until <= valid_from:
        raise ValueError(_("La fine della validità viene dopo il suo inizio."))
    with transaction.atomic():
        delegation = Delegation.objects.create(
            delegator=delegator,
            delegate=delegate,
            kind=kind,
            evidence=evidence.strip(),
            registered_by=user,
            valid_from=valid_from,
            valid_until=valid_until,
        )
        audit_record(
            action="portal.delegation.register",
            user=user,
            patient=delegator,
            source=source,
            detail={"delegation": delegation.pk, "delegate": delegate.codice_fiscale, "kind": kind},
        )
    return delegation


def delegation_revoke(*, delegation: Delegation, user: AbstractBaseUser, source: str = "") -> Delegation:
    """End a *delega* now (idempotent); audited ``portal.delegation.revoke``."""
    with transaction.atomic():
        now = timezone.now()
        if Delegation.objects.filter(pk=delegation.pk, revoked_at__isnull=True).update(revoked_at=now, revoked_by=user):
            audit_record(
                action="portal.delegation.revoke",
                user=user,
                patient=delegation.delegator,
                source=source,
                detail={"delegation": delegation.pk, "delegate": delegation.delegate.codice_fiscale},
            )
    delegation.refresh_from_db()
    return delegation


# --- Oscuramento and break-glass -----------------------------------------------------


def is_concealed(*, study: Study) -> bool:
    return Concealment.objects.filter(study=study, revealed_at__isnull=True).exists()


def conceal(
    *,
    patient: Patient,
    study: Study,
    by_user: AbstractBaseUser | None = None,
    requested_by: Patient | None = None,
    source: str = "",
) -> Concealment:
    """Hide ``study`` from health professionals; idempotent (an active concealment is returned).

    ``patient`` is the study's patient. ``by_user`` is the operator who
    recorded the request at a desk; without one the citizen did it on the
    portal. ``requested_by`` is the citizen who asked, when a delegate.
    """
    if study.patient_id != patient.pk:
        raise ValueError(_("Lo studio non appartiene a questo paziente."))
    with transaction.atomic():
        active = Concealment.objects.select_for_update().filter(study=study, revealed_at__isnull=True).first()
        if active is not None:
            return active
        concealment = Concealment.objects.create(
            patient=patient,
            study=study,
            requested_by=requested_by or patient,
            hidden_by_patient=by_user is None,
            hidden_by=by_user,
        )
        audit_record(
            action="portal.conceal",
            user=by_user,
            patient=patient,
            study=study,
            source=source,
            detail={"concealment": concealment.pk, "requested_by": (requested_by or patient).codice_fiscale},
        )
    return concealment


def reveal(
    *,
    patient: Patient,
    study: Study,
    by_user: AbstractBaseUser | None = None,
    requested_by: Patient | None = None,
    source: str = "",
) -> Concealment | None:
    """Make ``study`` visible to health professionals again; the closed concealment, or None if none was active."""
    if study.patient_id != patient.pk:
        raise ValueError(_("Lo studio non appartiene a questo paziente."))
    with transaction.atomic():
        active = Concealment.objects.select_for_update().filter(study=study, revealed_at__isnull=True).first()
        if active is None:
            return None
        active.revealed_at = timezone.now()
        active.revealed_by = by_user
        active.save(update_fields=["revealed_at", "revealed_by"])
        audit_record(
            action="portal.reveal",
            user=by_user,
            patient=patient,
            study=study,
            source=source,
            detail={"concealment": active.pk, "requested_by": (requested_by or patient).codice_fiscale},
        )
    return active


def emergency_access(*, user: AbstractBaseUser, study: Study, reason: str, source: str) -> EmergencyAccess:
    """Record a professional's break-glass opening of a concealed study, with the stated reason.

    Raises ``ValueError`` when the reason is shorter than
    :data:`~portal.models.EMERGENCY_REASON_MIN_LENGTH` characters.
    """
    reason = " ".join(reason.split())
    if len(reason) < EMERGENCY_REASON_MIN_LENGTH:
        raise ValueError(
            _("Indicare il motivo dell'accesso in emergenza (almeno %(n)d caratteri).")
            % {"n": EMERGENCY_REASON_MIN_LENGTH}
        )
    with transaction.atomic():
        access = EmergencyAccess.objects.create(user=user, study=study, reason=reason, source=source[:255])
        audit_record(
            action="portal.emergency_access",
            user=user,
            study=study,
            source=source,
            detail={"emergency_access": access.pk, "reason": reason, "concealed": is_concealed(study=study)},
        )
    return access
