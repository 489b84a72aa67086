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

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from django.conf import settings
from django.utils import timezone

from archive.models import Patient, Study
from archive.reporting import signing
from archive.storage import tiers as storage
from kernel.errors import PacsError

from . import signer, sincro, timestamp, vault
from .journal import journal_record
from .models import JournalEntry, Package, Volume

logger = logging.getLogger(__name__)

MANIFEST = "manifest.sha256"
MANIFEST_SIGNATURE = "manifest.sha256.p7m"
DESCRIPTOR = "PdD.xml"
README = "LEGGIMI.txt"
CA = "certificati/ca.pem"
TSA = "certificati/tsa.pem"
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class ExportError(PacsError):
    """A dissemination package cannot be made; ``message`` in Italian."""

    code = "export"


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


def _officer_checks(role_oids: list[str], p7m: str, content: str, out: str) -> list[str]:
    """The openssl commands that verify one preservation signature and its signer's role."""
    policy = "".join(f" -policy {oid}" for oid in role_oids) + (" -explicit_policy" if role_oids else "")
    lines = [
        f"openssl cms -verify -binary -inform DER -in {p7m} -content {content} -CAfile {CA} -purpose any"
        f"{policy} -signer {out} -out /dev/null",
        f"openssl x509 -in {out} -noout -subject -ext certificatePolicies,extendedKeyUsage",
    ]
    return lines


