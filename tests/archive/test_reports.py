"""The report services: the claim, optimistic saves, re-authenticated signing,
corrections and addenda, authority scoping, the stored files and their
DICOM copy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyotp
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from pydicom import dcmread

from archive import access
from archive.access import StudyNotVisible
from archive.models import Instance, Report, StaffProfile, Study
from archive.reporting import services as reports
from archive.reporting.services import ReportConflict, ReportError
from archive.signals import report_signed
from archive.storage import tiers as storage
from kernel import tasknames
from kernel.models import AuditEvent
from tests.conftest import Enqueued, broker_down, tasks_kept
from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting, written_draft
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def sign(report: Report, user: object, **kwargs: object) -> Report:
    return reports.report_sign(
        report=report, user=user, password=RADIOLOGIST_PASSWORD, revision=report.revision, **kwargs
    )


def report_files(study: Study) -> list[Path]:
    root = storage.absolute_path(storage.facility_tier(study.facility.code), "reports")
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def events(action: str, outcome: str | None = None) -> list[AuditEvent]:
    qs = AuditEvent.objects.filter(action=action)
    if outcome:
        qs = qs.filter(outcome=outcome)
    return list(qs.order_by("id"))


# --- the claim and the draft --------------------------------------------------


def test_draft_start_prefills_the_clinical_question(reporting: Reporting) -> None:
    r = reporting
    draft = reports.report_draft_start(study=r.study, user=r.radiologist, source="10.0.0.7")
    assert draft.status == Report.Status.DRAFT
    assert (draft.version, draft.kind, draft.revision) == (1, Report.Kind.ORIGINAL, 1)
    assert draft.clinical_question == "Dispnea da sforzo, fumatore: escludere lesioni polmonari."
    assert draft.author_id == r.radiologist.pk
    assert reports.report_draft(study=r.study) == draft
    assert reports.report_current(study=r.study) is None
    (event,) = events("report.start")
    assert (event.user_id, event.study_id, event.source) == (r.radiologist.pk, r.study.pk, "10.0.0.7")
    # Opening it again gives the same draft back.
    assert reports.report_draft_start(study=r.study, user=r.radiologist) == draft
    assert Report.objects.count() == 1


def test_a_colleague_cannot_claim_a_study_someone_is_reporting(reporting: Reporting) -> None:
    r = reporting
    reports.report_draft_start(study=r.study, user=r.radiologist)
    with pytest.raises(ReportConflict) as exc:
        reports.report_draft_start(study=r.study, user=r.colleague)
    assert "Stefano Cossutta" in exc.value.message
    assert exc.value.code == "claimed"
    assert Report.objects.count() == 1


def test_the_database_settles_two_claims_at_once(reporting: Reporting, monkeypatch: pytest.MonkeyPatch) -> None:
    r = reporting
    reports.report_draft_start(study=r.study, user=r.radiologist)
    # The colleague looked before the radiologist's draft was committed.
    real = reports.report_draft
    looks: list[int] = []

    def first_look_sees_nothing(*, study: Study) -> Report | None:
        looks.append(1)
        return None if len(looks) == 1 else real(study=study)

    monkeypatch.setattr(reports, "report_draft", first_look_sees_nothing)
    with pytest.raises(ReportConflict) as exc:
        reports.report_draft_start(study=r.study, user=r.colleague)
    assert "Stefano Cossutta" in exc.value.message
    assert Report.objects.count() == 1


def test_the_second_of_two_saves_from_one_revision_conflicts(reporting: Reporting) -> None:
    r = reporting
    draft = reports.report_draft_start(study=r.study, user=r.radiologist)
    fields = {"clinical_question": draft.clinical_question, "technique": "TC", "findings": ""}
    first = reports.report_save(report=draft, user=r.radiologist, revision=1, conclusion="Prima scheda.", **fields)
    assert first.revision == 2
    with pytest.raises(ReportConflict) as exc:
        reports.report_save(report=draft, user=r.radiologist, revision=1, conclusion="Seconda scheda.", **fields)
    assert "Stefano Cossutta" in exc.value.message
    assert "ricarica la bozza" in exc.value.message
    draft.refresh_from_db()
    assert (draft.conclusion, draft.revision) == ("Prima scheda.", 2)
    assert len(events("report.save", AuditEvent.Outcome.SUCCESS)) == 1


def save_as(draft: Report, user: object, *, revision: int, conclusion: str) -> Report:
    return reports.report_save(
        report=draft,
        user=user,
        revision=revision,
        clinical_question=draft.clinical_question,
        technique=draft.technique,
        findings=draft.findings,
        conclusion=conclusion,
    )


def test_a_colleague_saves_the_radiologists_draft(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    assert draft.updated_by_id == r.radiologist.pk
    saved = save_as(draft, r.colleague, revision=draft.revision, conclusion="Rivisto dalla collega.")
    assert saved.conclusion == "Rivisto dalla collega."
    assert saved.revision == draft.revision + 1
    assert (saved.author_id, saved.updated_by_id) == (r.radiologist.pk, r.colleague.pk)
    assert saved.status == Report.Status.DRAFT
    assert events("report.save", AuditEvent.Outcome.SUCCESS)[-1].user_id == r.colleague.pk


def test_the_draft_start_records_who_saved_last(reporting: Reporting) -> None:
    r = reporting
    draft = reports.report_draft_start(study=r.study, user=r.radiologist)
    assert draft.updated_by_id == r.radiologist.pk


def test_two_radiologists_saving_from_one_revision_the_second_is_told_who_saved_first(
    reporting: Reporting,
) -> None:
    r = reporting
    draft = written_draft(r)
    read_at = draft.revision
    # Both opened the draft at the same revision; the colleague saves first.
    save_as(draft, r.colleague, revision=read_at, conclusion="Testo della collega.")
    with pytest.raises(ReportConflict) as exc:
        save_as(draft, r.radiologist, revision=read_at, conclusion="Testo del radiologo.")
    assert exc.value.code == "conflict"
    assert "salvata da Chiara Degano alle" in exc.value.message
    assert "ricarica la bozza" in exc.value.message
    draft.refresh_from_db()
    assert (draft.conclusion, draft.revision, draft.updated_by_id) == (
        "Testo della collega.",
        read_at + 1,
        r.colleague.pk,
    )


def test_a_user_without_change_report_cannot_save(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    r.colleague.user_permissions.remove(
        Permission.objects.get(content_type__app_label="archive", codename="change_report")
    )
    colleague = get_user_model().objects.get(pk=r.colleague.pk)  # fresh permission cache
    with pytest.raises(PermissionDenied):
        save_as(draft, colleague, revision=draft.revision, conclusion="Non deve passare.")
    draft.refresh_from_db()
    assert draft.conclusion == "Quadro TC nei limiti della norma."
    (denied,) = events("report.save", AuditEvent.Outcome.DENIED)
    assert (denied.user_id, denied.detail["reason"]) == (colleague.pk, "permission")


def test_the_author_discards_a_draft_and_the_study_is_free_again(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    # The colleague may edit the draft, but the claim is the author's.
    with pytest.raises(ReportError) as exc:
        reports.report_discard(report=draft, user=r.colleague)
    assert exc.value.code == "author"
    assert "Stefano Cossutta" in exc.value.message
    assert Report.objects.filter(pk=draft.pk).exists()
    reports.report_discard(report=draft, user=r.radiologist)
    assert not Report.objects.exists()
    assert len(events("report.discard", AuditEvent.Outcome.SUCCESS)) == 1
    assert events("report.discard", AuditEvent.Outcome.DENIED)[0].user_id == r.colleague.pk
    assert reports.report_draft_start(study=r.study, user=r.colleague).author_id == r.colleague.pk


# --- signing ------------------------------------------------------------------


def test_signing_with_a_wrong_password_signs_nothing(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    with pytest.raises(ReportError) as exc:
        reports.report_sign(report=draft, user=r.radiologist, password="non-la-mia", revision=draft.revision)
    assert exc.value.code == "reauth"
    draft.refresh_from_db()
    assert draft.status == Report.Status.DRAFT and not draft.pdf_path and draft.signed_at is None
    assert report_files(r.study) == []
    (event,) = events("report.sign")
    assert (event.outcome, event.detail["reason"]) == (AuditEvent.Outcome.DENIED, "password")


def test_signing_asks_for_the_second_factor_when_configured(reporting: Reporting) -> None:
    r = reporting
    secret = pyotp.random_base32()
    StaffProfile.objects.filter(user=r.radiologist).update(totp_secret=secret)
    draft = written_draft(r)
    for otp in ("", "000000" if pyotp.TOTP(secret).now() != "000000" else "111111"):
        with pytest.raises(ReportError) as exc:
            sign(draft, r.radiologist, otp=otp)
        assert exc.value.code == "reauth"
    assert [e.detail["reason"] for e in events("report.sign", AuditEvent.Outcome.DENIED)] == ["otp", "otp"]
    assert report_files(r.study) == []
    signed = sign(draft, r.radiologist, otp=pyotp.TOTP(secret).now())
    assert signed.status == Report.Status.SIGNED


def test_signing_stores_pdf_and_signature_and_tells_the_other_apps_once(
    reporting: Reporting, django_capture_on_commit_callbacks
) -> None:
    r = reporting
    received: list[dict] = []

    def receiver(sender: object, **kwargs: object) -> None:
        received.append({k: v for k, v in kwargs.items() if k != "signal"})

    report_signed.connect(receiver, dispatch_uid="test_reports")
    try:
        draft = written_draft(r)
        with django_capture_on_commit_callbacks(execute=True):
            signed = sign(draft, r.radiologist, source="10.0.0.7")
    finally:
        report_signed.disconnect(dispatch_uid="test_reports")
    assert received == [{"report_pk": signed.pk, "study_pk": r.study.pk}]

    assert signed.status == Report.Status.SIGNED and signed.is_signed
    assert signed.signed_at is not None
    assert signed.signer_name == "Stefano Cossutta"
    assert "BEGIN CERTIFICATE" in signed.signer_certificate
    assert signed.tier == "facility:TS-CAT"
    assert signed.revision == draft.revision
    pdf = storage.absolute_path(signed.tier, signed.pdf_path).read_bytes()
    p7m = storage.absolute_path(signed.tier, signed.signature_path).read_bytes()
    assert pdf.startswith(b"%PDF")
    assert hashlib.sha256(pdf).hexdigest() == signed.pdf_sha256 and signed.pdf_size == len(pdf)
    assert hashlib.sha256(p7m).hexdigest() == signed.signature_sha256
    assert signed.pdf_sha256 in signed.pdf_path and signed.pdf_path.endswith(".pdf")
    assert signed.signature_path.endswith(".p7m")
    assert reports.report_file(report=signed, which="pdf") == pdf
    assert reports.report_file(report=signed, which="p7m") == p7m

    (event,) = events("report.sign")
    assert event.outcome == AuditEvent.Outcome.SUCCESS
    assert (event.user_id, event.study_id, event.source) == (r.radiologist.pk, r.study.pk, "10.0.0.7")
    assert event.detail["pdf_sha256"] == signed.pdf_sha256

    check = reports.report_verify(report=signed)
    assert check.ok, check.reason
    assert "Stefano Cossutta" in check.signer_subject
    assert reports.report_current(study=r.study) == signed
    assert reports.report_draft(study=r.study) is None
    assert not Instance.objects.filter(sop_class_uid=ENCAPSULATED_PDF).exists()
    assert signed.encapsulated_sop_instance_uid == ""


def test_signing_an_empty_report_is_refused(reporting: Reporting) -> None:
    r = reporting
    draft = reports.report_draft_start(study=r.study, user=r.radiologist)
    with pytest.raises(ReportError) as exc:
        sign(draft, r.radiologist)
    assert exc.value.code == "empty"
    assert report_files(r.study) == []


def test_signing_a_stale_revision_conflicts(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    with pytest.raises(ReportConflict):
        reports.report_sign(report=draft, user=r.radiologist, password=RADIOLOGIST_PASSWORD, revision=1)
    draft.refresh_from_db()
    assert draft.status == Report.Status.DRAFT


def test_a_save_that_lands_while_signing_wins_and_the_signing_reports_a_conflict(
    reporting: Reporting, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = reporting
    draft = written_draft(r)
    place_bytes = storage.place_bytes

    def place_and_race(data: bytes, tier: str, relpath: str) -> bool:
        # The other browser tab saves while this one is making the files.
        Report.objects.filter(pk=draft.pk).update(revision=draft.revision + 1, conclusion="Cambiato.")
        return place_bytes(data, tier, relpath)

    monkeypatch.setattr(storage, "place_bytes", place_and_race)
    with pytest.raises(ReportConflict):
        sign(draft, r.radiologist)
    draft.refresh_from_db()
    assert (draft.status, draft.conclusion) == (Report.Status.DRAFT, "Cambiato.")
    assert not events("report.sign", AuditEvent.Outcome.SUCCESS)


def test_a_colleague_with_sign_report_signs_the_draft(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    signed = sign(draft, r.colleague)
    assert signed.status == Report.Status.SIGNED
    assert signed.signer_name == "Chiara Degano"
    assert (signed.author_id, signed.updated_by_id) == (r.radiologist.pk, r.colleague.pk)
    check = reports.report_verify(report=signed)
    assert check.ok, check.reason
    assert "Chiara Degano" in check.signer_subject
    (event,) = events("report.sign")
    assert (event.outcome, event.user_id, event.detail["signer"]) == (
        AuditEvent.Outcome.SUCCESS,
        r.colleague.pk,
        "Chiara Degano",
    )


def test_a_colleague_signs_with_their_own_password(reporting: Reporting) -> None:
    r = reporting
    r.radiologist.set_password("la-password-del-collega-assente")
    r.radiologist.save()
    draft = written_draft(r)
    with pytest.raises(ReportError) as exc:
        reports.report_sign(
            report=draft, user=r.colleague, password="la-password-del-collega-assente", revision=draft.revision
        )
    assert exc.value.code == "reauth"
    draft.refresh_from_db()
    assert draft.status == Report.Status.DRAFT


def test_a_user_without_sign_report_cannot_sign(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    r.colleague.user_permissions.remove(
        Permission.objects.get(content_type__app_label="archive", codename="sign_report")
    )
    colleague = get_user_model().objects.get(pk=r.colleague.pk)
    with pytest.raises(PermissionDenied):
        sign(draft, colleague)
    draft.refresh_from_db()
    assert draft.status == Report.Status.DRAFT
    assert report_files(r.study) == []


def test_a_storage_failure_signs_nothing(reporting: Reporting, monkeypatch: pytest.MonkeyPatch) -> None:
    r = reporting
    draft = written_draft(r)

    def full(data: bytes, tier: str, relpath: str) -> bool:
        raise storage.StorageFull("no space left while storing")

    monkeypatch.setattr(storage, "place_bytes", full)
    with pytest.raises(ReportError) as exc:
        sign(draft, r.radiologist)
    assert exc.value.code == "storage"
    draft.refresh_from_db()
    assert draft.status == Report.Status.DRAFT
    assert events("report.sign")[-1].outcome == AuditEvent.Outcome.FAILURE


# --- corrections and addenda ----------------------------------------------------


@pytest.mark.parametrize("kind", [Report.Kind.CORRECTION, Report.Kind.ADDENDUM])
def test_an_amendment_is_a_new_version_and_the_signed_one_stays(reporting: Reporting, kind: str) -> None:
    r = reporting
    v1 = sign(written_draft(r), r.radiologist)
    v1_pdf = reports.report_file(report=v1, which="pdf")
    v2 = reports.report_amend(report=v1, user=r.colleague, kind=kind)
    assert (v2.version, v2.kind, v2.previous_id, v2.status) == (2, kind, v1.pk, Report.Status.DRAFT)
    assert v2.author_id == r.colleague.pk
    assert v2.clinical_question == v1.clinical_question
    if kind == Report.Kind.CORRECTION:
        assert (v2.technique, v2.findings, v2.conclusion) == (v1.technique, v1.findings, v1.conclusion)
    else:
        assert (v2.technique, v2.findings, v2.conclusion) == ("", "", "")
    assert len(events("report.amend")) == 1
    # The study is claimed again: nobody else starts a third version meanwhile.
    with pytest.raises(ReportConflict):
        reports.report_amend(report=v1, user=r.radiologist, kind=kind)

    v2 = reports.report_save(
        report=v2,
        user=r.colleague,
        revision=v2.revision,
        clinical_question=v2.clinical_question,
        technique=v2.technique,
        findings=v2.findings,
        conclusion="Si aggiunge: piccolo nodulo di 4 mm al lobo superiore destro, da controllare.",
    )
    v2 = sign(v2, r.colleague)
    assert reports.report_current(study=r.study) == v2
    v1.refresh_from_db()
    assert v1.status == Report.Status.SIGNED
    assert reports.report_file(report=v1, which="pdf") == v1_pdf
    assert reports.report_verify(report=v1).ok
    assert reports.report_verify(report=v2).ok
    assert v2.pdf_path != v1.pdf_path
    # Only the latest version is amended.
    with pytest.raises(ReportConflict):
        reports.report_amend(report=v1, user=r.radiologist, kind=kind)


def test_only_a_signed_report_is_amended_and_a_signed_study_is_not_reported_again(reporting: Reporting) -> None:
    r = reporting
    draft = written_draft(r)
    with pytest.raises(ReportError) as exc:
        reports.report_amend(report=draft, user=r.radiologist, kind=Report.Kind.CORRECTION)
    assert exc.value.code == "state"
    signed = sign(draft, r.radiologist)
    with pytest.raises(ReportError) as exc:
        reports.report_amend(report=signed, user=r.radiologist, kind="rifatto")
    assert exc.value.code == "invalid"
    with pytest.raises(ReportError) as exc:
        reports.report_draft_start(study=r.study, user=r.colleague)
    assert exc.value.code == "state"


# --- who opens what ---------------------------------------------------------------


def test_a_radiologist_of_another_authority_is_denied(reporting: Reporting) -> None:
    r = reporting
    with pytest.raises(StudyNotVisible):
        reports.study_access_check(user=r.foreign, study=r.study, source="10.0.0.9")
    with pytest.raises(StudyNotVisible):
        reports.report_draft_start(study=r.study, user=r.foreign)
    assert not Report.objects.exists()
    denied = events("study.denied", AuditEvent.Outcome.DENIED)
    assert len(denied) == 2
    assert (denied[0].user_id, denied[0].study_id, denied[0].source) == (r.foreign.pk, r.study.pk, "10.0.0.9")
    assert denied[0].detail["reason"] == "authority"
    # The study's own radiologists open it, and nothing is audited as denied.
    reports.study_access_check(user=r.radiologist, study=r.study)
    assert len(events("study.denied")) == 2


def test_a_foreign_radiologist_reports_when_the_region_allows_it(reporting: Reporting, settings) -> None:
    r = reporting
    settings.PACS_REPORT_CROSS_AUTHORITY = True
    reports.study_access_check(user=r.foreign, study=r.study)
    assert list(reports.studies_accessible(user=r.foreign)) == [r.study]
    draft = written_draft(r, user=r.foreign)
    assert sign(draft, r.foreign).status == Report.Status.SIGNED


def test_a_foreign_radiologist_reports_when_the_profile_allows_it(reporting: Reporting) -> None:
    r = reporting
    StaffProfile.objects.filter(user=r.foreign).update(cross_authority=True)
    reports.study_access_check(user=r.foreign, study=r.study)
    assert reports.report_draft_start(study=r.study, user=r.foreign).author_id == r.foreign.pk


def test_studies_accessible_filters_by_authority(reporting: Reporting) -> None:
    r = reporting
    assert list(reports.studies_accessible(user=r.radiologist)) == [r.study]
    assert list(reports.studies_accessible(user=r.foreign)) == []
    # Regional staff (no authority, or no profile) see everything.
    StaffProfile.objects.filter(user=r.foreign).update(authority=None)
    assert list(reports.studies_accessible(user=r.foreign)) == [r.study]
    StaffProfile.objects.filter(user=r.foreign).delete()
    assert list(reports.studies_accessible(user=r.foreign)) == [r.study]
    # No permission to view studies: nothing.
    r.radiologist.user_permissions.clear()
    fresh = type(r.radiologist).objects.get(pk=r.radiologist.pk)
    assert list(reports.studies_accessible(user=fresh)) == []
    with pytest.raises(StudyNotVisible):
        reports.study_access_check(user=fresh, study=r.study)


# --- the work list and the viewer -------------------------------------------------------


def test_the_work_list_selects_by_claim_and_offers_the_visible_choices(reporting: Reporting) -> None:
    r = reporting
    principal = access.principal_for_user(r.radiologist)
    assert list(reports.worklist_studies(principal=principal)) == [r.study]
    assert list(reports.worklist_studies(principal=principal, claimed=True)) == []
    reports.report_draft_start(study=r.study, user=r.radiologist)
    (study,) = reports.worklist_studies(principal=principal, claimed=True)
    assert study.has_draft and study.draft_author_username == "radiologo"
    assert list(reports.worklist_studies(principal=principal, claimed=False)) == []
    assert list(reports.worklist_studies(principal=principal, modality="C")) == []  # whole values only
    assert list(reports.worklist_studies(principal=principal, modality="CT")) == [r.study]
    facilities, modalities = reports.worklist_choices(principal=principal)
    assert (list(facilities), modalities) == ([r.study.facility], ["CT"])
    assert list(reports.worklist_studies(principal=access.principal_for_user(r.foreign))) == []


def test_the_viewer_windows_come_from_the_header(reporting: Reporting, tmp_path: Path) -> None:
    from archive.ingest import instance_ingest
    from archive.rendering.pipeline import Window

    instance = Instance.objects.filter(series__study=reporting.study).first()
    copy = instance.copies.get()
    ds = dcmread(storage.absolute_path(copy.tier, copy.path))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.WindowCenter, ds.WindowWidth = [40, 400], [350, 2000]
    ds.WindowCenterWidthExplanation = ["MEDIASTINO", ""]
    ds.save_as(tmp_path / "windows.dcm", enforce_file_format=True)
    instance_ingest(path=tmp_path / "windows.dcm", facility=reporting.region.facility, owned=False)
    windowed = Instance.objects.get(sop_instance_uid="1.2.826.0.1.3680043.8.498.1")
    assert reports.instance_windows(instance=windowed) == [("MEDIASTINO", Window(40, 350)), ("", Window(400, 2000))]
    # A copy that cannot be read: no window of its own, and no error for the page.
    storage.absolute_path(windowed.copies.get().tier, windowed.copies.get().path).unlink()
    assert reports.instance_windows(instance=windowed) == []


# --- the stored files ---------------------------------------------------------------


def test_the_signed_pdf_is_stored_in_the_study_as_encapsulated_pdf(
    reporting: Reporting, settings, enqueued: Enqueued, django_capture_on_commit_callbacks
) -> None:
    r = reporting
    settings.PACS_REPORT_ENCAPSULATED_PDF = True
    draft = written_draft(r)
    with django_capture_on_commit_callbacks(execute=True):
        signed = sign(draft, r.radiologist)
    assert signed.encapsulated_sop_instance_uid
    # Signing only queued it: the worker's task stores the instance.
    assert not Instance.objects.filter(sop_class_uid=ENCAPSULATED_PDF).exists()
    assert (tasknames.REPORT_ENCAPSULATE, (signed.pk,), {}) in enqueued.messages
    assert enqueued.run(tasknames.REPORT_ENCAPSULATE) == [signed.encapsulated_sop_instance_uid]
    instance = Instance.objects.select_related("series__study").get(
        sop_instance_uid=signed.encapsulated_sop_instance_uid
    )
    assert instance.sop_class_uid == ENCAPSULATED_PDF
    assert instance.series.study == r.study
    assert instance.series.modality == "DOC"
    assert instance.series.series_description == "Referto firmato"
    copy = instance.copies.get()
    ds = dcmread(storage.absolute_path(copy.tier, copy.path))
    pdf = reports.report_file(report=signed, which="pdf")
    document = bytes(ds.EncapsulatedDocument)
    assert document[: len(pdf)] == pdf and len(document) - len(pdf) in (0, 1)
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert ds.PatientID == r.study.dicom_patient_id and ds.AccessionNumber == r.study.accession_number
    assert ds.BurnedInAnnotation == "YES"
    # Making it again stores nothing new (the data set derives from the signed row).
    assert reports.report_encapsulate(report=signed) == signed.encapsulated_sop_instance_uid
    assert Instance.objects.filter(sop_class_uid=ENCAPSULATED_PDF).count() == 1


@pytest.mark.parametrize("which", ["pdf", "p7m"])
def test_a_damaged_file_is_detected(reporting: Reporting, which: str) -> None:
    r = reporting
    signed = sign(written_draft(r), r.radiologist)
    path = storage.absolute_path(signed.tier, signed.pdf_path if which == "pdf" else signed.signature_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(ReportError) as exc:
        reports.report_file(report=signed, which=which)
    assert exc.value.code == "damaged"
    check = reports.report_verify(report=signed)
    assert not check.ok and "danneggiato" in check.reason
    path.unlink()
    with pytest.raises(ReportError) as exc:
        reports.report_file(report=signed, which=which)
    assert exc.value.code == "missing"


def test_a_failed_dicom_copy_does_not_undo_the_signature(
    reporting: Reporting,
    settings,
    monkeypatch: pytest.MonkeyPatch,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,
) -> None:
    r = reporting
    settings.PACS_REPORT_ENCAPSULATED_PDF = True

    def refused(*, report: Report) -> str:
        raise ReportError("la copia DICOM non entra", code="storage")

    monkeypatch.setattr(reports, "report_encapsulate", refused)
    with django_capture_on_commit_callbacks(execute=True):
        signed = sign(written_draft(r), r.radiologist)
    # Refused for good: recorded, not raised (the task is not retried for it).
    assert enqueued.run(tasknames.REPORT_ENCAPSULATE) == [""]
    signed.refresh_from_db()
    assert signed.status == Report.Status.SIGNED
    assert not Instance.objects.filter(sop_class_uid=ENCAPSULATED_PDF).exists()
    (event,) = events("report.encapsulate", AuditEvent.Outcome.FAILURE)
    assert event.detail["reason"] == "la copia DICOM non entra"
    assert event.user_id == r.radiologist.pk
    # It can be made later from the signed row.
    monkeypatch.undo()
    assert reports.report_encapsulate(report=signed) == signed.encapsulated_sop_instance_uid
    assert Instance.objects.filter(sop_class_uid=ENCAPSULATED_PDF).count() == 1


class WorkerKilled(BaseException):
    """The worker process dying: not an exception Celery's retry policy sees."""


