"""The metadata record of each document of a package, after the AgID guidelines
on electronic documents (2020, amended 2021), annex 5 (metadata of the
electronic document): identifier and hash, how it was formed, document type,
registration data, subjects, description, classification, confidentiality,
format, verification, aggregation, retention."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NS = "urn:pacs-fvg:conservazione:metadati-documento:1"
REQUIRED = (
    "IdDoc/Identificativo",
    "IdDoc/ImprontaCrittografica",
    "ModalitaDiFormazione",
    "TipologiaDocumentale",
    "DatiDiRegistrazione/DataRegistrazione",
    "Soggetti/Ruolo",
    "Classificazione/IndiceDiClassificazione",
    "IdentificativoDelFormato/Formato",
    "TempoDiConservazione",
)


@dataclass
class DocumentMetadata:
    identifier: str
    sha256: str
    formation: str  # annex 5: a) software, b) acquired, c) transactions, d) generated
    document_type: str
    registration_date: dt.datetime
    registration_number: str
    subjects: list[tuple[str, str, str]]  # (role, kind, name/identifier)
    description: str
    classification: str
    mime_type: str
    software: str
    signed: bool
    aggregation: str  # the study's UID
    name: str
    version: str
    retention_class: str
    retention_years: int | None
    primary_document: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def metadata_xml(md: DocumentMetadata) -> bytes:
    """The record as XML (UTF-8, no namespace prefix)."""
    root = ET.Element("MetadatiDocumento", {"xmlns": NS, "versione": "1.0"})
    iddoc = _sub(root, "IdDoc")
    _sub(iddoc, "Identificativo", md.identifier)
    _sub(iddoc, "ImprontaCrittografica", md.sha256, algoritmo="SHA-256")
    _sub(root, "ModalitaDiFormazione", md.formation)
    _sub(root, "TipologiaDocumentale", md.document_type)
    reg = _sub(root, "DatiDiRegistrazione")
    _sub(reg, "TipologiaDiFlusso", "Interno")
    _sub(reg, "TipoRegistro", "Repertorio\\Registro")
    _sub(reg, "DataRegistrazione", md.registration_date.isoformat(timespec="seconds"))
    _sub(reg, "NumeroDocumento", md.registration_number)
    subjects = _sub(root, "Soggetti")
    for role, kind, name in md.subjects:
        s = _sub(subjects, "Ruolo", tipo=role)
        _sub(s, "TipoSoggetto", kind)
        _sub(s, "Denominazione", name)
    desc = _sub(root, "ChiaveDescrittiva")
    _sub(desc, "Oggetto", md.description or md.document_type)
    cls = _sub(root, "Classificazione")
    _sub(cls, "IndiceDiClassificazione", md.classification)
    _sub(root, "Riservato", "true")
    fmt = _sub(root, "IdentificativoDelFormato")
    _sub(fmt, "Formato", md.mime_type)
    _sub(fmt, "ProdottoSoftware", md.software)
    ver = _sub(root, "Verifica")
    _sub(ver, "FirmatoDigitalmente", "true" if md.signed else "false")
    _sub(ver, "SigilloElettronico", "false")
    _sub(ver, "MarcaturaTemporale", "false")
    _sub(ver, "ConformitaCopieImmagineSuSupportoInformatico", "false")
    agg = _sub(root, "IdAgg")
    _sub(agg, "TipoAggregazione", "Fascicolo")
    _sub(agg, "IdAggregazione", md.aggregation)
    if md.primary_document:
        _sub(root, "IdentificativoDocumentoPrimario", md.primary_document)
    _sub(root, "NomeDelDocumento", md.name)
    _sub(root, "VersioneDelDocumento", md.version)
    keep = _sub(root, "TempoDiConservazione", "illimitato" if md.retention_years is None else str(md.retention_years))
    keep.set("classe", md.retention_class)
    for key, value in md.extra.items():
        _sub(root, "Note", value, chiave=key)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def metadata_missing(data: bytes) -> list[str]:
    """The required elements a record lacks or leaves empty ([] when complete)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return ["(XML non leggibile)"]
    ns = {"m": NS}
    missing = []
    for path in REQUIRED:
        query = "/".join(f"m:{p}" for p in path.split("/"))
        el = root.find(query, ns)
        if el is None or (not (el.text or "").strip() and len(el) == 0):
            missing.append(path)
    return missing
