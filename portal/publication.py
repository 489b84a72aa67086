"""What is published to the citizen and until when.

Publication
    A signed report version is published when its study's booking has an
    online choice (consent not revoked): one :class:`~portal.models.Publication`
    per (booking, report), made by :func:`report_publish` when
    ``archive.signals.report_signed`` is sent. An addendum (*integrazione*) is
    published next to the versions before it, which stay valid. A correction
    (*rettifica*) replaces them: every earlier publication of the booking is
    withdrawn with reason ``superseded``, whatever order the signals arrive
    in, so the citizen sees the corrected text only. Each publication has its
    own window: ``published_at`` + ``PACS_PORTAL_AVAILABILITY_DAYS``.

Consent revoked
    Availability is computed from the booking's *current* choice
    (:func:`portal.exams.exam_status`), so a revocation (a newer choice that is
    not online) takes the exam off line at once, withdrawn or not.
    :func:`publications_withdraw_for_revocation` records the withdrawal on the
    rows (who, when, why) and is for the page or service that accepts the
    revocation to call. Today ``booking.services.distribution_choose`` refuses
    any change once the report is signed, and so does the citizen's exam page
    (:func:`consent_revoke_online`), as the information text says; a revocation
    after publication only arrives as a choice row written by another path
    (the CUP desk's ``booking.services.consent_revoke``, an external CUP).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone
from django.utils.translation import gettext as _

from archive.models import Patient, Report
from archive.reporting import services as reports
from booking import services as booking_services
from booking.models import Booking, DistributionChoice
from kernel.audit import audit_record

from .delegations import right_check
from .errors import PortalError
from .models import Delegation, Publication

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

PUBLISH_SYSTEM = "portal.publish"


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


def consent_revoke_online(*, booking: Booking, requested_by: Patient, user: User, source: str = "") -> int:
    """The citizen ``requested_by`` revokes, on the portal, the consent to online delivery of
    ``booking``; the publications withdrawn.

    Her own consent, or, as a delegate, only the consent of someone she
    represents because they cannot act (a minor, a person under guardianship);
    and only before the report is signed, as the information text she
    accepted says ("prima della pubblicazione del referto"): the exam page
    offers it only then (:func:`portal.exams.consent_revocable`). The revoking
    choice and the withdrawal are one transaction: a revocation is never
    recorded without its publications withdrawn (none, today: kept for a
    revocation that reaches the booking by another path).

    Raises
    ------
    PortalError
        ``not_representative``; ``published``: the report is signed (or published).
    booking.services.BookingError
        There is no online consent to revoke.
    """
    right_check(requested_by=requested_by, patient=booking.patient, right=Delegation.Right.CONSENT, now=timezone.now())
    if booking.is_choice_locked() or Publication.objects.filter(booking=booking).exists():
        raise PortalError(
            _(
                "Il referto è già stato firmato: come indicato nell'informativa, il consenso alla consegna "
                "online si può revocare solo prima della pubblicazione del referto. Referto e immagini restano "
                "consultabili online fino alla scadenza indicata."
            ),
            code="published",
        )
    with transaction.atomic():
        booking_services.consent_revoke(
            booking=booking,
            channel=Booking.Channel.ONLINE,
            user=user,
            recorded_by_name=str(requested_by),
            source=source,
        )
        return publications_withdraw_for_revocation(booking=booking, user=user, source=source)
