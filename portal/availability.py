"""The rules of the citizen portal: what is published and until when, what an
exam's status is for the citizen, who may act for whom, and the oscuramento.

Pages call these functions; they hold no rule of their own.

Publication
    A signed report version is published when its study's booking has an
    online choice (consent not revoked): one :class:`~portal.models.Publication`
    per (booking, report), created by :func:`report_publish` in the task
    queued on ``archive.signals.report_signed`` (queued again by a sweep when
    the broker lost it: :func:`reports_unpublished_overdue`). An addendum (*integrazione*) is
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
    report is signed, so a revocation after publication only arrives as a
    choice row written by another path (an external CUP, a future page), or
    from the citizen's exam page (:func:`consent_revoke_online`).

Who may act for whom
    A citizen sees her own exams and those of the people whose delegation in
    force she holds: that set is the access policy's citizen principal
    (``archive.access.principal_for_request(...).patient_ids``, built on
    :func:`delegator_ids`), which every portal page asks. What a delegate may
    *do* besides seeing and downloading follows from the delegation's kind
    (:func:`citizen_rights`): only a legal representative manages the
    oscuramento, only the representative of someone who cannot act revokes
    the consent, and no delegate lifts a hiding the data subject set herself.

Emergency access
    :func:`emergency_access_grant`: a clinician's break-glass access to one
    patient's concealed studies, with a reason, for a limited time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Prefetch, Q, Subquery
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from archive.models import Patient, Report, Study
from archive.reporting import services as reports
from booking import services as booking_services
from booking.models import Booking, DistributionChoice
from kernel.audit import audit_record

from .models import (
    EMERGENCY_REASON_MIN_LENGTH,
    KIND_RIGHTS,
    MAJORITY_AGE,
    Concealment,
    Delegation,
    EmergencyAccess,
    Publication,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

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


def reports_unpublished_overdue(
    *, now: dt.datetime | None = None, limit: int = reports.FOLLOWUP_SWEEP_LIMIT
) -> list[tuple[int, int]]:
    """``(report, study)`` of the versions signed past the grace period that :func:`report_publish`
    would publish and has not: the arguments of its task, which a broker outage lost.

    Its rule, read in SQL: the study's booking is not cancelled, its current
    choice (the highest version) is online, and the version has no
    publication for it. A correction that already superseded this version
    does not matter: publishing it withdraws it at once, as the task would.
    """
    current = DistributionChoice.objects.filter(booking_id=OuterRef("pk")).order_by("-version").values("delivery")[:1]
    online = (
        Booking.objects.filter(study_id=OuterRef("study_id"))
        .exclude(status=Booking.Status.CANCELLED)
        .annotate(delivery=Subquery(current))
        .filter(delivery=DistributionChoice.Delivery.ONLINE)
    )
    published = Publication.objects.filter(report_id=OuterRef("pk"), booking__study_id=OuterRef("study_id"))
    return list(
        reports.reports_signed_overdue(now=now)
        .filter(Exists(online))
        .exclude(Exists(published))
        .values_list("pk", "study_id")[:limit]
    )


def publications_withdraw_for_revocation(
    *, booking: Booking, user: User | None, source: str = "", now: dt.datetime | None = None
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


# --- Errors ---------------------------------------------------------------------------


class PortalError(ValueError):
    """A request the portal refuses; ``message`` is for the user (Italian), ``field`` names
    the input at fault, ``code`` says why (``permission``, ``too_short``, ``age``,
    ``not_representative``, ``subject_choice``, ``invalid``)."""

    def __init__(self, message: str, *, code: str = "invalid", field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field


# --- Who may act for whom ------------------------------------------------------------


def majority_cutoff(now: dt.datetime) -> dt.date:
    """The latest birth date of someone who is of age on ``now``'s local day.

    Born on 29 February, one comes of age on 1 March of a common year.
    """
    today = timezone.localdate(now)
    year = today.year - MAJORITY_AGE
    try:
        return today.replace(year=year)
    except ValueError:  # today is 29 February, 18 years ago was a common year
        return dt.date(year, 2, 28)


def coming_of_age(birth_date: dt.date) -> dt.datetime:
    """The moment (local midnight) ``birth_date``'s person turns 18."""
    year = birth_date.year + MAJORITY_AGE
    try:
        day = birth_date.replace(year=year)
    except ValueError:  # born on 29 February
        day = dt.date(year, 3, 1)
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def is_minor(patient: Patient, *, now: dt.datetime | None = None) -> bool | None:
    """Whether ``patient`` is under 18 at ``now``; None when the birth date is not known."""
    if patient.birth_date is None:
        return None
    return patient.birth_date > majority_cutoff(now or timezone.now())


