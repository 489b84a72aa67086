"""The exposure in the report (D.Lgs 101/2020, art. 161, c. 5) and the patients' dose register.

Real studies ingested into the archive: a CT with a Radiation Dose SR built
from scratch (tests/dose_helpers.py), CT images with CTDIvol and no RDSR, DX
images with their DAP, an NM image with its radiopharmaceutical, an MR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.test import Client, TestCase
from django.urls import reverse
from lxml import etree
from pydicom.uid import generate_uid

from archive.ingest import instance_ingest
from archive.models import DoseRecord, HealthAuthority, Report, StaffProfile, Study
from archive.reporting import dose, signing
from archive.reporting import services as reports
from archive.reporting.cda import cda_problems
from archive.reporting.pdfa import pdf_attachment
from archive.sample_data import PatientInfo
from archive.signals import report_signed
from kernel.models import AuditEvent
from tests import dose_helpers
from tests.conftest import Region
from tests.pdf_text import pdf_text
from tests.reporting_helpers import PATIENT_CF, RADIOLOGIST_PASSWORD, make_radiologist

SIGNER_CF = "CSSSFN70A01L424X"  # the radiologist's codice fiscale, as in test_report_cda
PATIENT = PatientInfo(patient_id=PATIENT_CF, name="ROSSI^MARIO", birth_date="19560312", sex="M")


def ingest(paths: list[Path], region: Region) -> Study:
    for path in paths:
        result = instance_ingest(path=path, facility=region.facility, owned=False, calling_ae="CT01")
        assert result.outcome != "conflict"
    return Study.objects.order_by("-pk").first()  # type: ignore[return-value]


@pytest.fixture
def radiologist(region: Region) -> Any:
    user = make_radiologist("radiologo", "Stefano", "Cossutta", region.authority)
    # The signer's codice fiscale: the CDA names the legal authenticator by it (ERRORE-31).
    StaffProfile.objects.filter(user=user).update(codice_fiscale=SIGNER_CF)
    signing.demo_pki_create(users=[user])
    return user


@pytest.fixture
def ct_rdsr_study(region: Region, tmp_path: Path) -> Study:
    # The images say 99 mGy: the RDSR must win over them.
    return ingest(
        dose_helpers.write_ct_study_with_rdsr(
            tmp_path / "ct", patient=PATIENT, accession_number="TSC260000101", ctdivol_in_images=99.0
        ),
        region,
    )


def write(draft: Report, user: Any, **exposure: Any) -> Report:
    return reports.report_save(
        report=draft,
        user=user,
        revision=draft.revision,
        clinical_question=draft.clinical_question,
        technique="TC torace-addome senza mezzo di contrasto.",
        findings="Non lesioni focali.",
        conclusion="Nella norma.",
        **exposure,
    )


def sign(draft: Report, user: Any) -> Report:
    with TestCase.captureOnCommitCallbacks(execute=True):
        return reports.report_sign(report=draft, user=user, password=RADIOLOGIST_PASSWORD, revision=draft.revision)


def test_a_ct_with_its_rdsr_gives_ctdivol_and_dlp_in_the_proposal_the_report_the_pdf_and_the_register(
    ct_rdsr_study: Study, radiologist: Any
) -> None:
    study = ct_rdsr_study
    assert "SR" in study.modality_list() and "CT" in study.modality_list()

    draft = reports.report_draft_start(study=study, user=radiologist)

    data = draft.exposure_data
    assert data["source"] == "rdsr" and data["modality"] == "CT" and data["confirmed"] is False
    assert data["ct"]["ctdivol_max_mgy"] == pytest.approx(8.2)
    assert data["ct"]["dlp_total_mgycm"] == pytest.approx(412.5)
    assert [(e["label"], e["ctdivol_mgy"], e["dlp_mgycm"]) for e in data["ct"]["events"]] == [
        ("Torace", 8.2, 206.3),
        ("Addome", 7.5, 206.2),
    ]
    rdsr = study.series.get(modality="SR").instances.get()
    assert data["rdsr_sop_instance_uid"] == rdsr.sop_instance_uid
    assert "DLP totale 412,5 mGy·cm (2 acquisizioni)" in draft.exposure
    assert "CTDIvol massimo 8,2 mGy" in draft.exposure
    assert "Fonte: Radiation Dose SR della modalità." in draft.exposure

    # Not confirmed: refused, nothing signed.
    draft = write(draft, radiologist)
    with pytest.raises(reports.ReportError) as refused:
        sign(draft, radiologist)
    assert refused.value.code == "exposure"
    assert "esposizione" in refused.value.message
    assert Report.objects.get(pk=draft.pk).status == Report.Status.DRAFT
    assert not DoseRecord.objects.exists()

    # The radiologist adds a word and confirms.
    text = draft.exposure + "\nNessuna ripetizione."
    draft = write(draft, radiologist, exposure=text, exposure_confirmed=True)
    signed = sign(draft, radiologist)

    assert signed.exposure == text
    assert signed.exposure_data["confirmed"] is True
    assert signed.exposure_data["ct"]["dlp_total_mgycm"] == pytest.approx(412.5)
    printed = pdf_text(reports.report_file(report=signed, which="pdf"))
    assert "Informazioni sull'esposizione" in printed
    assert "DLP totale 412,5 mGy·cm" in printed and "Nessuna ripetizione." in printed

    # The CDA (stored, and attached to the PDF/A-3 the signature covers) carries the same
    # totals as coded observations in the exposure section, and passes every encoded rule.
    cda_xml = reports.report_file(report=signed, which="cda")
    assert pdf_attachment(reports.report_file(report=signed, which="pdf")) == cda_xml
    assert cda_problems(cda_xml) == []
    exposure = etree.fromstring(cda_xml).xpath(
        "//v3:section[v3:code/@code='73569-6']", namespaces={"v3": "urn:hl7-org:v3"}
    )
    assert len(exposure) == 1
    coded = {
        obs.xpath("string(v3:code/@code)", namespaces={"v3": "urn:hl7-org:v3"}): (
            float(obs.xpath("string(v3:value/@value)", namespaces={"v3": "urn:hl7-org:v3"})),
            obs.xpath("string(v3:value/@unit)", namespaces={"v3": "urn:hl7-org:v3"}),
        )
        for obs in exposure[0].xpath(".//v3:observation", namespaces={"v3": "urn:hl7-org:v3"})
    }
    assert coded["113830"] == (pytest.approx(8.2), "mGy")
    assert coded["113813"] == (pytest.approx(412.5), "mGy.cm")
    assert "DLP totale 412,5 mGy·cm" in "".join(exposure[0].itertext())

    register = {r.quantity: r for r in DoseRecord.objects.filter(study=study)}
    assert set(register) == {"ctdivol_max", "dlp_total"}
    assert register["dlp_total"].value == pytest.approx(412.5) and register["dlp_total"].unit == "mGy·cm"
    assert register["ctdivol_max"].value == pytest.approx(8.2) and register["ctdivol_max"].unit == "mGy"
    row = register["dlp_total"]
    assert (row.patient_id, row.report_id, row.modality, row.source) == (study.patient_id, signed.pk, "CT", "rdsr")
    assert row.performed_on == study.performed_on()


def test_a_correction_carries_the_exposure_and_the_register_follows_it_once(
    ct_rdsr_study: Study, radiologist: Any
) -> None:
    draft = reports.report_draft_start(study=ct_rdsr_study, user=radiologist)
    v1 = sign(write(draft, radiologist, exposure=draft.exposure, exposure_confirmed=True), radiologist)

    v2 = reports.report_amend(report=v1, user=radiologist, kind=Report.Kind.CORRECTION)
    assert (v2.exposure, v2.exposure_data) == (v1.exposure, v1.exposure_data)
    corrected = (
        "TC: CTDIvol 8,2 mGy; DLP totale 400,0 mGy·cm (2 acquisizioni). Fonte: Radiation Dose SR della modalità."
    )
    data = {**v1.exposure_data, "ct": {**v1.exposure_data["ct"], "dlp_total_mgycm": 400.0}}
    v2 = write(v2, radiologist, exposure=corrected, exposure_confirmed=True, exposure_data=data)
    v2 = sign(v2, radiologist)

    # Delivered twice: still one row per quantity, the latest version's.
    report_signed.send(sender=Report, report_pk=v2.pk, study_pk=ct_rdsr_study.pk)
    rows = DoseRecord.objects.filter(study=ct_rdsr_study)
    assert rows.count() == 2
    assert rows.get(quantity="dlp_total").value == pytest.approx(400.0)
    assert {r.report_id for r in rows} == {v2.pk}


def test_without_rdsr_the_ct_images_ctdivol_is_proposed(region: Region, tmp_path: Path, radiologist: Any) -> None:
    study = ingest(dose_helpers.write_ct_study_without_rdsr(tmp_path / "ct", patient=PATIENT, ctdivol=12.5), region)

    draft = reports.report_draft_start(study=study, user=radiologist)

    assert draft.exposure_data["source"] == "images"
    assert draft.exposure_data["ct"]["ctdivol_max_mgy"] == pytest.approx(12.5)
    assert "dlp_total_mgycm" not in draft.exposure_data["ct"]
    assert "CTDIvol massimo 12,5 mGy" in draft.exposure
    assert "attributi di dose delle immagini" in draft.exposure


def test_without_rdsr_the_dx_images_dap_is_summed_in_gy_cm2(region: Region, tmp_path: Path, radiologist: Any) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [
        dose_helpers.save(
            dose_helpers.dx_image(
                patient=PATIENT,
                study_uid=study_uid,
                series_uid=series_uid,
                dap_dgycm2=dap,
                entrance_mgy=0.4,
                number=n,
            ),
            tmp_path / "dx",
        )
        for n, dap in ((1, 1.5), (2, 2.5))
    ]
    study = ingest(paths, region)

    draft = reports.report_draft_start(study=study, user=radiologist)

    # 1.5 + 2.5 dGy·cm² = 0.4 Gy·cm²; entrance 0.4 + 0.4 mGy.
    assert draft.exposure_data["source"] == "images" and draft.exposure_data["modality"] == "DX"
    assert draft.exposure_data["projection"]["dap_total_gycm2"] == pytest.approx(0.4)
    assert draft.exposure_data["projection"]["entrance_dose_mgy"] == pytest.approx(0.8)
    assert "Radiografia: prodotto dose-area (DAP) 0,4 Gy·cm²; dose in ingresso 0,8 mGy." in draft.exposure


def test_an_nm_image_gives_the_administered_activity(region: Region, tmp_path: Path, radiologist: Any) -> None:
    ds = dose_helpers.nm_image(patient=PATIENT, study_uid=generate_uid(), activity_mbq=740.0, agent="Tc99m MDP")
    study = ingest([dose_helpers.save(ds, tmp_path / "nm")], region)

    draft = reports.report_draft_start(study=study, user=radiologist)

    assert draft.exposure_data["nm"] == {"activity_mbq": 740.0, "radiopharmaceutical": "Tc99m MDP"}
    assert "Medicina nucleare: attività somministrata 740 MBq di Tc99m MDP." in draft.exposure
    signed = sign(write(draft, radiologist, exposure=draft.exposure, exposure_confirmed=True), radiologist)
    row = DoseRecord.objects.get(study=study)
    assert (row.quantity, row.value, row.unit, row.detail, row.report_id) == (
        "activity",
        740.0,
        "MBq",
        "Tc99m MDP",
        signed.pk,
    )


def test_rdsr_units_are_converted_projection_gy_m2_and_nm_activity() -> None:
    projection = dose.rdsr_figures(
        dose_helpers.projection_rdsr(patient=PATIENT, study_uid=generate_uid(), dap_gym2=0.000123, dose_rp_gy=0.0008)
    )
    assert projection["projection"] == {"dap_total_gycm2": pytest.approx(1.23), "entrance_dose_mgy": pytest.approx(0.8)}
    nm = dose.rdsr_figures(
        dose_helpers.nm_rdsr(
            patient=PATIENT, study_uid=generate_uid(), activity_mbq=350.0, agent="Fluorodeoxyglucose F^18^"
        )
    )
    assert nm["nm"] == {"activity_mbq": 350.0, "radiopharmaceutical": "Fluorodeoxyglucose F^18^"}
    text = dose.exposure_text({"source": "rdsr", "modality": "PT", **nm})
    assert text.startswith("PET: attività somministrata 350 MBq di Fluorodeoxyglucose F18.")
    with pytest.raises(dose.DoseError):
        dose.rdsr_figures(dose_helpers.nm_image(patient=PATIENT, study_uid=generate_uid(), activity_mbq=1.0))


def test_nothing_found_means_written_by_hand_and_confirmed(region: Region, tmp_path: Path, radiologist: Any) -> None:
    # A CT whose images carry no dose attribute and no RDSR.
    study = ingest(dose_helpers.write_study(tmp_path / "ct", patient=PATIENT, series=1, instances_per_series=1), region)
    draft = reports.report_draft_start(study=study, user=radiologist)
    assert draft.exposure_data == {"source": "manual", "modality": "CT", "confirmed": False}
    assert draft.exposure == ""

    # A confirmation without a text does not count.
    draft = write(draft, radiologist, exposure="", exposure_confirmed=True)
    assert draft.exposure_data["confirmed"] is False
    with pytest.raises(reports.ReportError) as refused:
        sign(draft, radiologist)
    assert refused.value.code == "exposure"

    draft = write(draft, radiologist, exposure="TC: DLP totale 310 mGy·cm (dal monitor).", exposure_confirmed=True)
    signed = sign(draft, radiologist)
    assert signed.exposure_data["source"] == "manual" and signed.exposure_data["confirmed"] is True
    assert not DoseRecord.objects.filter(study=study).exists()  # no figure to register


def test_a_non_ionising_study_needs_no_exposure(region: Region, tmp_path: Path, radiologist: Any) -> None:
    study = ingest(dose_helpers.mr_study(tmp_path / "mr", patient=PATIENT), region)
    assert not dose.study_is_ionising(study=study)

    draft = reports.report_draft_start(study=study, user=radiologist)
    assert (draft.exposure, draft.exposure_data) == ("", {})
    signed = sign(write(draft, radiologist), radiologist)

    assert signed.is_signed and signed.exposure == ""
    assert "esposizione" not in pdf_text(reports.report_file(report=signed, which="pdf"))
    assert not DoseRecord.objects.exists()


# --- the editor page ------------------------------------------------------------------


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_editor_proposes_the_exposure_and_signing_without_the_check_is_refused(
    ct_rdsr_study: Study, radiologist: Any
) -> None:
    client = _client(radiologist)
    client.post(reverse("reporting:report_start", args=[ct_rdsr_study.pk]))
    draft = reports.report_draft(study=ct_rdsr_study)
    assert draft is not None

    page = client.get(reverse("reporting:study", args=[ct_rdsr_study.pk])).content.decode()
    assert "<legend>Informazioni sull'esposizione</legend>" in page
    assert "DLP totale 412,5 mGy·cm" in page
    assert 'name="exposure_confirmed"' in page

    form = {
        "revision": draft.revision,
        "clinical_question": "Dolore.",
        "technique": "TC.",
        "findings": "Nulla.",
        "conclusion": "Nella norma.",
        "exposure": draft.exposure,
        "azione": "salva",
    }
    assert client.post(reverse("reporting:report_save", args=[draft.pk]), form).status_code == 302
    draft.refresh_from_db()
    refused = client.post(
        reverse("reporting:report_sign", args=[draft.pk]),
        {"revision": draft.revision, "password": RADIOLOGIST_PASSWORD},
    )
    assert refused.status_code == 400
    assert "Manca la conferma delle informazioni sull&#x27;esposizione" in refused.content.decode()
    assert Report.objects.get(pk=draft.pk).status == Report.Status.DRAFT

    saved = client.post(
        reverse("reporting:report_save", args=[draft.pk]),
        {**form, "revision": draft.revision, "exposure_confirmed": "on"},
    )
    assert saved.status_code == 302
    draft.refresh_from_db()
    assert draft.exposure_data["confirmed"] is True
    done = client.post(
        reverse("reporting:report_sign", args=[draft.pk]),
        {"revision": draft.revision, "password": RADIOLOGIST_PASSWORD},
    )
    assert done.status_code == 302
    assert Report.objects.get(pk=draft.pk).is_signed


def test_the_editor_of_an_mr_has_no_exposure_section(region: Region, tmp_path: Path, radiologist: Any) -> None:
    study = ingest(dose_helpers.mr_study(tmp_path / "mr", patient=PATIENT), region)
    client = _client(radiologist)
    client.post(reverse("reporting:report_start", args=[study.pk]))
    page = client.get(reverse("reporting:study", args=[study.pk])).content.decode()
    assert 'name="findings"' in page and 'name="exposure"' not in page


# --- the register in the admin -----------------------------------------------------------


def _register_reader(username: str, authority: HealthAuthority) -> Any:
    user = get_user_model().objects.create_user(username=username, password="x-password-12345", is_staff=True)
    # The register's readers see studies (the access policy asks for it) and the register.
    for codename in ("view_study", "view_patient", "view_doserecord"):
        user.user_permissions.add(Permission.objects.get(content_type__app_label="archive", codename=codename))
    StaffProfile.objects.create(user=user, authority=authority)
    return get_user_model().objects.get(pk=user.pk)


def test_the_register_in_the_admin_is_read_only_audited_and_limited_to_the_authority(
    ct_rdsr_study: Study, radiologist: Any, region: Region
) -> None:
    cache.clear()
    draft = reports.report_draft_start(study=ct_rdsr_study, user=radiologist)
    sign(write(draft, radiologist, exposure=draft.exposure, exposure_confirmed=True), radiologist)
    url = reverse("admin:archive_doserecord_changelist")

    own = _client(_register_reader("fisico", region.authority))
    page = own.get(url, {"q": PATIENT_CF})
    assert page.status_code == 200
    html = page.content.decode()
    assert "Totali per paziente" in html and PATIENT_CF in html
    assert "412,50 mGy·cm" in html or "412.50 mGy·cm" in html
    listed = AuditEvent.objects.filter(action="admin.doserecord.list").last()
    assert listed is not None
    row = DoseRecord.objects.get(study=ct_rdsr_study, quantity="dlp_total")
    detail = own.get(reverse("admin:archive_doserecord_change", args=[row.pk]))
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert own.get(reverse("admin:archive_doserecord_add")).status_code == 403

    other = HealthAuthority.objects.create(code="ASUFC", name="Azienda sanitaria universitaria Friuli Centrale")
    foreign = _client(_register_reader("udinese", other))
    html = foreign.get(url).content.decode()
    assert PATIENT_CF not in html and "Totali per paziente" not in html
    assert foreign.get(reverse("admin:archive_doserecord_change", args=[row.pk])).status_code in (302, 404)


def test_an_rdsr_that_arrives_after_the_draft_is_proposed_again_on_request(
    region: Region, tmp_path: Path, radiologist: Any
) -> None:
    study = ingest(dose_helpers.write_study(tmp_path / "ct", patient=PATIENT, series=1, instances_per_series=1), region)
    client = _client(radiologist)
    client.post(reverse("reporting:report_start", args=[study.pk]))
    draft = reports.report_draft(study=study)
    assert draft is not None and draft.exposure_data["source"] == "manual"
    # The modality sends its RDSR late.
    rdsr = dose_helpers.ct_rdsr(patient=PATIENT, study_uid=study.study_instance_uid)
    ingest([dose_helpers.save(rdsr, tmp_path / "late")], region)

    form = {
        "revision": draft.revision,
        "clinical_question": "",
        "technique": "",
        "findings": "Nulla.",
        "conclusion": "",
        "exposure": "scritto a mano",
        "exposure_confirmed": "on",
        "azione": "dose",
    }
    assert client.post(reverse("reporting:report_save", args=[draft.pk]), form).status_code == 302

    draft.refresh_from_db()
    assert draft.exposure_data["source"] == "rdsr"
    assert draft.exposure_data["rdsr_sop_instance_uid"] == rdsr.SOPInstanceUID
    assert draft.exposure_data["confirmed"] is False  # a new proposal is confirmed again
    assert "DLP totale 412,5 mGy·cm" in draft.exposure and draft.findings == "Nulla."