def test_a_redelivered_task_after_a_crash_stores_the_copy_once(
    reporting: Reporting,
    settings,
    monkeypatch: pytest.MonkeyPatch,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,
) -> None:
    from archive import ingest

    r = reporting
    settings.PACS_REPORT_ENCAPSULATED_PDF = True
    with django_capture_on_commit_callbacks(execute=True):
        signed = sign(written_draft(r), r.radiologist)
    (message,) = [m for m in enqueued.messages if m[0] == tasknames.REPORT_ENCAPSULATE]
    real_ingest = ingest.instance_ingest
    calls: list[str] = []

    def ingest_then_die(**kwargs: object) -> object:
        calls.append("ingest")
        real_ingest(**kwargs)  # type: ignore[arg-type]
        raise WorkerKilled  # stored and committed, the message not yet acknowledged

    monkeypatch.setattr(ingest, "instance_ingest", ingest_then_die)
    with pytest.raises(WorkerKilled):
        enqueued.run(tasknames.REPORT_ENCAPSULATE)
    assert Instance.objects.filter(sop_instance_uid=signed.encapsulated_sop_instance_uid).count() == 1
    files = sorted(p for p in storage.absolute_path(signed.tier, "").rglob("*") if p.is_file())

    # The broker delivers the message again (acks_late): nothing is ingested twice.
    enqueued.messages.append(message)
    assert enqueued.run(tasknames.REPORT_ENCAPSULATE) == [signed.encapsulated_sop_instance_uid]
    assert calls == ["ingest"]
    instance = Instance.objects.get(sop_class_uid=ENCAPSULATED_PDF)
    assert instance.copies.count() == 1
    assert sorted(p for p in storage.absolute_path(signed.tier, "").rglob("*") if p.is_file()) == files


