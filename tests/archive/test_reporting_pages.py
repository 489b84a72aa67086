"""The radiologist's pages through the test client: the work list and its
filters, the study page, claiming, saving (and a conflicting save), signing
(a wrong password signs nothing), the signed files, a signed report refused
by the page, another authority's radiologist kept out, the audit trail."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from archive.ingest import instance_ingest
from archive.models import Instance, Report, Study
from archive.reporting import services as reports
from archive.sample_data import PatientInfo, write_study
from kernel import tasknames
from kernel.models import AuditEvent
from tests.archive.test_web import INJECTED_ACCESSION, NON_ASCII_ACCESSION, disposition_filenames
from tests.conftest import Enqueued, Region
from tests.reporting_helpers import EXPOSURE_TEXT, PATIENT_CF, RADIOLOGIST_PASSWORD, Reporting, reporting  # noqa: F401

FINDINGS = "Nodulo di 8 mm al lobo superiore destro, margini regolari."
CONCLUSION = "Nodulo polmonare solitario: controllo TC a 6 mesi."


def another_study(tmp_path: Path, region: Region, *, accession_number: str) -> Study:
    """One more CT study of the same patient (the fixture's helper expects an empty archive)."""
    patient = PatientInfo(patient_id=PATIENT_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M")
    files = write_study(tmp_path, patient=patient, series=1, instances_per_series=2, accession_number=accession_number)
    for path in files:
        instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
    return Study.objects.get(accession_number=accession_number)


def client_for(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


def sections(**overrides: str) -> dict[str, str]:
    values = {
        "clinical_question": "Dispnea da sforzo.",
        "technique": "TC del torace senza mezzo di contrasto.",
        "findings": FINDINGS,
        "conclusion": CONCLUSION,
        # The CT study needs its exposure confirmed to be signed (D.Lgs 101/2020, art. 161, c. 5).
        "exposure": EXPOSURE_TEXT,
        "exposure_confirmed": "on",
    }
    values.update(overrides)
    return values


def start(client: Client, study: Study) -> Report:
    response = client.post(reverse("reporting:report_start", args=[study.pk]))
    assert response.status_code == 302, response.content.decode()[:2000]
    draft = reports.report_draft(study=study)
    assert draft is not None
    return draft


def save(client: Client, draft: Report, *, revision: int | None = None, **text: str):  # type: ignore[no-untyped-def]
    data = {"revision": revision if revision is not None else draft.revision, **sections(**text)}
    return client.post(reverse("reporting:report_save", args=[draft.pk]), data)


def sign(client: Client, draft: Report, *, password: str = RADIOLOGIST_PASSWORD):  # type: ignore[no-untyped-def]
    draft.refresh_from_db()
    return client.post(
        reverse("reporting:report_sign", args=[draft.pk]), {"revision": draft.revision, "password": password}
    )


def signed_report(reporting: Reporting) -> Report:  # noqa: F811
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    assert save(client, draft).status_code == 302
    response = sign(client, draft)
    assert response.status_code == 302, response.content.decode()[:3000]
    draft.refresh_from_db()
    assert draft.is_signed
    return draft


def actions(user: object) -> list[tuple[str, str]]:
    return list(AuditEvent.objects.filter(user=user).order_by("id").values_list("action", "outcome"))


# --- the work list --------------------------------------------------------------------


def test_worklist_lists_the_study_with_who_is_reporting_it(reporting: Reporting) -> None:  # noqa: F811
    url = reverse("reporting:worklist")
    page = client_for(reporting.radiologist).get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert reporting.study.accession_number in text
    assert "ROSSI" in text.upper()
    assert "da refertare" in text
    assert reverse("reporting:study", args=[reporting.study.pk]) in text

    start(client_for(reporting.radiologist), reporting.study)
    seen_by_colleague = client_for(reporting.colleague).get(url).content.decode()
    assert "in refertazione da Stefano Cossutta" in seen_by_colleague


def test_worklist_filters(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    study = reporting.study
    other = another_study(tmp_path / "second", reporting.region, accession_number="TSC260000002")
    Study.objects.filter(pk=other.pk).update(
        priority="U", study_date=dt.date(2020, 1, 2), modalities_in_study="MR", facility=reporting.region.other_facility
    )
    Study.objects.filter(pk=study.pk).update(study_date=dt.date(2026, 3, 1))
    client = client_for(reporting.radiologist)
    url = reverse("reporting:worklist")

    def listed(**params: str) -> list[str]:
        page = client.get(url, params)
        assert page.status_code == 200
        text = page.content.decode()
        return [acc for acc in ("TSC260000001", "TSC260000002") if acc in text]

    # Urgent first.
    everything = client.get(url).content.decode()
    assert everything.index("TSC260000002") < everything.index("TSC260000001")
    assert listed() == ["TSC260000001", "TSC260000002"]
    assert listed(modality="CT") == ["TSC260000001"]
    assert listed(modality="MR") == ["TSC260000002"]
    assert listed(priority="U") == ["TSC260000002"]
    assert listed(priority="B") == ["TSC260000001"]
    assert listed(facility=str(reporting.region.facility.pk)) == ["TSC260000001"]
    assert listed(date_from="2026-01-01") == ["TSC260000001"]
    assert listed(date_to="2021-01-01") == ["TSC260000002"]
    assert listed(status="in_refertazione") == []
    start(client, study)
    assert listed(status="in_refertazione") == ["TSC260000001"]
    assert listed(status="da_refertare") == ["TSC260000002"]
    # A bad range is an error, not an empty list that looks like "nothing to do".
    page = client.get(url, {"date_from": "2026-01-01", "date_to": "2025-01-01"})
    assert "La data finale precede quella iniziale." in page.content.decode()


def test_worklist_leaves_out_signed_studies(reporting: Reporting) -> None:  # noqa: F811
    signed_report(reporting)
    page = client_for(reporting.colleague).get(reverse("reporting:worklist"))
    assert reporting.study.accession_number not in page.content.decode()


def test_other_authority_radiologist_cannot_open_the_study(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.foreign)
    page = client.get(reverse("reporting:worklist"))
    assert page.status_code == 200
    assert reporting.study.accession_number not in page.content.decode()
    # Another authority's study answers as one that is not in the archive.
    missing = client.get(reverse("reporting:study", args=[reporting.study.pk + 1000]))
    response = client.get(reverse("reporting:study", args=[reporting.study.pk]))
    assert response.status_code == missing.status_code == 404
    assert response.content == missing.content
    assert client.post(reverse("reporting:report_start", args=[reporting.study.pk])).status_code == 404
    assert client.get(reverse("reporting:patient", args=[reporting.study.patient_id])).status_code == 404
    assert not Report.objects.exists()
    assert ("study.denied", "denied") in actions(reporting.foreign)


def test_anonymous_user_goes_to_the_login_page(reporting: Reporting) -> None:  # noqa: F811
    response = Client().get(reverse("reporting:study", args=[reporting.study.pk]))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


# --- the study page -------------------------------------------------------------------


def test_study_page_shows_images_without_javascript(reporting: Reporting) -> None:  # noqa: F811
    study = reporting.study
    client = client_for(reporting.radiologist)
    page = client.get(reverse("reporting:study", args=[study.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "RSSMRA56C12L424P" in text
    assert "Dispnea da sforzo" in text  # the clinical question
    series = list(study.series.order_by("series_number"))
    for s in series:
        assert f"/dicomweb/studies/{study.study_instance_uid}/series/{s.series_instance_uid}/thumbnail" in text
    first = series[0].instances.order_by("instance_number").first()
    image = f"/dicomweb/studies/{study.study_instance_uid}/series/{series[0].series_instance_uid}/instances/"
    assert f'src="{image}{first.sop_instance_uid}/frames/1/rendered"' in text
    assert "Inizia a refertare" in text
    assert "Polmone" in text  # CT presets

    # The second image of the second series, lung window, by the form the page submits without JS.
    second = series[1].instances.order_by("instance_number")[1]
    page = client.get(
        reverse("reporting:study", args=[study.pk]), {"serie": series[1].pk, "immagine": 2, "finestra": 1}
    )
    text = page.content.decode()
    assert f"{second.sop_instance_uid}/frames/1/rendered?window=-600%2C1500%2Clinear" in text
    assert "Immagine precedente" in text and "Immagine successiva" in text

    # The preview it points at is served to the same session.
    thumbnail = client.get(
        f"/dicomweb/studies/{study.study_instance_uid}/series/{series[0].series_instance_uid}/thumbnail",
        HTTP_ACCEPT="image/jpeg",
    )
    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/jpeg"
    assert ("study.view", "success") in actions(reporting.radiologist)


def test_prior_studies_with_their_signed_reports(reporting: Reporting, tmp_path: Path) -> None:  # noqa: F811
    old = signed_report(reporting)
    current = another_study(tmp_path / "new", reporting.region, accession_number="TSC260000009")
    page = client_for(reporting.radiologist).get(reverse("reporting:study", args=[current.pk]))
    text = page.content.decode()
    assert "Esami precedenti del paziente" in text
    assert reverse("reporting:report_pdf", args=[old.pk]) in text


# --- claim, save, conflict ------------------------------------------------------------


def test_start_and_save_a_draft(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    assert draft.author_id == reporting.radiologist.pk
    assert draft.clinical_question.startswith("Dispnea da sforzo")
    page = client.get(reverse("reporting:study", args=[reporting.study.pk])).content.decode()
    assert 'name="findings"' in page and "Salva bozza" in page and "Firma…" in page
    assert "Abbandona la bozza" in page and "ultima modifica di" not in page  # their own draft

    response = save(client, draft, findings="Riga uno\r\nRiga due")
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.findings == "Riga uno\nRiga due"
    assert draft.conclusion == CONCLUSION
    assert draft.revision == 2
    assert "Bozza salvata" in client.get(response["Location"]).content.decode()

    # "Firma…" saves, then asks for the password.
    response = save(client, draft, revision=2, azione="firma")
    assert response.status_code == 302
    assert response["Location"] == reverse("reporting:report_sign", args=[draft.pk])
    assert [a for a, _o in actions(reporting.radiologist) if a.startswith("report.")][:3] == [
        "report.start",
        "report.save",
        "report.save",
    ]


def test_colleague_cannot_take_a_claimed_study_but_edits_its_draft(reporting: Reporting) -> None:  # noqa: F811
    start(client_for(reporting.radiologist), reporting.study)
    client = client_for(reporting.colleague)
    page = client.get(reverse("reporting:study", args=[reporting.study.pk])).content.decode()
    assert "Bozza di Stefano Cossutta, ultima modifica di Stefano Cossutta alle" in page
    assert "Inizia a refertare" not in page
    # The editor, and signing, but not discarding: the claim is the author's.
    assert 'name="findings"' in page and "Salva bozza" in page and "Firma…" in page
    assert "Abbandona la bozza" not in page
    response = client.post(reverse("reporting:report_start", args=[reporting.study.pk]))
    assert response.status_code == 409
    assert "Stefano Cossutta sta già refertando questo studio" in response.content.decode()
    assert Report.objects.get().author_id == reporting.radiologist.pk


def test_colleague_saves_and_signs_the_draft_and_cannot_discard_it(reporting: Reporting) -> None:  # noqa: F811
    draft = start(client_for(reporting.radiologist), reporting.study)
    client = client_for(reporting.colleague)
    response = save(client, draft, findings="Rivisto dalla collega.")
    assert response.status_code == 302
    draft.refresh_from_db()
    assert (draft.findings, draft.author_id, draft.updated_by_id) == (
        "Rivisto dalla collega.",
        reporting.radiologist.pk,
        reporting.colleague.pk,
    )
    # The author now sees who changed their draft.
    page = client_for(reporting.radiologist).get(reverse("reporting:study", args=[reporting.study.pk])).content.decode()
    assert "Bozza di Stefano Cossutta, ultima modifica di Chiara Degano alle" in page
    assert "Rivisto dalla collega." in page and "Abbandona la bozza" in page

    response = client.post(reverse("reporting:report_discard", args=[draft.pk]))
    assert response.status_code == 302
    assert "solo chi l&#x27;ha aperta può abbandonarla" in client.get(response["Location"]).content.decode()
    assert Report.objects.filter(pk=draft.pk).exists()

    sign_page = client.get(reverse("reporting:report_sign", args=[draft.pk])).content.decode()
    assert "Bozza di Stefano Cossutta: il referto sarà firmato a tuo nome" in sign_page
    response = sign(client, draft)
    assert response.status_code == 302, response.content.decode()[:3000]
    draft.refresh_from_db()
    assert draft.is_signed and draft.signer_name == "Chiara Degano"
    assert draft.author_id == reporting.radiologist.pk


def test_conflicting_save_keeps_the_text_and_says_who_saved_first(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    # Two windows opened at revision 1: the first one saves.
    assert save(client, draft, revision=1, findings="Prima finestra.").status_code == 302
    response = save(client, draft, revision=1, findings="Seconda finestra, testo da non perdere.")
    assert response.status_code == 409
    text = response.content.decode()
    assert "La bozza è stata salvata da Stefano Cossutta alle" in text
    assert "Il tuo testo non è stato salvato" in text
    assert "Seconda finestra, testo da non perdere." in text  # kept in the form
    assert "Prima finestra." in text  # the saved version shown beside it
    assert 'name="revision" value="2"' in text
    draft.refresh_from_db()
    assert draft.findings == "Prima finestra." and draft.revision == 2


def test_two_radiologists_save_the_same_draft_and_the_second_gets_a_conflict(
    reporting: Reporting,  # noqa: F811
) -> None:
    first, second = client_for(reporting.radiologist), client_for(reporting.colleague)
    draft = start(first, reporting.study)
    url = reverse("reporting:study", args=[reporting.study.pk])
    # Both open the draft page at revision 1.
    for client in (first, second):
        page = client.get(url).content.decode()
        assert 'name="revision" value="1"' in page and 'name="findings"' in page
    assert save(first, draft, revision=1, findings="Testo del radiologo.").status_code == 302

    response = save(second, draft, revision=1, findings="Testo della collega, da non perdere.")

    assert response.status_code == 409
    text = response.content.decode()
    assert "La bozza è stata salvata da Stefano Cossutta alle" in text
    assert "La versione salvata da Stefano Cossutta alle" in text
    assert "Il tuo testo non è stato salvato" in text
    assert "Testo della collega, da non perdere." in text  # kept in the form
    assert "Testo del radiologo." in text  # the saved version beside it
    assert 'name="revision" value="2"' in text
    draft.refresh_from_db()
    assert (draft.findings, draft.revision, draft.updated_by_id) == (
        "Testo del radiologo.",
        2,
        reporting.radiologist.pk,
    )

    # The other way round: the colleague saves over it on purpose, then the
    # radiologist's stale page names her.
    assert save(second, draft, revision=2, findings="Testo della collega, da non perdere.").status_code == 302
    response = save(first, draft, revision=2, findings="Ancora il radiologo.")
    assert response.status_code == 409
    assert "La bozza è stata salvata da Chiara Degano alle" in response.content.decode()
    draft.refresh_from_db()
    assert draft.findings == "Testo della collega, da non perdere." and draft.revision == 3


# --- signing --------------------------------------------------------------------------


def test_sign_page_asks_for_the_password_and_a_wrong_one_signs_nothing(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    save(client, draft)
    page = client.get(reverse("reporting:report_sign", args=[draft.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert 'type="password"' in text and FINDINGS in text
    assert 'name="otp"' not in text

    response = sign(client, draft, password="sbagliata")
    assert response.status_code == 400
    text = response.content.decode()
    assert "Password errata: firma non eseguita." in text and 'role="alert"' in text
    draft.refresh_from_db()
    assert draft.status == Report.Status.DRAFT and not draft.pdf_path
    assert ("report.sign", "denied") in actions(reporting.radiologist)


def test_sign_page_asks_for_the_code_when_a_second_factor_is_set(reporting: Reporting) -> None:  # noqa: F811
    import pyotp

    profile = reporting.radiologist.staff_profile
    profile.totp_secret = pyotp.random_base32()
    profile.save()
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    save(client, draft)
    assert 'name="otp"' in client.get(reverse("reporting:report_sign", args=[draft.pk])).content.decode()
    draft.refresh_from_db()
    url = reverse("reporting:report_sign", args=[draft.pk])
    response = client.post(url, {"revision": draft.revision, "password": RADIOLOGIST_PASSWORD, "otp": "000000"})
    assert response.status_code == 400
    draft.refresh_from_db()
    assert not draft.is_signed
    code = pyotp.TOTP(profile.totp_secret).now()
    response = client.post(url, {"revision": draft.revision, "password": RADIOLOGIST_PASSWORD, "otp": code})
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.is_signed


def test_the_signing_request_answers_before_the_dicom_copy_is_stored(  # type: ignore[no-untyped-def]
    reporting: Reporting,  # noqa: F811
    settings,
    monkeypatch: pytest.MonkeyPatch,
    enqueued: Enqueued,
    django_capture_on_commit_callbacks,
) -> None:
    from archive import ingest

    settings.PACS_REPORT_ENCAPSULATED_PDF = True
    ingested: list[object] = []
    real_ingest = ingest.instance_ingest

    def counted(**kwargs: object) -> object:
        ingested.append(kwargs.get("facility"))
        return real_ingest(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest, "instance_ingest", counted)
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    assert save(client, draft).status_code == 302
    # The whole request, its on-commit work included (the signal's receivers, the queueing).
    with django_capture_on_commit_callbacks(execute=True):
        response = sign(client, draft)
    assert response.status_code == 302
    report = Report.objects.get(pk=draft.pk)
    # Durable when the page answers: signed, its PDF and signature stored and checked.
    assert report.is_signed and reports.report_verify(report=report).ok
    # The DICOM copy is not: nothing was ingested, its task is queued beside the other apps'.
    assert ingested == [] and not Instance.objects.filter(sop_instance_uid=report.encapsulated_sop_instance_uid)
    assert {tasknames.REPORT_ENCAPSULATE, tasknames.BOOKING_REPORTED, tasknames.REPORT_PUBLISH} <= set(enqueued.names())

    assert enqueued.run(tasknames.REPORT_ENCAPSULATE) == [report.encapsulated_sop_instance_uid]
    assert len(ingested) == 1
    instance = Instance.objects.get(sop_instance_uid=report.encapsulated_sop_instance_uid)
    assert instance.series.study_id == reporting.study.pk and instance.series.modality == "DOC"


def test_sign_then_download_the_pdf_and_the_signature(reporting: Reporting) -> None:  # noqa: F811
    report = signed_report(reporting)
    client = client_for(reporting.radiologist)
    page = client.get(reverse("reporting:report_detail", args=[report.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "Stefano Cossutta" in text and CONCLUSION in text
    assert "valida" in text

    pdf = client.get(reverse("reporting:report_pdf", args=[report.pk]))
    assert pdf.status_code == 200
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf["Content-Disposition"].startswith("inline;")
    assert pdf.content.startswith(b"%PDF")
    p7m = client.get(reverse("reporting:report_p7m", args=[report.pk]))
    assert p7m.status_code == 200
    assert p7m["Content-Type"] == "application/pkcs7-signature"
    assert p7m["Content-Disposition"] == f'attachment; filename="referto-{reporting.study.accession_number}-v1.p7m"'
    assert p7m.content == reports.report_file(report=report, which="p7m")

    study_page = client.get(reverse("reporting:study", args=[reporting.study.pk])).content.decode()
    assert "Versioni firmate" in study_page and "Rettifica" in study_page and "Integrazione" in study_page
    assert 'name="findings"' not in study_page  # no edit form for a signed report
    assert ("report.download", "success") in actions(reporting.radiologist)
    assert ("report.view", "success") in actions(reporting.radiologist)


def test_signed_report_cannot_be_changed_through_the_page(reporting: Reporting) -> None:  # noqa: F811
    report = signed_report(reporting)
    before = Report.objects.filter(pk=report.pk).values().get()
    client = client_for(reporting.radiologist)

    response = save(client, report, findings="Testo cambiato dopo la firma.")
    assert response.status_code == 409
    assert "è firmato e non si può modificare" in response.content.decode()
    response = client.post(
        reverse("reporting:report_sign", args=[report.pk]),
        {"revision": report.revision, "password": RADIOLOGIST_PASSWORD},
    )
    assert response.status_code == 409
    response = client.post(reverse("reporting:report_discard", args=[report.pk]))
    assert response.status_code == 409
    response = client.post(reverse("reporting:report_start", args=[reporting.study.pk]))
    assert response.status_code == 409
    assert Report.objects.filter(pk=report.pk).values().get() == before
    assert Report.objects.count() == 1
    assert ("report.save", "denied") in actions(reporting.radiologist)


def test_amend_a_signed_report(reporting: Reporting) -> None:  # noqa: F811
    report = signed_report(reporting)
    client = client_for(reporting.colleague)
    response = client.post(reverse("reporting:report_amend", args=[report.pk]), {"kind": "correction"})
    assert response.status_code == 302
    draft = reports.report_draft(study=reporting.study)
    assert draft is not None and draft.previous_id == report.pk and draft.kind == "correction"
    assert draft.findings == FINDINGS and draft.author_id == reporting.colleague.pk
    page = client.get(reverse("reporting:study", args=[reporting.study.pk])).content.decode()
    assert 'name="findings"' in page and "Modifica il referto firmato versione 1" in page


def test_discard_a_draft(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    assert client.post(reverse("reporting:report_discard", args=[draft.pk])).status_code == 302
    assert not Report.objects.exists()


@pytest.mark.parametrize("name", ["report_pdf", "report_p7m"])
def test_a_draft_has_no_files(reporting: Reporting, name: str) -> None:  # noqa: F811
    client = client_for(reporting.radiologist)
    draft = start(client, reporting.study)
    assert client.get(reverse(f"reporting:{name}", args=[draft.pk])).status_code == 404


def test_every_view_and_action_is_audited(reporting: Reporting) -> None:  # noqa: F811
    client = client_for(reporting.radiologist)
    client.get(reverse("reporting:worklist"))
    client.get(reverse("reporting:study", args=[reporting.study.pk]))
    report = signed_report(reporting)
    client.get(reverse("reporting:report_detail", args=[report.pk]))
    client.get(reverse("reporting:report_pdf", args=[report.pk]))
    logged = {a for a, _o in actions(reporting.radiologist)}
    assert {
        "report.worklist",
        "study.view",
        "report.start",
        "report.save",
        "report.sign",
        "report.view",
        "report.download",
    } <= logged
    events = AuditEvent.objects.filter(user=reporting.radiologist, action="study.view")
    assert all(e.study_id == reporting.study.pk and e.patient_id == reporting.study.patient_id for e in events)


def test_the_file_name_of_a_download_cannot_be_injected_by_the_accession_number(reporting: Reporting) -> None:  # noqa: F811
    """The AccessionNumber comes from the modality: it once went into the header as it was,
    so that ``"; filename=e.sh`` added a second file name."""
    Study.objects.filter(pk=reporting.study.pk).update(accession_number=INJECTED_ACCESSION)
    report = signed_report(reporting)
    client = client_for(reporting.radiologist)
    p7m = client.get(reverse("reporting:report_p7m", args=[report.pk]))
    assert p7m.status_code == 200
    assert disposition_filenames(p7m["Content-Disposition"]) == (
        "attachment",
        ["filename"],
        "referto-_ filename=e.sh-v1.p7m",
    )
    Study.objects.filter(pk=reporting.study.pk).update(accession_number=NON_ASCII_ACCESSION)
    pdf = client.get(reverse("reporting:report_pdf", args=[report.pk]))
    assert pdf["Content-Disposition"] == "inline; filename*=utf-8''referto-ACC-Perch%C3%A9-%C3%80%C3%89-v1.pdf"
