"""Booked, performed, reported and signed for real; the signal sent as the signing sends it."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User

from archive.models import Report, StaffProfile
from archive.reporting import services as reports
from booking.models import Booking
from fse_gateway.models import Operation
from kernel import tasknames
from tests.booking.conftest import Cup, linked_booking
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting, report_signed_send, signed_report

FSE_TASKS = (tasknames.FSE_REPORT_PLAN, tasknames.FSE_OPERATION_SEND)


def signed_and_sent(report: Report) -> list[Any]:
    """``report_signed`` after commit, then the FSE tasks it queued, run as a worker runs them."""
    return report_signed_send(report, *FSE_TASKS)


RADIOLOGIST_CF = "CSSSFN70A01L424Y"  # Stefano Cossutta, born in Trieste on 1 January 1970


def booked_and_signed(cup: Cup, rep: Reporting, **booking: Any) -> tuple[Booking, Report]:
    """A booking of the study (online with consent unless told), and the radiologist's signed report."""
    # The CDA names its author and signer by codice fiscale (the staff profile's).
    StaffProfile.objects.filter(user=cast(User, rep.radiologist)).update(codice_fiscale=RADIOLOGIST_CF)
    linked = linked_booking(cup, rep.study, **booking)
    return linked, signed_report(rep)


def amended(rep: Reporting, report: Report, kind: str) -> Report:
    """A correction or an addendum of ``report``, written and signed."""
    radiologist = cast(User, rep.radiologist)
    draft = reports.report_amend(report=report, user=radiologist, kind=kind)
    draft = reports.report_save(
        report=draft,
        user=radiologist,
        revision=draft.revision,
        clinical_question=draft.clinical_question,
        technique="TC del torace senza mezzo di contrasto.",
        findings="Micronodulo di 4 mm al lobo superiore destro, non presente nel referto precedente.",
        conclusion="Micronodulo polmonare: controllo TC a 12 mesi.",
    )
    return reports.report_sign(report=draft, user=radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision)


def ops(**filters: Any) -> list[Operation]:
    return list(Operation.objects.filter(**filters).order_by("pk"))
