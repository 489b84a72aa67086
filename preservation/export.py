"""Dissemination packages (pacchetti di distribuzione, DIP) and their offline check.

A DIP is a zip for a patient, a study or a volume holding, in the layout of
the preservation tier, every archived file of the packages asked for, the
index of each volume they belong to with its CAdES signature and RFC 3161
time stamp, the CA's and the TSA's certificates, a ``PdD.xml`` naming what
was exported, a README that says how to verify it, and ``manifest.sha256``
(``sha256sum -c`` format) over every other file, itself signed by the
preservation officer (``manifest.sha256.p7m``).

:func:`package_verify` (``manage.py verify_package FILE``) checks all of it
offline and names each file that does not verify.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import uuid
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.utils import timezone

from archive import signing, storage
from archive.models import Patient, Study

from . import sincro, timestamp, vault
from .journal import journal_record
from .models import JournalEntry, Package, Volume
from .volumes import signer_user

logger = logging.getLogger(__name__)

MANIFEST = "manifest.sha256"
MANIFEST_SIGNATURE = "manifest.sha256.p7m"
DESCRIPTOR = "PdD.xml"
README = "LEGGIMI.txt"
CA = "certificati/ca.pem"
TSA = "certificati/tsa.pem"
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class ExportError(Exception):
    """A dissemination package cannot be made; ``message`` in Italian."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def packages_for(
    *, patient: Patient | None = None, study: Study | None = None, volume: Volume | None = None
) -> list[Package]:
    qs = Package.objects.filter(status=Package.Status.ARCHIVED)
    if patient is not None:
        qs = qs.filter(study__patient=patient)
    if study is not None:
        qs = qs.filter(study=study)
    if volume is not None:
        qs = qs.filter(volume=volume)
    return list(qs.select_related("volume", "study").order_by("pk"))


def _read_checked(relpath: str, sha256: str) -> bytes:
    data = vault.read_bytes(relpath)
    if data is None:
        raise ExportError(f"Il file {relpath} manca nel livello di conservazione.")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ExportError(f"Il file {relpath} non corrisponde alla sua impronta: segnalarlo al responsabile.")
    return data


def _tsa_certificates(tsr: bytes) -> bytes:
    token = tsp.TimeStampResp.load(tsr)["time_stamp_token"]["content"]
    pems = []
    for choice in token["certificates"] or []:
        cert = x509.load_der_x509_certificate(choice.chosen.dump())
        pems.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(pems)


def _readme(label: str, volumes: list[Volume]) -> str:
    vols = "\n".join(f"  volumes/{v.identifier}/" for v in volumes)
    return f"""PACCHETTO DI DISTRIBUZIONE (PdD) – {label}
Conservazione a norma del PACS regionale. Creato il {timezone.localtime():%d/%m/%Y %H:%M}.

Contenuto
  aip/<pacchetto>/...        i file dei pacchetti di archiviazione (DICOM, referti PDF e firme .p7m, metadati)
{vols}
      index.xml              l'indice del volume (UNI 11386:2020, SInCRO v2)
      index.xml.p7m          la firma CAdES dell'indice (responsabile della conservazione)
      index.xml.tsr          la marca temporale RFC 3161 dell'indice
  {DESCRIPTOR}                  che cosa è stato esportato
  {CA}         il certificato della CA; {TSA}: quello della TSA
  {MANIFEST}            l'impronta SHA-256 di ogni altro file; {MANIFEST_SIGNATURE} la sua firma

Come verificarlo (dopo aver estratto lo zip, nella sua cartella)
  1. Le impronte di tutti i file:
       sha256sum -c {MANIFEST}
  2. La firma del manifesto e quella di ogni indice:
       openssl cms -verify -binary -inform DER -in {MANIFEST_SIGNATURE} -content {MANIFEST} -CAfile {CA} -purpose any -out /dev/null
       openssl cms -verify -binary -inform DER -in volumes/<volume>/index.xml.p7m -content volumes/<volume>/index.xml -CAfile {CA} -purpose any -out /dev/null
  3. La marca temporale di ogni indice:
       openssl ts -verify -data volumes/<volume>/index.xml -in volumes/<volume>/index.xml.tsr -CAfile {CA} -untrusted {TSA}
  4. Ogni file dei pacchetti è elencato con la sua impronta (base64 di SHA-256) nell'indice del suo volume.
  Oppure, tutto insieme, con il PACS:
       python manage.py verify_package <questo file>.zip [--ca <CA di cui si fida>]
  Il certificato della CA nel pacchetto serve alla verifica fuori linea; chi riceve il
  pacchetto confronti la sua impronta con quella pubblicata dal conservatore.
"""