def delegations_in_force(now: dt.datetime) -> Q:
    """The delegations in force at ``now``: started, not ended, not revoked, and, for a
    parent's, the child still a minor (a birth date not known counts as of age)."""
    period = Q(revoked_at__isnull=True, valid_from__lte=now) & (Q(valid_until__isnull=True) | Q(valid_until__gt=now))
    parent_of_adult = Q(kind=Delegation.Kind.PARENT) & (
        Q(delegator__birth_date__isnull=True) | Q(delegator__birth_date__lte=majority_cutoff(now))
    )
    return period & ~parent_of_adult


def delegator_ids(*, delegate_id: int, now: dt.datetime | None = None) -> set[int]:
    """The patients who delegated ``delegate_id`` with a delegation in force at ``now``.

    The one place the delegation rule is read: the access policy's citizen
    principal (:mod:`portal.concealment`) is built on it.
    """
    now = now or timezone.now()
    return set(
        Delegation.objects.filter(delegations_in_force(now), delegate_id=delegate_id)
        .exclude(delegator_id=delegate_id)
        .values_list("delegator_id", flat=True)
    )


def patients_acted_for(*, patient: Patient, now: dt.datetime | None = None) -> list[Patient]:
    """The citizen themselves, then everyone who delegated them and whose delegation is in force."""
    return people_ordered(me=patient, patient_ids={patient.pk, *delegator_ids(delegate_id=patient.pk, now=now)})


def people_ordered(*, me: Patient | None, patient_ids: Iterable[int]) -> list[Patient]:
    """``me`` first, then the other patients of ``patient_ids`` by name (a citizen's principal's people)."""
    others = Patient.objects.filter(pk__in=sorted(set(patient_ids))).order_by("family_name", "given_name", "pk")
    if me is None:
        return list(others)
    return [me, *others.exclude(pk=me.pk)]


def citizen_rights(*, citizen: Patient, patient: Patient, now: dt.datetime | None = None) -> frozenset[str]:
    """What ``citizen`` may do with ``patient``'s exams: everything for herself; for
    someone else, what her delegations in force allow (:data:`portal.models.KIND_RIGHTS`)."""
    if citizen.pk == patient.pk:
        return frozenset(Delegation.Right.values)
    now = now or timezone.now()
    kinds = Delegation.objects.filter(delegations_in_force(now), delegate=citizen, delegator=patient).values_list(
        "kind", flat=True
    )
    rights: set[str] = set()
    for kind in kinds:
        rights |= KIND_RIGHTS.get(kind, frozenset())
    return frozenset(rights)


def citizen_exams(*, patient_ids: Iterable[int]) -> list[Booking]:
    """The bookings of the patients ``patient_ids`` (a citizen's principal's), newest first,
    ready for :func:`exam_status`."""
    signed = Report.objects.filter(study_id=OuterRef("study_id"), status=Report.Status.SIGNED)
    return list(
        Booking.objects.filter(patient_id__in=sorted(set(patient_ids)))
        .select_related("patient", "facility", "procedure", "study")
        # Ordered on their own columns: the models' default ordering would join the bookings again.
        .prefetch_related(
            Prefetch("choices", queryset=DistributionChoice.objects.order_by("version")),
            Prefetch("publications", queryset=Publication.objects.order_by("published_at", "pk")),
        )
        .annotate(has_signed_report=Exists(signed))
        .order_by("-scheduled_at", "-pk")
    )


def _kind_age_check(*, kind: str, delegator: Patient, now: dt.datetime) -> None:
    """Refuse a kind that does not fit the delegator's age (a parent's delegation for an adult...)."""
    minor = is_minor(delegator, now=now)
    if kind == Delegation.Kind.PARENT:
        if minor is None:
            raise PortalError(
                _(
                    "La data di nascita del delegante non è registrata: senza di essa non si può verificare "
                    "che sia minorenne. Aggiornare l'anagrafe."
                ),
                code="age",
                field="kind",
            )
        if not minor:
            raise PortalError(
                _(
                    "Il delegante è maggiorenne: la delega del genitore vale solo per un figlio minorenne. "
                    "Per un adulto scegliere tutore, amministratore di sostegno o altro delegato."
                ),
                code="age",
                field="kind",
            )
    elif kind in (Delegation.Kind.SUPPORT, Delegation.Kind.OTHER) and minor:
        raise PortalError(
            _(
                "Il delegante è minorenne: per un minore agiscono i genitori (delega del genitore) "
                "o il tutore nominato dal giudice."
            ),
            code="age",
            field="kind",
        )


