"""Who may sign the preservation's evidence: the preservation officer.

A volume's SInCRO index, a DIP's ``manifest.sha256`` -- every preservation
signature -- is accepted only from a certificate that holds the
preservation-officer role (responsabile della conservazione): one of the
certificate policies or extended key usages of
``PACS_PRESERVATION_SIGNER_POLICIES`` (the OID the CA issues for the role;
the demo CA's :data:`archive.reporting.signing.PRESERVATION_OFFICER_POLICY`) and, when
``PACS_PRESERVATION_SIGNER_SUBJECTS`` lists any, a subject with one of those
attributes. Any other certificate of the same CA -- a radiologist's -- signs
reports, never preservation evidence: a DIP re-signed with it does not verify.

The rule is checked three times: before signing (:func:`officer_sign` refuses
a key whose certificate lacks the role), by ``verify_package``, and by the
fixity audit. Report signatures keep their own rule (a radiologist with
``archive.sign_report``, :mod:`archive.reporting.services`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.contrib.auth import get_user_model

from archive.reporting import signing
from kernel.errors import PacsError

logger = logging.getLogger(__name__)

# RFC 4514 names cryptography does not know by these short forms.
_ATTRIBUTES = {"serialNumber": NameOID.SERIAL_NUMBER, "GN": NameOID.GIVEN_NAME, "SN": NameOID.SURNAME}


class SignerError(PacsError):
    """The preservation cannot sign now (no officer, no key, a certificate without the role); Italian ``message``."""

    code = "signer"


@dataclass(frozen=True)
class Role:
    """Whether a certificate holds the preservation-officer role, and in words which role it holds."""

    ok: bool
    text: str  # Italian: "responsabile della conservazione (politica 1.3…)" or what it has instead


@dataclass(frozen=True)
class OfficerSignature:
    """A preservation signature checked: the CAdES verification and the signer's role."""

    ok: bool
    reason: str  # Italian, why not ok ("" when ok)
    signer: str  # the signer's subject ("CN=Anna Zorzut, …"), "" when the signature does not say
    role: str  # Italian, see Role.text
    signing_time: dt.datetime | None


def officer_policies() -> list[str]:
    return list(settings.PACS_PRESERVATION_SIGNER_POLICIES)


def officer_subjects() -> list[str]:
    return list(settings.PACS_PRESERVATION_SIGNER_SUBJECTS)


def _subject_matches(cert: x509.Certificate, wanted: str) -> bool:
    try:
        name = x509.Name.from_rfc4514_string(wanted, _ATTRIBUTES)
    except ValueError:
        logger.error("PACS_PRESERVATION_SIGNER_SUBJECTS: %r is not an RFC 4514 name", wanted)
        return False
    present = {(a.oid, a.value) for a in cert.subject}
    return all((a.oid, a.value) in present for a in name)


def officer_role(
    certificate_pem: str | bytes, *, policies: list[str] | None = None, subjects: list[str] | None = None
) -> Role:
    """Does the certificate hold the preservation-officer role (``policies`` and ``subjects``, default the settings)?"""
    policies = officer_policies() if policies is None else policies
    subjects = officer_subjects() if subjects is None else subjects
    if not certificate_pem:
        return Role(False, "nessun certificato")
    pem = certificate_pem.encode("ascii") if isinstance(certificate_pem, str) else certificate_pem
    try:
        cert = x509.load_pem_x509_certificate(pem)
        roles = signing.certificate_roles(pem)
    except ValueError:
        return Role(False, "certificato non leggibile")
    held = [oid for oid in policies if roles.holds(oid)]
    has = ", ".join([*roles.policies, *roles.extended_key_usages]) or "nessuna"
    if policies and not held:
        return Role(
            False,
            f"non ha il ruolo di responsabile della conservazione (richiesta la politica {' o '.join(policies)}; "
            f"politiche e usi del certificato: {has})",
        )
    if subjects and not any(_subject_matches(cert, wanted) for wanted in subjects):
        return Role(
            False,
            f"non è tra i responsabili della conservazione ammessi ({'; '.join(subjects)})",
        )
    if not policies and not subjects:
        return Role(False, "nessun ruolo configurato (PACS_PRESERVATION_SIGNER_POLICIES)")
    text = "responsabile della conservazione"
    if held:
        text += f" (politica {held[0]})"
    return Role(True, text)


def officer_verify(
    *,
    data: bytes,
    signature: bytes,
    ca_pem: bytes | None = None,
    policies: list[str] | None = None,
    subjects: list[str] | None = None,
) -> OfficerSignature:
    """Verify a preservation signature: the CAdES check of :mod:`archive.reporting.signing`, then the signer's role.

    Never raises for a bad signature; the answer names the signer and the
    role their certificate holds, whichever check failed.
    """
    try:
        check = signing.cades_verify_detached(data=data, signature=signature, ca_pem=ca_pem)
    except Exception as exc:  # a damaged signature is a failed verification, whatever breaks on it
        logger.warning("preservation signature not verified: %r", exc)
        return OfficerSignature(False, f"la firma non è leggibile ({type(exc).__name__})", "", "", None)
    role = officer_role(check.signer_certificate_pem, policies=policies, subjects=subjects)
    if not check.ok:
        return OfficerSignature(False, check.reason, check.signer_subject, role.text, check.signing_time)
    if not role.ok:
        return OfficerSignature(
            False,
            f"firmato da {check.signer_subject}, che {role.text}",
            check.signer_subject,
            role.text,
            check.signing_time,
        )
    return OfficerSignature(True, "", check.signer_subject, role.text, check.signing_time)


def officer_user() -> Any:
    """The user whose key signs for the preservation (``PACS_PRESERVATION_SIGNER``)."""
    user = get_user_model().objects.filter(username=settings.PACS_PRESERVATION_SIGNER).first()
    if user is None:
        raise SignerError(
            f"Il firmatario della conservazione {settings.PACS_PRESERVATION_SIGNER!r} "
            "(PACS_PRESERVATION_SIGNER) non è un utente."
        )
    return user


def officer_sign(data: bytes) -> bytes:
    """Sign ``data`` (detached CAdES-BES) with the preservation officer's key.

    Refused before anything is signed when the officer's certificate does not
    hold the role: a signature that would not verify is never made.

    Raises
    ------
    SignerError
        No officer, no key, or a certificate without the preservation-officer role.
    """
    user = officer_user()
    try:
        pem = signing.signer_certificate_pem(user)
    except signing.SigningError as exc:
        raise SignerError(exc.message) from exc
    role = officer_role(pem)
    if not role.ok:
        raise SignerError(
            f"Il certificato di {user.get_username()} {role.text}: "
            "non può firmare indici di volume né pacchetti di distribuzione."
        )
    try:
        return signing.cades_sign_detached(data=data, user=user)
    except signing.SigningError as exc:
        raise SignerError(exc.message) from exc


def officer_name() -> str:
    """The CN of the officer's certificate, as the SInCRO index names the authorised signer."""
    try:
        return signing.signer_name(officer_user())
    except signing.SigningError as exc:
        raise SignerError(exc.message) from exc