def dip_export(
    *,
    packages: list[Package],
    label: str,
    user: Any = None,
    directory: Path | None = None,
) -> Path:
    """Write the DIP of ``packages`` and return its path (a zip under ``PACS_PRESERVATION_EXPORT_DIR``)."""
    if not packages:
        raise ExportError("Nessun pacchetto archiviato da esportare.")
    not_in_volume = [p.identifier for p in packages if p.volume is None or p.volume.status != Volume.Status.CLOSED]
    if not_in_volume:
        raise ExportError(
            "Pacchetti non ancora in un volume chiuso (si esportano dopo la chiusura): " + ", ".join(not_in_volume)
        )
    volumes = sorted({p.volume for p in packages if p.volume is not None}, key=lambda v: v.pk)
    members: dict[str, bytes] = {}
    for volume in volumes:
        base = f"volumes/{volume.identifier}"
        members[f"{base}/index.xml"] = _read_checked(volume.index_path, volume.index_sha256)
        members[f"{base}/index.xml.p7m"] = _read_checked(volume.signature_path, volume.signature_sha256)
        members[f"{base}/index.xml.tsr"] = _read_checked(volume.timestamp_path, volume.timestamp_sha256)
    tsa_pems = b"".join(_tsa_certificates(members[f"volumes/{v.identifier}/index.xml.tsr"]) for v in volumes)
    descriptor = ET.Element("PacchettoDiDistribuzione", {"xmlns": "urn:pacs-fvg:conservazione:pacchetto:1"})
    descriptor.set("identificativo", f"PdD-{uuid.uuid4()}")
    descriptor.set("oggetto", label)
    descriptor.set("creato", timezone.now().isoformat(timespec="seconds"))
    for package in packages:
        pe = ET.SubElement(
            descriptor,
            "PacchettoDiArchiviazione",
            {"identificativo": package.identifier, "volume": package.volume.identifier},  # type: ignore[union-attr]
        )
        for f in package.files.order_by("name"):
            if f.discarded_at is not None:
                ET.SubElement(pe, "Scartato", {"percorso": f.path, "sha256": f.sha256})
                continue
            members[f.path] = _read_checked(f.path, f.sha256)
            ET.SubElement(pe, "File", {"percorso": f.path, "sha256": f.sha256})
    ET.indent(descriptor)
    members[DESCRIPTOR] = ET.tostring(descriptor, encoding="utf-8", xml_declaration=True)
    members[CA] = signing.ca_certificate_pem()
    members[TSA] = tsa_pems
    members[README] = _readme(label, volumes).encode("utf-8")
    manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(members.items()))
    members[MANIFEST] = manifest.encode("utf-8")
    members[MANIFEST_SIGNATURE] = signing.cades_sign_detached(data=members[MANIFEST], user=signer_user())

    out_dir = Path(directory or settings.PACS_PRESERVATION_EXPORT_DIR)
    storage.makedirs_durable(out_dir)  # 0700; mkstemp makes the zip 0600
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:80]
    final = out_dir / f"PdD-{safe}-{timezone.localtime():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}.zip"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                for name in sorted(members):
                    zf.writestr(name, members[name])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    journal_record(
        event=JournalEntry.Event.EXPORT,
        action="export.dip",
        object_id=final.name[:64],
        user=user,
        system="" if user is not None else "preservation.export",
        detail={
            "label": label,
            "packages": [p.identifier for p in packages],
            "volumes": [v.identifier for v in volumes],
            "sha256": hashlib.sha256(final.read_bytes()).hexdigest(),
        },
    )
    return final


# --- verification -----------------------------------------------------------------


def _cades_check(*, data: bytes, signature: bytes, ca: bytes) -> tuple[bool, str]:
    try:
        check = signing.cades_verify_detached(data=data, signature=signature, ca_pem=ca)
    except Exception as exc:  # a damaged signature must be reported, whatever breaks on it
        return False, f"la firma non è leggibile ({type(exc).__name__})"
    return check.ok, check.reason


def _timestamp_check(*, data: bytes, tsr: bytes, ca: bytes, tsa: bytes | None) -> tuple[bool, str]:
    try:
        check = timestamp.timestamp_verify(data=data, tsr=tsr, ca_pem=ca, tsa_pem=tsa)
    except Exception as exc:
        return False, f"la marca temporale non è leggibile ({type(exc).__name__})"
    return check.ok, check.reason


@dataclass
class Verification:
    checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, name: str, reason: str) -> None:
        self.problems.append((name, reason))


