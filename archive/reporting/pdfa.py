"""The signed report's PDF as a PDF/A-3b carrying its CDA: what the FSE 2.0 gateway receives.

The gateway takes the structured report inside the human-readable one: a
PDF/A-3 (ISO 19005-3) whose embedded file is the CDA R2 XML, declared as an
*associated file* of the document (the catalog's ``/AF``, the file
specification's ``/AFRelationship``). :func:`pdfa3_attach` turns the PDF that
``archive.reporting.pdf`` drew (its fonts already embedded: the TrueType
fonts shipped inside reportlab) into that: the attachment with its MIME type
and dates, an sRGB output intent (the ICC profile Pillow's LittleCMS makes),
the XMP metadata that says ``pdfaid:part=3``, ``pdfaid:conformance=B`` and
matches the document information dictionary; no encryption, no JavaScript.
:func:`pdf_attachment` reads the CDA back out.

A leaf: pikepdf and Pillow only, no ORM.
"""

from __future__ import annotations

import datetime as dt
import io
from functools import cache

import pikepdf
from pikepdf import Array, Dictionary, Name, Pdf, PdfError, Stream
from pikepdf.models.metadata import encode_pdf_date

CDA_FILENAME = "cda.xml"
CDA_MIME = "text/xml"
# The CDA is the structured source the readable PDF renders (ISO 32000-2, 7.11.3).
AF_RELATIONSHIP = "Source"
__all__ = ["PdfError", "pdf_attachment", "pdfa3_attach", "srgb_icc"]
SRGB_IDENTIFIER = "sRGB IEC61966-2.1"


@cache
def srgb_icc() -> bytes:
    """An sRGB ICC profile, made by LittleCMS through Pillow (no file to ship)."""
    from PIL import ImageCms

    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def pdfa3_attach(
    pdf: bytes,
    *,
    xml: bytes,
    filename: str = CDA_FILENAME,
    description: str = "Referto in formato HL7 CDA R2",
    relationship: str = AF_RELATIONSHIP,
    when: dt.datetime | None = None,
) -> bytes:
    """``pdf`` made a PDF/A-3b with ``xml`` attached as its associated file.

    ``when`` dates the attachment (the signing time, so that the same report
    gives the same attachment). Raises ``pikepdf.PdfError`` on a PDF it
    cannot read, and ValueError on an encrypted one.
    """
    with Pdf.open(io.BytesIO(pdf)) as doc:
        if doc.is_encrypted:
            raise ValueError("a PDF/A cannot be encrypted")
        stamp = encode_pdf_date(when or dt.datetime.now(dt.UTC))
        spec = pikepdf.AttachedFileSpec(
            doc,
            xml,
            description=description,
            filename=filename,
            mime_type=CDA_MIME,
            creation_date=stamp,
            mod_date=stamp,
        )
        spec.obj.AFRelationship = Name("/" + relationship)
        doc.attachments[filename] = spec
        doc.Root.AF = Array([spec.obj])
        for key in ("/OpenAction", "/AA", "/JavaScript"):
            if key in doc.Root:
                del doc.Root[key]
        profile = Stream(doc, srgb_icc())
        profile.N = 3
        doc.Root.OutputIntents = Array(
            [
                Dictionary(
                    Type=Name.OutputIntent,
                    S=Name.GTS_PDFA1,
                    OutputConditionIdentifier=SRGB_IDENTIFIER,
                    Info=SRGB_IDENTIFIER,
                    RegistryName="http://www.color.org",
                    DestOutputProfile=profile,
                )
            ]
        )
        if "/Trapped" in doc.docinfo:  # reportlab's; XMP has no equivalent to keep them alike
            del doc.docinfo["/Trapped"]
        with doc.open_metadata(set_pikepdf_as_editor=False) as meta:
            meta.load_from_docinfo(doc.docinfo)
            meta["pdfaid:part"] = "3"
            meta["pdfaid:conformance"] = "B"
        out = io.BytesIO()
        doc.save(out, fix_metadata_version=True, min_version="1.7")  # PDF/A-3 rests on ISO 32000-1 (PDF 1.7)
        return out.getvalue()


def pdf_attachment(pdf: bytes, filename: str = CDA_FILENAME) -> bytes | None:
    """The file ``filename`` attached to ``pdf`` (the CDA), or None when it has none."""
    try:
        with Pdf.open(io.BytesIO(pdf)) as doc:
            spec = doc.attachments.get(filename)
            if spec is None:
                return None
            return bytes(spec.get_file().read_bytes())
    except pikepdf.PdfError:
        return None