# --- the sweep of copies a broker outage lost ---------------------------------------


def test_a_copy_lost_with_the_broker_is_queued_again_by_the_sweep(
    reporting: Reporting, settings, django_capture_on_commit_callbacks
) -> None:
    from archive.tasks import report_encapsulate_sweep

    r = reporting
    settings.PACS_REPORT_ENCAPSULATED_PDF = True
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 3600
    with broker_down() as lost, django_capture_on_commit_callbacks(execute=True):
        signed = sign(written_draft(r), r.radiologist)
    # Signed all the same; every follow-up was lost (audited for the copy).
    assert tasknames.REPORT_ENCAPSULATE in lost
    assert signed.status == Report.Status.SIGNED
    (event,) = events("report.encapsulate", AuditEvent.Outcome.FAILURE)
    assert event.detail["reason"].startswith("not queued")

    with tasks_kept() as kept:
        # Within the grace period the task may still be on its way: left alone.
        assert report_encapsulate_sweep() == 0
        settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
        assert report_encapsulate_sweep() == 1
        assert kept.messages == [(tasknames.REPORT_ENCAPSULATE, (signed.pk,), {})]
        assert kept.run() == [signed.encapsulated_sop_instance_uid]
        assert Instance.objects.filter(sop_instance_uid=signed.encapsulated_sop_instance_uid).count() == 1
        # Done: never queued again.
        assert report_encapsulate_sweep() == 0
        assert kept.messages == []


