"""Citizens' accounts: who a portal user is, and the person they are in the patient index."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.translation import gettext as _

from archive.models import Patient
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale
from kernel.errors import Invalid

from .models import CitizenAccount

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class AccountError(Invalid, ValueError):
    """The account cannot be created as asked (a wrong codice fiscale, one that already has an account)."""

    code = "account"


def citizen_account_create(
    *,
    codice_fiscale: str,
    password: str | None = None,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
    origin: str = CitizenAccount.Origin.LOCAL,
) -> User:
    """Create the portal login of the citizen ``codice_fiscale``; the user.

    The username is the codice fiscale. Without ``password`` the account has
    none usable (a login through the identity provider only).
    """
    cf = normalize_codice_fiscale(codice_fiscale)
    error = codice_fiscale_error(cf)
    if error:
        raise AccountError(error)
    if CitizenAccount.objects.filter(codice_fiscale=cf).exists():
        raise AccountError(_("Il codice fiscale %(cf)s ha già un account.") % {"cf": cf})
    patient = Patient.objects.filter(codice_fiscale=cf).first()
    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username=cf,
            email=email,
            first_name=first_name or (patient.given_name if patient else ""),
            last_name=last_name or (patient.family_name if patient else ""),
        )
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
        CitizenAccount.objects.create(user=user, codice_fiscale=cf, origin=origin)
    return user


def citizen_account(user: Any) -> CitizenAccount | None:
    """The citizen account of ``user``; None for staff and anonymous users."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        return user.citizen
    except CitizenAccount.DoesNotExist:
        return None


def citizen_patient(user: Any) -> Patient | None:
    """The patient-index row of the citizen ``user``; None when not a citizen or no exam of theirs is known yet."""
    account = citizen_account(user)
    if account is None:
        return None
    return Patient.objects.filter(codice_fiscale=account.codice_fiscale).first()


def demo_password() -> str:
    return secrets.token_urlsafe(12)