def delegation_register(
    *,
    delegator: Patient,
    delegate: Patient,
    kind: str,
    evidence: str,
    user: User,
    valid_from: dt.datetime | None = None,
    valid_until: dt.datetime | None = None,
    source: str = "",
) -> Delegation:
    """Record a *delega* that staff checked on ``evidence``; audited ``portal.delegation.register``.

    The kind must fit the delegator's age: a parent's delegation only for a
    minor (and it ends on the 18th birthday: ``valid_until`` is brought back
    to it), an administrator of support or another delegate only for an adult.

    Raises
    ------
    PortalError
        With ``field`` set to the input at fault (``kind`` for the age).
    """
    if delegator.pk == delegate.pk:
        raise PortalError(_("Un cittadino non può delegare sé stesso."), field="delegate_cf")
    if kind not in Delegation.Kind.values:
        raise PortalError(_("Tipo di delega sconosciuto: %(kind)s.") % {"kind": kind}, field="kind")
    if not evidence.strip():
        raise PortalError(_("Indicare il documento che giustifica la delega."), field="evidence")
    valid_from = valid_from or timezone.now()
    _kind_age_check(kind=kind, delegator=delegator, now=valid_from)
    if kind == Delegation.Kind.PARENT and delegator.birth_date is not None:
        adult = coming_of_age(delegator.birth_date)
        valid_until = adult if valid_until is None else min(valid_until, adult)
    if valid_until is not None and valid_until <= valid_from:
        raise PortalError(_("La fine della validità viene dopo il suo inizio."), field="valid_until")
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


def delegation_revoke(*, delegation: Delegation, user: User, source: str = "") -> Delegation:
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


# --- Oscuramento and consent: the data subject keeps control ----------------------------------


def is_concealed(*, study: Study) -> bool:
    """Whether ``study`` is hidden now: for the citizen's own pages, never for a professional's."""
    return Concealment.objects.filter(study=study, revealed_at__isnull=True).exists()


def _right_check(*, requested_by: Patient | None, patient: Patient, right: str, now: dt.datetime) -> None:
    if requested_by is None or requested_by.pk == patient.pk:
        return
    if right not in citizen_rights(citizen=requested_by, patient=patient, now=now):
        if right == Delegation.Right.CONSENT:
            message = _(
                "Solo l'interessato può revocare il proprio consenso, oppure chi ne ha la rappresentanza legale "
                "perché non può farlo da sé (il genitore di un minore, il tutore)."
            )
        else:
            message = _(
                "La tua delega permette di vedere e scaricare gli esami, non di oscurarli: lo può fare "
                "l'interessato o chi ne ha la rappresentanza legale (genitore, tutore, amministratore di sostegno)."
            )
        raise PortalError(message, code="not_representative")


def concealment_revealable_by(*, concealment: Concealment, requested_by: Patient | None) -> bool:
    """Whether ``requested_by`` may lift ``concealment``: the patient always; a delegate only a hiding
    the patient did not set herself (one set by a representative). None: an operator for the patient."""
    if requested_by is None or requested_by.pk == concealment.patient_id:
        return True
    # Rows without requested_by predate it: taken as the patient's own choice.
    return concealment.requested_by_id not in (None, concealment.patient_id)


def conceal(
    *,
    patient: Patient,
    study: Study,
    by_user: User | None = None,
    requested_by: Patient | None = None,
    source: str = "",
) -> Concealment:
    """Hide ``study`` from health professionals; idempotent (an active concealment is returned).

    ``patient`` is the study's patient. ``by_user`` is the operator who
    recorded the request at a desk; without one the citizen did it on the
    portal. ``requested_by`` is the citizen who asked, when a delegate: only a
    legal representative may (:data:`portal.models.KIND_RIGHTS`).

    Raises
    ------
    PortalError
        ``not_representative``: the delegate's delegation does not allow it.
    ValueError
        The study is not the patient's.
    """
    if study.patient_id != patient.pk:
        raise ValueError(_("Lo studio non appartiene a questo paziente."))
    now = timezone.now()
    _right_check(requested_by=requested_by, patient=patient, right=Delegation.Right.CONCEALMENT, now=now)
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
    by_user: User | None = None,
    requested_by: Patient | None = None,
    source: str = "",
) -> Concealment | None:
    """Make ``study`` visible to health professionals again; the closed concealment, or None if none was active.

    A delegate (``requested_by``, a legal representative) never lifts a hiding
    the patient set herself (:func:`concealment_revealable_by`).

    Raises
    ------
    PortalError
        ``not_representative`` or ``subject_choice``.
    ValueError
        The study is not the patient's.
    """
    if study.patient_id != patient.pk:
        raise ValueError(_("Lo studio non appartiene a questo paziente."))
    now = timezone.now()
    _right_check(requested_by=requested_by, patient=patient, right=Delegation.Right.CONCEALMENT, now=now)
    with transaction.atomic():
        active = Concealment.objects.select_for_update().filter(study=study, revealed_at__isnull=True).first()
        if active is None:
            return None
        if not concealment_revealable_by(concealment=active, requested_by=requested_by):
            raise PortalError(
                _(
                    "L'esame è stato oscurato dall'interessato: solo l'interessato può renderlo di nuovo "
                    "visibile ai professionisti."
                ),
                code="subject_choice",
            )
        active.revealed_at = now
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