def _readme(label: str, volumes: list[Volume], *, role_oids: list[str], role_ekus: list[str]) -> str:
    vols = "\n".join(f"  volumes/{v.identifier}/" for v in volumes)
    indent = "\n       "
    signatures = [
        *_officer_checks(role_oids, MANIFEST_SIGNATURE, MANIFEST, "firmatario-manifesto.pem"),
    ]
    for v in volumes:
        base = f"volumes/{v.identifier}/index.xml"
        signatures += _officer_checks(role_oids, f"{base}.p7m", base, f"firmatario-{v.identifier}.pem")
    stamps = []
    for v in volumes:
        base = f"volumes/{v.identifier}/index.xml"
        stamps += [
            f"openssl ts -verify -data {base} -in {base}.tsr -CAfile {CA} -untrusted {TSA}",
            f"openssl ts -verify -data {base} -in {base}.tsr -CAfile {TSA} -partial_chain",
        ]
    if role_oids:
        role = (
            "Il firmatario deve avere il ruolo di responsabile della conservazione: la politica di certificato "
            + " o ".join(role_oids)
            + "\n     (-policy ... -explicit_policy fa fallire la verifica se manca). Una firma valida di un altro "
            "titolare della stessa CA\n     (per esempio un radiologo) NON vale per la conservazione."
        )
    elif role_ekus:
        role = (
            "Il firmatario deve avere il ruolo di responsabile della conservazione: l'uso esteso della chiave "
            + " o ".join(role_ekus)
            + "\n     (la riga extendedKeyUsage stampata da openssl x509 deve riportarlo)."
        )
    else:
        role = (
            "Il firmatario deve essere un responsabile della conservazione ammesso: "
            + "; ".join(signer.officer_subjects())
            + "\n     (la riga subject stampata da openssl x509 deve riportarlo)."
        )
    return f"""PACCHETTO DI DISTRIBUZIONE (PdD) – {label}
Conservazione a norma del PACS regionale. Creato il {timezone.localtime():%d/%m/%Y %H:%M}.

Contenuto
  aip/<pacchetto>/...        i file dei pacchetti di archiviazione (DICOM, referti PDF e firme .p7m, metadati)
{vols}
      index.xml              l'indice del volume (UNI 11386:2020, SInCRO v2)
      index.xml.p7m          la firma CAdES dell'indice (responsabile della conservazione)
      index.xml.tsr          la marca temporale RFC 3161 dell'indice
  {DESCRIPTOR}                  che cosa è stato esportato
  {CA}         il certificato della CA; {TSA}: quelli delle TSA accettate
  {MANIFEST}            l'impronta SHA-256 di ogni altro file; {MANIFEST_SIGNATURE} la sua firma

Come verificarlo (dopo aver estratto lo zip, nella sua cartella)
  1. Le impronte di tutti i file:
       sha256sum -c {MANIFEST}
  2. La firma del manifesto e quella dell'indice di ogni volume, con chi ha firmato e il suo ruolo.
     {role}
       {indent.join(signatures)}
  3. La marca temporale di ogni indice, della TSA accettata ({TSA}; la seconda riga
     fallisce se la marca è di un'altra TSA, anche se emessa dalla stessa CA):
       {indent.join(stamps)}
  4. Ogni file dei pacchetti è elencato con la sua impronta (base64 di SHA-256) nell'indice del suo volume.
  Oppure, tutto insieme, con il PACS:
       python manage.py verify_package <questo file>.zip [--ca <CA di cui si fida>] [--tsa <TSA accettate>]
  I certificati della CA e della TSA nel pacchetto servono alla verifica fuori linea; chi riceve il
  pacchetto confronti le loro impronte con quelle pubblicate dal conservatore:
       openssl x509 -in {CA} -noout -fingerprint -sha256
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
    try:
        tsa_pems = timestamp.trusted_tsa_pem()
    except timestamp.TimestampError as exc:
        raise ExportError(str(exc)) from exc
    descriptor = ET.Element("PacchettoDiDistribuzione", {"xmlns": "urn:pacs-fvg:conservazione:pacchetto:1"})
    descriptor.set("identificativo", f"PdD-{uuid.uuid4()}")
    descriptor.set("oggetto", label)
    descriptor.set("creato", timezone.now().isoformat(timespec="seconds"))
    for package in packages:
        pe = ET.SubElement(
            descriptor,
            "PacchettoDiArchiviazione",
            {"identificativo": package.identifier, "volume": package.volume.identifier},  # type: ignore[union-attr]  # refused above without one
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
    try:
        roles = signing.certificate_roles(signing.signer_certificate_pem(signer.officer_user()))
    except (signer.SignerError, signing.SigningError) as exc:
        raise ExportError(getattr(exc, "message", str(exc))) from exc
    wanted = signer.officer_policies()
    members[README] = _readme(
        label,
        volumes,
        role_oids=[oid for oid in wanted if oid in roles.policies],
        role_ekus=[oid for oid in wanted if oid in roles.extended_key_usages],
    ).encode("utf-8")
    manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(members.items()))
    members[MANIFEST] = manifest.encode("utf-8")
    try:
        members[MANIFEST_SIGNATURE] = signer.officer_sign(members[MANIFEST])
    except signer.SignerError as exc:
        raise ExportError(exc.message) from exc

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


def _timestamp_check(*, data: bytes, tsr: bytes, ca: bytes, tsa: bytes | None) -> timestamp.TimestampCheck:
    try:
        return timestamp.timestamp_verify(data=data, tsr=tsr, ca_pem=ca, tsa_pem=tsa, trusted_tsa_pem=tsa or b"")
    except Exception as exc:  # a damaged token must be reported, whatever breaks on it
        return timestamp.TimestampCheck(False, f"la marca temporale non è leggibile ({type(exc).__name__})")


@dataclass(frozen=True)
class SignatureSeen:
    """Who signed one file of the package, and with which role."""

    name: str
    ok: bool
    signer: str
    role: str


@dataclass
class Verification:
    checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    signatures: list[SignatureSeen] = field(default_factory=list)
    timestamps: list[tuple[str, str, str]] = field(default_factory=list)  # (file, TSA, time)
    ca_fingerprint: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, name: str, reason: str) -> None:
        self.problems.append((name, reason))


def _signature(
    result: Verification,
    *,
    data: bytes,
    signature: bytes,
    ca: bytes,
    policies: list[str] | None,
    signed_name: str,
    signature_name: str,
) -> None:
    check = signer.officer_verify(data=data, signature=signature, ca_pem=ca, policies=policies)
    result.signatures.append(SignatureSeen(signature_name, check.ok, check.signer, check.role))
    if not check.ok:
        changed = "modificato" in check.reason
        result.fail(signed_name if changed else signature_name, f"firma non valida: {check.reason}")


def _fingerprint(pem: bytes) -> str:
    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError):
        return "?"
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def package_verify(
    path: Path | str | io.BytesIO,
    *,
    ca_pem: bytes | None = None,
    tsa_pem: bytes | None = None,
    policies: list[str] | None = None,
) -> Verification:
    """Verify a DIP offline: the manifest and its signature, every file's hash, each volume
    index's signature and time stamp, and every exported file against its index.

    Every signature must come from a preservation officer (:mod:`preservation.signer`:
    ``policies``, default ``PACS_PRESERVATION_SIGNER_POLICIES``); every time stamp
    from one of the accepted TSAs (``tsa_pem``, default the package's
    ``certificati/tsa.pem``); every certificate chain from ``ca_pem`` (default
    the package's ``certificati/ca.pem``). The answer says who signed each
    file with which role, which TSA stamped each index, and the CA's fingerprint.
    """
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
    result.ca_fingerprint = _fingerprint(ca)
    tsa = tsa_pem or data.get(TSA)

    # 1. The manifest, its signature, and every file it lists.
    manifest = data.get(MANIFEST)
    if manifest is None:
        result.fail(MANIFEST, "manca il manifesto")
        return result
    sig = data.get(MANIFEST_SIGNATURE)
    if sig is None:
        result.fail(MANIFEST_SIGNATURE, "manca la firma del manifesto")
    else:
        _signature(
            result,
            data=manifest,
            signature=sig,
            ca=ca,
            policies=policies,
            signed_name=MANIFEST,
            signature_name=MANIFEST_SIGNATURE,
        )
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
            _signature(
                result,
                data=index_data,
                signature=p7m,
                ca=ca,
                policies=policies,
                signed_name=index_name,
                signature_name=index_name + ".p7m",
            )
        if tsr is None:
            result.fail(index_name + ".tsr", "manca la marca temporale dell'indice")
        else:
            stamp = _timestamp_check(data=index_data, tsr=tsr, ca=ca, tsa=tsa)
            result.timestamps.append(
                (index_name + ".tsr", stamp.tsa_subject, stamp.time.isoformat() if stamp.time else "")
            )
            if not stamp.ok:
                changed = "impronta" in stamp.reason
                result.fail(
                    index_name if changed else index_name + ".tsr", f"marca temporale non valida: {stamp.reason}"
                )
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
