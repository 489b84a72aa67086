"""RFC 3161 time stamps: asked of a configurable time-stamp authority, verified here.

``PACS_TSA_URL`` names an HTTP TSA (the query is POSTed with Content-Type
``application/timestamp-query``); when it is empty the local authority is
``openssl ts -reply`` with the key, certificate and configuration kept in
``PACS_TSA_DIR`` (:func:`tsa_demo_create` makes them, issued by the demo CA,
with the critical extended key usage timeStamping RFC 3161 asks for).

The verification (:func:`timestamp_verify`) is ours, with asn1crypto and
cryptography, so that it runs offline and says which check failed; the tests
check the same tokens with ``openssl ts -verify``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asn1crypto import algos, cms, tsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings

from archive.reporting import signing
from kernel.errors import Unavailable

logger = logging.getLogger(__name__)

TSA_NAME = "PACS regionale FVG – TSA dimostrativa"
# A policy OID for the demo's time stamps (under the private-enterprise arc used for examples).
DEMO_POLICY = "1.3.6.1.4.1.32473.1.9.1"
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class TimestampError(Unavailable):
    """No time stamp could be obtained."""

    code = "timestamp"


@dataclass(frozen=True)
class TimestampCheck:
    ok: bool
    reason: str
    time: dt.datetime | None = None
    tsa_subject: str = ""


def tsa_dir() -> Path:
    return Path(settings.PACS_TSA_DIR)


def tsa_paths() -> tuple[Path, Path, Path]:
    """The local TSA's key, certificate and openssl configuration."""
    d = tsa_dir()
    return d / "tsa.key.pem", d / "tsa.crt.pem", d / "tsa.cnf"


def tsa_certificate_pem() -> bytes:
    return tsa_paths()[1].read_bytes()


def trusted_tsa_pem() -> bytes:
    """The certificates of the TSAs whose time stamps are accepted (``PACS_TSA_CERTIFICATES``), as PEM.

    Raises TimestampError when one of the files cannot be read: with no
    list, no time stamp would be accepted.
    """
    pems = []
    for path in settings.PACS_TSA_CERTIFICATES:
        try:
            pems.append(Path(path).read_bytes())
        except OSError as exc:
            raise TimestampError(f"the TSA certificate {path} (PACS_TSA_CERTIFICATES) cannot be read: {exc}") from exc
    if not pems:
        raise TimestampError("PACS_TSA_CERTIFICATES lists no TSA certificate")
    return b"".join(pems)