def consent_revoke_online(*, booking: Booking, requested_by: Patient, user: User, source: str = "") -> int:
    """The citizen ``requested_by`` revokes, on the portal, the consent to online delivery of
    ``booking``; the publications withdrawn.

    Her own consent, or, as a delegate, only the consent of someone she
    represents because they cannot act (a minor, a person under guardianship).
    The revoking choice and the withdrawal are one transaction: a revocation
    is never recorded without its publications withdrawn.

    Raises
    ------
    PortalError
        ``not_representative``.
    booking.services.BookingError
        There is no online consent to revoke.
    """
    _right_check(requested_by=requested_by, patient=booking.patient, right=Delegation.Right.CONSENT, now=timezone.now())
    with transaction.atomic():
        booking_services.consent_revoke(
            booking=booking,
            channel=Booking.Channel.ONLINE,
            user=user,
            recorded_by_name=str(requested_by),
            source=source,
        )
        return publications_withdraw_for_revocation(booking=booking, user=user, source=source)


# --- Emergency access (break-glass) ------------------------------------------------------

EMERGENCY_PERMISSION = "portal.emergency_access"


def emergency_access_minutes() -> int:
    return int(settings.PACS_EMERGENCY_ACCESS_MINUTES)


def emergency_access_until(access_row: EmergencyAccess) -> dt.datetime:
    """When ``access_row`` stops opening its patient's concealed studies."""
    return access_row.at + dt.timedelta(minutes=emergency_access_minutes())


def emergency_access_allowed(user: Any) -> bool:
    """Whether ``user`` may ask for an emergency access: a clinician who consults studies."""
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and user.has_perm(EMERGENCY_PERMISSION)
        and user.has_perm("archive.view_study")
    )


def emergency_reason_clean(reason: str) -> str:
    """``reason`` with its white space folded; :class:`PortalError` when too short to say why."""
    reason = " ".join(reason.split())
    if len(reason) < EMERGENCY_REASON_MIN_LENGTH:
        raise PortalError(
            _("Indicare il motivo dell'accesso in emergenza (almeno %(n)d caratteri).")
            % {"n": EMERGENCY_REASON_MIN_LENGTH},
            code="too_short",
            field="reason",
        )
    return reason


def emergency_access_grant(
    *, user: User, patient: Patient, reason: str, source: str = "", now: dt.datetime | None = None
) -> EmergencyAccess:
    """Record a professional's break-glass access to ``patient``'s concealed studies, with the stated reason.

    Asked for a patient, never for a study: the professional cannot tell
    whether anything is concealed. For ``PACS_EMERGENCY_ACCESS_MINUTES`` the
    access policy shows ``user`` the patient's concealed studies (within the
    user's health authority, which still applies). Audited
    ``portal.emergency_access`` with the patient and the reason, which the
    citizen reads on "Chi ha visto i miei dati".

    Raises
    ------
    PortalError
        ``permission``: the user does not hold ``portal.emergency_access`` (and
        ``archive.view_study``); ``too_short``: the reason is shorter than
        :data:`~portal.models.EMERGENCY_REASON_MIN_LENGTH` characters.
    """
    if not emergency_access_allowed(user):
        raise PortalError(_("Non hai il permesso di chiedere un accesso in emergenza."), code="permission")
    reason = emergency_reason_clean(reason)
    now = now or timezone.now()
    with transaction.atomic():
        row = EmergencyAccess.objects.create(user=user, patient=patient, reason=reason, at=now, source=source[:255])
        audit_record(
            action="portal.emergency_access",
            user=user,
            patient=patient,
            source=source,
            detail={
                "emergency_access": row.pk,
                "reason": reason,
                "until": emergency_access_until(row).isoformat(),
            },
        )
    return row