def test_the_sweep_leaves_a_refused_copy_an_old_report_and_the_setting_off_alone(
    reporting: Reporting,
    settings,
    monkeypatch: pytest.MonkeyPatch,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,
) -> None:
    from archive.tasks import report_encapsulate_sweep

    r = reporting
    settings.PACS_REPORT_ENCAPSULATED_PDF = True
    settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=True):
        signed = sign(written_draft(r), r.radiologist)
    enqueued.messages.clear()  # the task lost in the broker, say
    assert reports.reports_encapsulation_overdue() == [signed.pk]

    # Beyond the horizon: no longer looked for.
    settings.PACS_REPORT_FOLLOWUP_HORIZON_DAYS = 0
    assert reports.reports_encapsulation_overdue() == []
    settings.PACS_REPORT_FOLLOWUP_HORIZON_DAYS = 7
    # The setting off: no copy is owed.
    settings.PACS_REPORT_ENCAPSULATED_PDF = False
    assert report_encapsulate_sweep() == 0
    settings.PACS_REPORT_ENCAPSULATED_PDF = True

    # Refused by the archive (audited): queuing it again would only refuse it again.
    def refused(*, report: Report) -> str:
        raise ReportError("la copia DICOM non entra", code="storage")

    monkeypatch.setattr(reports, "report_encapsulate", refused)
    assert reports.report_encapsulated_store(report_pk=signed.pk) == ""
    assert report_encapsulate_sweep() == 0
    assert enqueued.messages == []
