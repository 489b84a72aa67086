"""A signed report never changes: the model refuses it, and so does the
database when the model is bypassed (QuerySet.update, raw SQL). The page,
the API and the admin are tested with their own code."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction

from archive.models import Report
from archive.reporting import services as reports
from tests.reporting_helpers import EXPOSURE_TEXT, RADIOLOGIST_PASSWORD, Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

SIGNED_CONCLUSION = "Quadro TC nei limiti della norma."


@pytest.fixture
def signed(reporting: Reporting) -> Report:
    r = reporting
    draft = reports.report_draft_start(study=r.study, user=r.radiologist)
    draft = reports.report_save(
        report=draft,
        user=r.radiologist,
        revision=draft.revision,
        clinical_question=draft.clinical_question,
        technique="TC del torace.",
        findings="Non lesioni focali.",
        conclusion=SIGNED_CONCLUSION,
        exposure=EXPOSURE_TEXT,
        exposure_confirmed=True,
    )
    return reports.report_sign(report=draft, user=r.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision)


def unchanged(report: Report) -> None:
    fresh = Report.objects.get(pk=report.pk)
    assert fresh.status == Report.Status.SIGNED
    assert fresh.conclusion == SIGNED_CONCLUSION
    assert (fresh.pdf_sha256, fresh.pdf_path, fresh.signed_at) == (report.pdf_sha256, report.pdf_path, report.signed_at)
    assert reports.report_verify(report=fresh).ok


def test_the_model_refuses_to_save_a_signed_report(signed: Report) -> None:
    signed.conclusion = "Riscritto dopo la firma."
    with pytest.raises(ValidationError):
        signed.save()
    # Also when the instance in hand still believes it is a draft.
    stale = Report.objects.get(pk=signed.pk)
    stale.status = Report.Status.DRAFT
    stale.conclusion = "Riscritto dopo la firma."
    with pytest.raises(ValidationError):
        stale.save(update_fields=["status", "conclusion"])
    unchanged(signed)


def test_the_model_refuses_to_delete_a_signed_report(signed: Report) -> None:
    with pytest.raises(ValidationError):
        signed.delete()
    unchanged(signed)


@pytest.mark.parametrize(
    "change",
    [
        {"conclusion": "Riscritto dopo la firma."},
        {"status": Report.Status.DRAFT},
        {"pdf_sha256": "0" * 64},
        {"encapsulated_sop_instance_uid": "1.2.3"},
    ],
)
def test_the_database_refuses_a_queryset_update_of_a_signed_report(signed: Report, change: dict) -> None:
    with pytest.raises(DatabaseError), transaction.atomic():
        Report.objects.filter(pk=signed.pk).update(**change)
    unchanged(signed)


def test_the_database_refuses_a_raw_sql_update_of_a_signed_report(signed: Report) -> None:
    table = connection.ops.quote_name(Report._meta.db_table)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET conclusion = %s WHERE id = %s", ["Riscritto via SQL.", signed.pk])
    unchanged(signed)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite refuses UPDATE only (see migration 0009)")
def test_the_database_refuses_a_raw_sql_delete_of_a_signed_report(signed: Report) -> None:
    table = connection.ops.quote_name(Report._meta.db_table)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [signed.pk])
    unchanged(signed)


def test_a_draft_is_still_edited_and_discarded_normally(reporting: Reporting) -> None:
    r = reporting
    draft = reports.report_draft_start(study=r.study, user=r.radiologist)
    Report.objects.filter(pk=draft.pk).update(conclusion="Bozza.")
    draft.refresh_from_db()
    draft.technique = "TC."
    draft.save()
    assert Report.objects.get(pk=draft.pk).technique == "TC."
    draft.delete()
    assert not Report.objects.exists()


def test_a_signed_report_cannot_be_signed_or_saved_again_through_the_services(
    signed: Report, reporting: Reporting
) -> None:
    r = reporting
    with pytest.raises(reports.ReportConflict):
        reports.report_save(
            report=signed,
            user=r.radiologist,
            revision=signed.revision,
            clinical_question="",
            technique="",
            findings="",
            conclusion="Riscritto dopo la firma.",
        )
    with pytest.raises(reports.ReportConflict):
        reports.report_sign(report=signed, user=r.radiologist, password=RADIOLOGIST_PASSWORD, revision=signed.revision)
    with pytest.raises(reports.ReportError):
        reports.report_discard(report=signed, user=r.radiologist)
    unchanged(signed)