def package_verify(path: Path | str | io.BytesIO, *, ca_pem: bytes | None = None) -> Verification:
    """Verify a DIP offline: the manifest and its signature, every file's hash, each volume
    index's signature and time stamp, and every exported file against its index."""
    result = Verification()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        result.fail(str(path), f"non è uno zip leggibile: {exc}")
        return result
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        for name in names:
            p = PurePosixPath(name)
            if p.is_absolute() or ".." in p.parts:
                result.fail(name, "percorso non ammesso")
                return result
        try:
            data = {n: zf.read(n) for n in names}
        except (zipfile.BadZipFile, OSError) as exc:
            result.fail(str(path), f"lo zip è danneggiato: {exc}")
            return result
    ca = ca_pem or data.get(CA)
    if not ca:
        result.fail(CA, "manca il certificato della CA")
        return result

    # 1. The manifest, its signature, and every file it lists.
    manifest = data.get(MANIFEST)
    if manifest is None:
        result.fail(MANIFEST, "manca il manifesto")
        return result
    sig = data.get(MANIFEST_SIGNATURE)
    if sig is None:
        result.fail(MANIFEST_SIGNATURE, "manca la firma del manifesto")
    else:
        ok, reason = _cades_check(data=manifest, signature=sig, ca=ca)
        if not ok:
            changed = "modificato" in reason
            result.fail(MANIFEST if changed else MANIFEST_SIGNATURE, f"firma non valida: {reason}")
    listed: dict[str, str] = {}
    for line in manifest.decode("utf-8", errors="replace").splitlines():
        m = _MANIFEST_LINE.match(line)
        if not m:
            result.fail(MANIFEST, f"riga non valida: {line[:80]!r}")
            continue
        listed[m.group(2)] = m.group(1)
    for name, expected in listed.items():
        if name not in data:
            result.fail(name, "elencato nel manifesto ma assente")
        elif hashlib.sha256(data[name]).hexdigest() != expected:
            result.fail(name, "l'impronta SHA-256 non corrisponde al manifesto: il file è stato modificato")
        result.checked += 1
    for name in names:
        if name not in listed and name not in (MANIFEST, MANIFEST_SIGNATURE):
            result.fail(name, "non elencato nel manifesto")

    # 2. Each volume's index: signature, time stamp, and the files it lists that were exported.
    indexes = sorted(n for n in names if re.fullmatch(r"volumes/[^/]+/index\.xml", n))
    if not indexes:
        result.fail("volumes/", "nessun indice di volume")
    exported = set(names)
    in_indexes: set[str] = set()
    for index_name in indexes:
        index_data = data[index_name]
        p7m, tsr = data.get(index_name + ".p7m"), data.get(index_name + ".tsr")
        if p7m is None:
            result.fail(index_name + ".p7m", "manca la firma dell'indice")
        else:
            ok, reason = _cades_check(data=index_data, signature=p7m, ca=ca)
            if not ok:
                changed = "modificato" in reason
                result.fail(index_name if changed else index_name + ".p7m", f"firma non valida: {reason}")
        if tsr is None:
            result.fail(index_name + ".tsr", "manca la marca temporale dell'indice")
        else:
            ok, reason = _timestamp_check(data=index_data, tsr=tsr, ca=ca, tsa=data.get(TSA))
            if not ok:
                changed = "impronta" in reason
                result.fail(index_name if changed else index_name + ".tsr", f"marca temporale non valida: {reason}")
        try:
            index = sincro.index_parse(index_data)
        except ValueError as exc:
            result.fail(index_name, f"indice SInCRO non leggibile: {exc}")
            continue
        for f in index.files():
            in_indexes.add(f.path)
            if f.path in exported and hashlib.sha256(data[f.path]).hexdigest() != f.sha256:
                result.fail(f.path, "l'impronta non corrisponde a quella nell'indice del volume")
    for name in names:
        if name.startswith("aip/") and name not in in_indexes:
            result.fail(name, "non elencato nell'indice di alcun volume")

    # 3. Everything the descriptor names is there.
    descriptor = data.get(DESCRIPTOR)
    if descriptor is None:
        result.fail(DESCRIPTOR, "manca la descrizione del pacchetto")
    else:
        try:
            root = ET.fromstring(descriptor)
        except ET.ParseError as exc:
            result.fail(DESCRIPTOR, f"XML non leggibile: {exc}")
        else:
            for el in root.iter("{urn:pacs-fvg:conservazione:pacchetto:1}File"):
                if el.get("percorso") not in exported:
                    result.fail(el.get("percorso", "?"), "esportato secondo PdD.xml ma assente")
    # The same file can be named by two checks: name it once per reason.
    result.problems = list(dict.fromkeys(result.problems))
    return result
