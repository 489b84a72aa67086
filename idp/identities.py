"""The IdP di prova's test identities: the people of the patient registry with a codice fiscale.

The region's real identity providers know a citizen from SPID or the CIE; the
test IdP knows whoever the PACS knows by codice fiscale: the demo citizens and
every patient the CUP registers. Names come from the registry, the e-mail
address from the patient's latest booking that gave one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _

from archive import demo as archive_demo
from archive.models import Patient
from booking.models import Booking
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale


@dataclass(frozen=True)
class Identity:
    """One test identity, as a SPID provider would describe it."""

    codice_fiscale: str
    given_name: str
    family_name: str
    email: str = ""

    @property
    def sub(self) -> str:
        # An opaque, stable subject per person: not the codice fiscale itself
        # (SPID's providers give a pairwise one too).
        return salted_hmac("idp.sub", self.codice_fiscale, algorithm="sha256").hexdigest()[:40]

    @property
    def fiscal_number(self) -> str:
        return f"TINIT-{self.codice_fiscale}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        return cls(
            **{key: str(data.get(key) or "") for key in ("codice_fiscale", "given_name", "family_name", "email")}
        )


class UnknownIdentity(LookupError):
    """No test identity for this codice fiscale (with the reason, in the citizen's words)."""


def identity_find(codice_fiscale: str) -> Identity:
    """The test identity of ``codice_fiscale``.

    Raises
    ------
    UnknownIdentity
        The codice fiscale is not well formed, or nobody in the registry has it.
    """
    cf = normalize_codice_fiscale(codice_fiscale)
    error = codice_fiscale_error(cf)
    if error:
        raise UnknownIdentity(error)
    patient = Patient.objects.filter(codice_fiscale=cf, provisional=False).first()
    if patient is None:
        raise UnknownIdentity(
            _("Nessuna identità di prova con il codice fiscale %(cf)s: prima va registrato al CUP.") % {"cf": cf}
        )
    email = (
        Booking.objects.filter(patient=patient)
        .exclude(contact_email="")
        .order_by("-created_at")
        .values_list("contact_email", flat=True)
        .first()
    )
    return Identity(
        codice_fiscale=cf,
        given_name=patient.given_name.title(),
        family_name=patient.family_name.title(),
        email=email or "",
    )


def demo_identities() -> list[Identity]:
    """The demo citizens present in the registry, offered as one-click identities."""
    found = []
    for person in archive_demo.PATIENTS:
        try:
            found.append(identity_find(person.codice_fiscale))
        except UnknownIdentity:
            continue
    return found
