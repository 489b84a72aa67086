"""The index of a preservation volume in the structure of UNI 11386:2020 (SInCRO v2).

Root ``PIndex`` (``sincroVersion="2.0"``, namespace
``http://www.uni.com/U3011/sincro-v2/``) with ``SelfDescription`` (the index's
ID, the earlier index it follows, the creating application, more info),
``PVolume`` (ID, source, group, external metadata: each package's manifest
with its path and hash), one ``FileGroup`` per archival package listing every
file (ID, format as MIME type, path, ``Hash hashFunction="SHA-256"``), and
``Process`` (submitter, holder, authorised signer, time reference, laws and
regulations). Paths are relative to the root of the preservation tier (and
of a dissemination package, which keeps the same layout).
"""

from __future__ import annotations

import base64
import datetime as dt
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NS = "http://www.uni.com/U3011/sincro-v2/"
SINCRO_VERSION = "2.0"
HASH_FUNCTION = "SHA-256"
LAWS = [
    "D.Lgs. 7 marzo 2005, n. 82 (Codice dell'amministrazione digitale), artt. 43-44",
    "AgID, Linee guida sulla formazione, gestione e conservazione dei documenti informatici (2020, agg. 2021)",
    "UNI 11386:2020 (SInCRO); ISO 14721 (OAIS)",
    "Circolare del Ministero della Sanità 900.2/2.7/190 del 19 dicembre 1986",
    "DM 14 febbraio 1997",
]


@dataclass(frozen=True)
class IndexFile:
    id: str
    path: str
    format: str
    sha256: str


@dataclass
class IndexGroup:
    label: str
    files: list[IndexFile]
    manifest_path: str = ""
    manifest_sha256: str = ""


@dataclass
class Index:
    id: str
    volume_id: str
    previous_id: str = ""
    previous_path: str = ""
    previous_sha256: str = ""
    created: dt.datetime | None = None
    submitter: str = ""
    holder: str = ""
    signer: str = ""
    groups: list[IndexGroup] = field(default_factory=list)

    def files(self) -> list[IndexFile]:
        return [f for g in self.groups for f in g.files]


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _hash(parent: ET.Element, hex_sha256: str) -> ET.Element:
    # SInCRO carries the digest base64-encoded; sha256sum and the admin show it in hex.
    el = ET.SubElement(parent, _q("Hash"), {"hashFunction": HASH_FUNCTION})
    el.text = base64.b64encode(bytes.fromhex(hex_sha256)).decode("ascii")
    return el


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, _q(tag), attrs)
    el.text = text
    return el


def index_xml(index: Index) -> bytes:
    ET.register_namespace("", NS)
    root = ET.Element(_q("PIndex"), {"sincroVersion": SINCRO_VERSION, "language": "it"})
    sd = ET.SubElement(root, _q("SelfDescription"))
    _text(sd, "ID", index.id, scheme="local")
    if index.previous_id:
        src = ET.SubElement(sd, _q("PIndexSource"))
        _text(src, "ID", index.previous_id, scheme="local")
        _text(src, "Path", index.previous_path)
        _hash(src, index.previous_sha256)
    app = ET.SubElement(sd, _q("CreatingApplication"))
    _text(app, "Name", "PACS regionale FVG")
    _text(app, "Version", "1")
    _text(app, "Producer", index.holder)
    more = ET.SubElement(sd, _q("MoreInfo"))
    emb = ET.SubElement(more, _q("EmbeddedMetadata"))
    _text(emb, "Description", "Indice del volume di conservazione di referti e immagini diagnostiche")
    vol = ET.SubElement(root, _q("PVolume"))
    _text(vol, "ID", index.volume_id, scheme="local")
    vsrc = ET.SubElement(vol, _q("PVolumeSource"))
    _text(vsrc, "ID", index.submitter)
    group = ET.SubElement(vol, _q("PVolumeGroup"))
    _text(group, "ID", "referti-e-immagini")
    vmore = ET.SubElement(vol, _q("MoreInfo"))
    for g in index.groups:
        if g.manifest_path:
            ext = ET.SubElement(vmore, _q("ExternalMetadata"))
            _text(ext, "ID", f"{g.label}-manifesto", scheme="local")
            _text(ext, "Path", g.manifest_path)
            _hash(ext, g.manifest_sha256)
    for g in index.groups:
        fg = ET.SubElement(root, _q("FileGroup"))
        _text(fg, "Label", g.label)
        for f in g.files:
            fe = ET.SubElement(fg, _q("File"), {"format": f.format, "encoding": "binary"})
            _text(fe, "ID", f.id, scheme="local")
            _text(fe, "Path", f.path)
            _hash(fe, f.sha256)
    proc = ET.SubElement(root, _q("Process"))
    for role, kind, name in (
        ("Submitter", "organization", index.submitter),
        ("Holder", "organization", index.holder),
        ("AuthorizedSigner", "person", index.signer),
    ):
        agent = ET.SubElement(proc, _q("Agent"), {"type": kind, "role": role})
        names = ET.SubElement(agent, _q("AgentName"))
        _text(names, "FormalName", name)
    tr = ET.SubElement(proc, _q("TimeReference"))
    _text(tr, "TimeInfo", (index.created or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"))
    tr_attach = ET.SubElement(tr, _q("AttachedTimeStamp"), {"normal": "true"})
    tr_attach.text = "index.xml.tsr"
    lr = ET.SubElement(proc, _q("LawAndRegulations"))
    for law in LAWS:
        _text(lr, "LawAndRegulation", law)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _hex(el: ET.Element | None) -> str:
    if el is None or not el.text:
        return ""
    return base64.b64decode(el.text.strip()).hex()


def index_parse(data: bytes) -> Index:
    """Read an index written by :func:`index_xml` (ValueError when it is not one)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from exc
    if root.tag != _q("PIndex") or root.get("sincroVersion") != SINCRO_VERSION:
        raise ValueError("not a SInCRO v2 PIndex")
    ns = {"s": NS}
    index = Index(
        id=root.findtext("s:SelfDescription/s:ID", "", ns),
        volume_id=root.findtext("s:PVolume/s:ID", "", ns),
        previous_id=root.findtext("s:SelfDescription/s:PIndexSource/s:ID", "", ns),
        previous_path=root.findtext("s:SelfDescription/s:PIndexSource/s:Path", "", ns),
        previous_sha256=_hex(root.find("s:SelfDescription/s:PIndexSource/s:Hash", ns)),
    )
    for fg in root.findall("s:FileGroup", ns):
        files = []
        for fe in fg.findall("s:File", ns):
            h = fe.find("s:Hash", ns)
            if h is None or h.get("hashFunction") != HASH_FUNCTION:
                raise ValueError("a File without a SHA-256 Hash")
            files.append(
                IndexFile(
                    id=fe.findtext("s:ID", "", ns),
                    path=fe.findtext("s:Path", "", ns),
                    format=fe.get("format", ""),
                    sha256=_hex(h),
                )
            )
        index.groups.append(IndexGroup(label=fg.findtext("s:Label", "", ns), files=files))
    return index
