"""The signed PDF is a PDF/A-3b with its CDA attached, and the detached CAdES still verifies it.

The checks are the veraPDF-like ones that run here with pikepdf: the file's
structure (qpdf's own check), the XMP's pdfaid part 3 / conformance B
agreeing with the document information, the sRGB output intent, every font
embedded, no encryption or JavaScript, the attachment as an associated file
(``/AF``) with its relationship and MIME type, and its bytes those stored as
the report's CDA; then ``openssl cms -verify`` on the stored files.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import pikepdf
import pytest

from archive.models import Report, StaffProfile
from archive.reporting import services as reports
from archive.reporting.cda import cda_problems
from archive.reporting.pdfa import pdf_attachment
from tests.reporting_helpers import (  # noqa: F401
    RADIOLOGIST_PASSWORD,
    Reporting,
    reporting,
    signed_report,
    written_draft,
)

SIGNER_CF = "CSSSFN70A01L424X"


def pdfa_problems(data: bytes) -> list[str]:
    """What keeps ``data`` from being a PDF/A-3b with one CDA attached ([] when nothing)."""
    problems: list[str] = []
    with pikepdf.open(io.BytesIO(data)) as pdf:
        problems += [f"structure: {p}" for p in pdf.check_pdf_syntax()]
        if pdf.is_encrypted:
            problems.append("encrypted")
        if "/ID" not in pdf.trailer:
            problems.append("no trailer /ID")
        meta = pdf.open_metadata()
        if meta.get("pdfaid:part") != "3" or meta.get("pdfaid:conformance") != "B":
            problems.append(f"XMP pdfaid {meta.get('pdfaid:part')}/{meta.get('pdfaid:conformance')}")
        if str(pdf.docinfo.get("/Title", "")) != meta.get("dc:title", ""):
            problems.append("XMP dc:title differs from the document information")
        if "/Filter" in pdf.Root.Metadata:  # ISO 19005-3, 6.6.2.1
            problems.append("the XMP metadata stream is filtered")
        intents = pdf.Root.get("/OutputIntents", [])
        if not any(i.get("/S") == "/GTS_PDFA1" and "/DestOutputProfile" in i for i in intents):
            problems.append("no PDF/A output intent with an ICC profile")
        for name in ("/OpenAction", "/AA", "/JavaScript"):
            if name in pdf.Root:
                problems.append(f"catalog has {name}")
        if "/JavaScript" in pdf.Root.get("/Names", {}):
            problems.append("JavaScript name tree")
        for number, page in enumerate(pdf.pages, 1):
            for font_name, font in page.Resources.get("/Font", {}).items():
                fonts = [font] + list(font.get("/DescendantFonts", []))
                embedded = any(
                    "/FontDescriptor" in f
                    and any(k in f.FontDescriptor for k in ("/FontFile", "/FontFile2", "/FontFile3"))
                    for f in fonts
                )
                if not embedded:
                    problems.append(f"page {number}: font {font_name} ({font.get('/BaseFont')}) not embedded")
            # The output intent is RGB: a CMYK colour would need a CMYK one (ISO 19005-3, 6.2.4.3).
            operators = {str(op) for _operands, op in pikepdf.parse_content_stream(page)}
            if operators & {"k", "K"}:
                problems.append(f"page {number}: DeviceCMYK colour with an RGB output intent")
            if "/Annots" in page:
                problems.append(f"page {number}: annotations")
        af = pdf.Root.get("/AF", [])
        if len(af) != 1:
            problems.append(f"{len(af)} associated files")
        for spec in af:
            if spec.get("/AFRelationship") not in ("/Source", "/Data", "/Alternative", "/Supplement"):
                problems.append(f"AFRelationship {spec.get('/AFRelationship')}")
            if "/F" not in spec or "/UF" not in spec:
                problems.append("file specification without /F and /UF")
            stream = spec.EF.F
            if stream.get("/Subtype") != "/text#2Fxml" and str(stream.get("/Subtype")) != "/text/xml":
                problems.append(f"MIME {stream.get('/Subtype')}")
            if "/ModDate" not in stream.get("/Params", {}):
                problems.append("embedded file without /Params /ModDate")
        if list(pdf.attachments) != ["cda.xml"]:
            problems.append(f"attachments {list(pdf.attachments)}")
    return problems


def stored(report: Report, which: str) -> bytes:
    return reports.report_file(report=report, which=which)


def openssl_verifies(tmp_path: Path, pdf: bytes, p7m: bytes) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "referto.pdf").write_bytes(pdf)
    (tmp_path / "referto.p7m").write_bytes(p7m)
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-noverify",
            "-in",
            str(tmp_path / "referto.p7m"),
            "-content",
            str(tmp_path / "referto.pdf"),
            "-out",
            "/dev/null",
        ],
        capture_output=True,
        check=False,
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_signing_makes_a_pdfa3_with_the_cda_and_the_cades_verifies_it(
    reporting: Reporting,  # noqa: F811
    tmp_path: Path,
) -> None:
    StaffProfile.objects.filter(user=reporting.radiologist).update(codice_fiscale=SIGNER_CF)
    signed = signed_report(reporting)

    pdf, p7m, cda = stored(signed, "pdf"), stored(signed, "p7m"), stored(signed, "cda")
    assert pdfa_problems(pdf) == []
    assert pdf_attachment(pdf) == cda
    assert hashlib.sha256(cda).hexdigest() == signed.cda_sha256
    assert signed.cda_path.endswith(".xml") and signed.pdf_size == len(pdf)
    assert cda_problems(cda) == []
    assert b"CSSSFN70A01L424X" in cda and b"Quadro TC nei limiti della norma." in cda
    assert reports.report_verify(report=signed).ok
    done = openssl_verifies(tmp_path, pdf, p7m)
    assert done.returncode == 0, done.stderr
    assert b"Verification successful" in done.stderr
    # One byte changed in the PDF/A and the signature no longer verifies it.
    tampered = pdf.replace(b"cda.xml", b"cdb.xml", 1)
    assert tampered != pdf
    assert openssl_verifies(tmp_path, tampered, p7m).returncode != 0


def test_a_correction_and_an_addendum_are_signed_with_their_own_cda(reporting: Reporting) -> None:  # noqa: F811
    StaffProfile.objects.filter(user=reporting.radiologist).update(codice_fiscale=SIGNER_CF)
    first = signed_report(reporting)
    versions = [first]
    for kind in (Report.Kind.CORRECTION, Report.Kind.ADDENDUM):
        draft = reports.report_amend(report=versions[-1], user=reporting.radiologist, kind=kind)
        draft = reports.report_save(
            report=draft,
            user=reporting.radiologist,
            revision=draft.revision,
            clinical_question=draft.clinical_question,
            technique=draft.technique,
            findings=draft.findings or "Integrazione: rivalutate le immagini.",
            conclusion="Conclusione della versione " + kind,
        )
        versions.append(
            reports.report_sign(
                report=draft, user=reporting.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision
            )
        )
    kinds = []
    for version in versions:
        cda = stored(version, "cda")
        assert cda_problems(cda) == []
        assert pdf_attachment(stored(version, "pdf")) == cda
        assert pdfa_problems(stored(version, "pdf")) == []
        kinds.append("RPLC" if b'typeCode="RPLC"' in cda else "APND" if b'typeCode="APND"' in cda else "")
    assert kinds == ["", "RPLC", "APND"]


def test_without_the_signers_codice_fiscale_the_report_is_signed_and_its_cda_says_what_it_lacks(
    reporting: Reporting,  # noqa: F811
) -> None:
    signed = signed_report(reporting)  # the demo certificate has no TINIT- serial, the profile no codice fiscale
    problems = {p.rule for p in cda_problems(stored(signed, "cda"))}
    assert {"ERRORE-19", "ERRORE-31"} <= problems


def test_report_file_refuses_a_damaged_cda_and_an_unknown_file(reporting: Reporting) -> None:  # noqa: F811
    from archive.storage import tiers

    signed = signed_report(reporting)
    path = tiers.absolute_path(signed.tier, signed.cda_path)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(reports.ReportError) as damaged:
        stored(signed, "cda")
    assert damaged.value.code == "damaged"
    with pytest.raises(reports.ReportError) as unknown:
        stored(signed, "docx")
    assert unknown.value.code == "invalid"


def test_a_pdfa_that_cannot_be_made_signs_and_stores_nothing(
    reporting: Reporting,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from archive.reporting import pdfa

    draft = written_draft(reporting)

    def broken(pdf: bytes, **kwargs: object) -> bytes:
        raise ValueError("a PDF/A cannot be encrypted")

    monkeypatch.setattr(pdfa, "pdfa3_attach", broken)
    with pytest.raises(reports.ReportError) as refused:
        reports.report_sign(
            report=draft, user=reporting.radiologist, password=RADIOLOGIST_PASSWORD, revision=draft.revision
        )
    assert refused.value.code == "signing" and "PDF/A" in str(refused.value)
    draft.refresh_from_db()
    assert draft.status == Report.Status.DRAFT and draft.cda_path == "" and draft.pdf_path == ""


def test_bad_input_to_the_pdfa_helpers() -> None:
    from archive.reporting.pdfa import PdfError, pdfa3_attach

    with pytest.raises(PdfError):
        pdfa3_attach(b"not a pdf", xml=b"<x/>")
    assert pdf_attachment(b"not a pdf") is None


def test_the_pdfa_declares_pdf_1_7(reporting: Reporting) -> None:  # noqa: F811
    pdf = stored(signed_report(reporting), "pdf")
    assert pdf.startswith(b"%PDF-1.7\n%")
    assert all(b > 127 for b in pdf.split(b"\n")[1][1:5])  # the binary comment PDF/A asks for