def tsa_demo_create() -> None:
    """Create the local TSA (key, certificate from the demo CA, openssl configuration) if missing."""
    key_path, cert_path, cnf_path = tsa_paths()
    d = tsa_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not key_path.exists():
        cert_path.unlink(missing_ok=True)
        signing.write_once(key_path, signing.private_key_pem(ec.generate_private_key(ec.SECP256R1())))
    if not cert_path.exists():
        ca_cert, ca_key = signing.demo_ca_load()
        key = signing.private_key_load(key_path)
        cert = signing.demo_certificate_issue(
            subject=x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, signing.ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, TSA_NAME),
                ]
            ),
            key=key,
            ca_cert=ca_cert,
            ca_key=ca_key,
            validity=dt.timedelta(days=5 * 365),
            # RFC 3161 2.3: the TSA's certificate has only this extended key usage, critical.
            extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True)],
        )
        signing.write_once(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    if not cnf_path.exists():
        signing.write_once(cnf_path, _openssl_config(d).encode())
    serial = d / "tsaserial"
    if not serial.exists():
        signing.write_once(serial, f"{secrets.randbits(63):016X}\n".encode())


def _openssl_config(d: Path) -> str:
    return f"""# The demo's RFC 3161 time-stamp authority (openssl ts -reply -config this file).
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
dir = {d}
serial = $dir/tsaserial
crypto_device = builtin
signer_cert = $dir/tsa.crt.pem
certs = {signing.signing_directory() / "ca.pem"}
signer_key = $dir/tsa.key.pem
signer_digest = sha256
default_policy = {DEMO_POLICY}
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _query(data: bytes) -> bytes:
    req = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                "hashed_message": hashlib.sha256(data).digest(),
            },
            "nonce": secrets.randbits(63),
            "cert_req": True,
        }
    )
    return bytes(req.dump())


def timestamp_obtain(data: bytes) -> bytes:
    """An RFC 3161 time-stamp response (DER) over SHA-256 of ``data``, checked to be granted."""
    query = _query(data)
    reply = _ask_http(query) if settings.PACS_TSA_URL else _ask_openssl(query)
    try:
        resp = tsp.TimeStampResp.load(reply)
        status = resp["status"]["status"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampError(f"the TSA answered something that is not a time-stamp response: {exc}") from exc
    if status not in ("granted", "granted_with_mods"):
        raise TimestampError(f"the TSA refused the time stamp: {status}")
    sent = tsp.TimeStampReq.load(query)
    tst = resp["time_stamp_token"]["content"]["encap_content_info"]["content"].parsed
    if tst["nonce"].native != sent["nonce"].native:
        raise TimestampError("the TSA's answer does not carry our nonce")
    return reply


def _ask_http(query: bytes) -> bytes:
    request = urllib.request.Request(
        settings.PACS_TSA_URL, data=query, headers={"Content-Type": "application/timestamp-query"}, method="POST"
    )
    if settings.PACS_TSA_USERNAME:
        import base64

        token = base64.b64encode(f"{settings.PACS_TSA_USERNAME}:{settings.PACS_TSA_PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=settings.PACS_TSA_TIMEOUT) as response:  # noqa: S310
            return bytes(response.read())
    except OSError as exc:
        raise TimestampError(f"the TSA at {settings.PACS_TSA_URL} did not answer: {exc}") from exc


def _ask_openssl(query: bytes) -> bytes:
    _key, _cert, cnf = tsa_paths()
    if not cnf.exists():
        raise TimestampError(f"no local time-stamp authority in {tsa_dir()} (manage.py load_demo creates it)")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TimestampError("openssl is not on PATH: the local time-stamp authority needs it")
    with tempfile.TemporaryDirectory() as tmp:
        q, r = Path(tmp) / "q.tsq", Path(tmp) / "r.tsr"
        q.write_bytes(query)
        cmd = [openssl, "ts", "-reply", "-config", str(cnf), "-queryfile", str(q), "-out", str(r)]
        env = dict(os.environ)
        if settings.PACS_SIGNING_KEY_PASSPHRASE:
            env["PACS_TSA_KEY_PASS"] = settings.PACS_SIGNING_KEY_PASSPHRASE
            cmd += ["-passin", "env:PACS_TSA_KEY_PASS"]
        done = subprocess.run(cmd, capture_output=True, env=env, timeout=settings.PACS_TSA_TIMEOUT)
        if done.returncode != 0 or not r.exists():
            raise TimestampError(f"openssl ts -reply failed: {done.stderr.decode(errors='replace').strip()}")
        return r.read_bytes()


def _signed_attr(attrs: cms.CMSAttributes, name: str) -> Any:  # an asn1crypto value (untyped), or None
    for attr in attrs:
        if attr["type"].native == name:
            return attr["values"][0]
    return None


def _verify_signature(cert: x509.Certificate, signer_info: cms.SignerInfo, data: bytes, digest: str) -> None:
    public_key = cert.public_key()
    signature = bytes(signer_info["signature"].native)
    mechanism = signer_info["signature_algorithm"].signature_algo
    if isinstance(public_key, ec.EllipticCurvePublicKey) and mechanism == "ecdsa":
        public_key.verify(signature, data, ec.ECDSA(_HASHES[digest]()))
    elif isinstance(public_key, rsa.RSAPublicKey) and mechanism == "rsassa_pkcs1v15":
        public_key.verify(signature, data, padding.PKCS1v15(), _HASHES[digest]())
    else:
        raise ValueError(f"unsupported signature mechanism {mechanism}")


def timestamp_verify(
    *, data: bytes, tsr: bytes, ca_pem: bytes, tsa_pem: bytes | None = None, trusted_tsa_pem: bytes | None = None
) -> TimestampCheck:
    """Check an RFC 3161 response over ``data``: granted, the imprint, the TSA's signature, its certificate.

    ``tsa_pem`` adds certificates to look the TSA's up among (a token may
    not carry it). ``trusted_tsa_pem``: the TSA certificates accepted; a
    token signed by any other is refused, whoever issued it. The response
    must parse whole (every field, nothing after it), as a CMS signature.
    """
    try:
        resp = tsp.TimeStampResp.load(tsr, strict=True)
        resp.native  # noqa: B018  (decodes every field: a damaged one is a bad token)
        if resp["status"]["status"].native not in ("granted", "granted_with_mods"):
            return TimestampCheck(False, "la risposta della TSA non concede la marca")
        token = resp["time_stamp_token"]
        signed_data = token["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            return TimestampCheck(False, "il token non contiene un TSTInfo")
        tst_bytes = bytes(encap["content"].contents)
        tst = tsp.TSTInfo.load(tst_bytes)
        imprint = tst["message_imprint"]
        algo = imprint["hash_algorithm"]["algorithm"].native
        when = tst["gen_time"].native
        signer_info = signed_data["signer_infos"][0]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return TimestampCheck(False, f"la marca temporale non è leggibile ({exc})")
    if algo not in _HASHES:
        return TimestampCheck(False, f"algoritmo di hash non ammesso: {algo}")
    if bytes(imprint["hashed_message"].native) != hashlib.new(algo, data).digest():
        return TimestampCheck(False, "l'impronta marcata non corrisponde al file", when)
    try:
        certs = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed_data["certificates"] or []]
        if tsa_pem:
            certs += x509.load_pem_x509_certificates(tsa_pem)
    except ValueError as exc:
        return TimestampCheck(False, f"un certificato nella marca temporale non è leggibile ({exc})", when)
    sid = signer_info["sid"]
    cert = None
    for c in certs:
        if sid.name == "issuer_and_serial_number" and c.serial_number == sid.chosen["serial_number"].native:
            cert = c
            break
        if sid.name == "subject_key_identifier":
            try:
                ski = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == sid.chosen.native:
                cert = c
                break
    if cert is None:
        return TimestampCheck(False, "manca il certificato della TSA", when)
    if trusted_tsa_pem is not None:
        try:
            trusted = x509.load_pem_x509_certificates(trusted_tsa_pem)
        except ValueError:
            return TimestampCheck(False, "i certificati delle TSA accettate non si leggono", when)
        if cert not in trusted:
            return TimestampCheck(
                False,
                f"la marca è di una TSA non accettata ({signing.subject_text(cert.subject)})",
                when,
                signing.subject_text(cert.subject),
            )
    digest = signer_info["digest_algorithm"]["algorithm"].native
    attrs = signer_info["signed_attrs"]
    if digest not in _HASHES or not attrs:
        return TimestampCheck(False, "firma della TSA senza attributi firmati o con hash non ammesso", when)
    md = _signed_attr(attrs, "message_digest")
    if md is None or bytes(md.native) != hashlib.new(digest, tst_bytes).digest():
        return TimestampCheck(False, "la firma della TSA non copre questo TSTInfo", when)
    try:
        _verify_signature(cert, signer_info, attrs.untag().dump(), digest)
    except (InvalidSignature, ValueError):
        return TimestampCheck(False, "la firma della TSA non è valida", when)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return TimestampCheck(False, "il certificato della TSA non è abilitato alle marche temporali", when)
    if ExtendedKeyUsageOID.TIME_STAMPING not in eku.value or not eku.critical:
        return TimestampCheck(False, "il certificato della TSA non è abilitato alle marche temporali", when)
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        return TimestampCheck(False, "il certificato della CA non si legge", when)
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            break
        except (InvalidSignature, ValueError, TypeError):
            continue
    else:
        return TimestampCheck(False, "il certificato della TSA non è emesso dalla CA attendibile", when)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        return TimestampCheck(False, "il certificato della TSA non era valido alla data della marca", when)
    return TimestampCheck(True, "", when, signing.subject_text(cert.subject))
