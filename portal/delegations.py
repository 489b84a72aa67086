"""Who may act for whom: a citizen sees her own exams and those of the people
whose delegation in force she holds.

That set is the access policy's citizen principal
(``archive.access.principal_for_request(...).patient_ids``, built on
:func:`delegator_ids`), which every portal page asks. What a delegate may *do*
besides seeing and downloading follows from the delegation's kind
(:func:`citizen_rights`, checked by :func:`right_check`): only a legal
representative manages the oscuramento, only the representative of someone who
cannot act revokes the consent, and no delegate lifts a hiding the data
subject set herself (:mod:`portal.oscuramento`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from archive.models import Patient
from kernel.audit import audit_record

from .errors import PortalError
from .models import KIND_RIGHTS, MAJORITY_AGE, Delegation

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def majority_cutoff(now: dt.datetime) -> dt.date:
    """The latest birth date of someone who is of age on ``now``'s local day.

    Born on 29 February, one comes of age on 1 March of a common year.
    """
    today = timezone.localdate(now)
    year = today.year - MAJORITY_AGE
    try:
        return today.replace(year=year)
    except ValueError:  # today is 29 February, 18 years ago was a common year
        return dt.date(year, 2, 28)


def coming_of_age(birth_date: dt.date) -> dt.datetime:
    """The moment (local midnight) ``birth_date``'s person turns 18."""
    year = birth_date.year + MAJORITY_AGE
    try:
        day = birth_date.replace(year=year)
    except ValueError:  # born on 29 February
        day = dt.date(year, 3, 1)
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def is_minor(patient: Patient, *, now: dt.datetime | None = None) -> bool | None:
    """Whether ``patient`` is under 18 at ``now``; None when the birth date is not known."""
    if patient.birth_date is None:
        return None
    return patient.birth_date > majority_cutoff(now or timezone.now())


def delegations_in_force(now: dt.datetime) -> Q:
    """The delegations in force at ``now``: started, not ended, not revoked, and, for a
    parent's, the child still a minor (a birth date not known counts as of age)."""
    period = Q(revoked_at__isnull=True, valid_from__lte=now) & (Q(valid_until__isnull=True) | Q(valid_until__gt=now))
    parent_of_adult = Q(kind=Delegation.Kind.PARENT) & (
        Q(delegator__birth_date__isnull=True) | Q(delegator__birth_date__lte=majority_cutoff(now))
    )
    return period & ~parent_of_adult


def delegator_ids(*, delegate_id: int, now: dt.datetime | None = None) -> set[int]:
    """The patients who delegated ``delegate_id`` with a delegation in force at ``now``.

    The one place the delegation rule is read: the access policy's citizen
    principal (:mod:`portal.policy`) is built on it.
    """
    now = now or timezone.now()
    return set(
        Delegation.objects.filter(delegations_in_force(now), delegate_id=delegate_id)
        .exclude(delegator_id=delegate_id)
        .values_list("delegator_id", flat=True)
    )


def patients_acted_for(*, patient: Patient, now: dt.datetime | None = None) -> list[Patient]:
    """The citizen themselves, then everyone who delegated them and whose delegation is in force."""
    return people_ordered(me=patient, patient_ids={patient.pk, *delegator_ids(delegate_id=patient.pk, now=now)})


def people_ordered(*, me: Patient | None, patient_ids: Iterable[int]) -> list[Patient]:
    """``me`` first, then the other patients of ``patient_ids`` by name (a citizen's principal's people)."""
    others = Patient.objects.filter(pk__in=sorted(set(patient_ids))).order_by("family_name", "given_name", "pk")
    if me is None:
        return list(others)
    return [me, *others.exclude(pk=me.pk)]


def citizen_rights(*, citizen: Patient, patient: Patient, now: dt.datetime | None = None) -> frozenset[str]:
    """What ``citizen`` may do with ``patient``'s exams: everything for herself; for
    someone else, what her delegations in force allow (:data:`portal.models.KIND_RIGHTS`)."""
    if citizen.pk == patient.pk:
        return frozenset(Delegation.Right.values)
    now = now or timezone.now()
    kinds = Delegation.objects.filter(delegations_in_force(now), delegate=citizen, delegator=patient).values_list(
        "kind", flat=True
    )
    rights: set[str] = set()
    for kind in kinds:
        rights |= KIND_RIGHTS.get(kind, frozenset())
    return frozenset(rights)


def _kind_age_check(*, kind: str, delegator: Patient, now: dt.datetime) -> None:
    """Refuse a kind that does not fit the delegator's age (a parent's delegation for an adult...)."""
    minor = is_minor(delegator, now=now)
    if kind == Delegation.Kind.PARENT:
        if minor is None:
            raise PortalError(
                _(
                    "La data di nascita del delegante non è registrata: senza di essa non si può verificare "
                    "che sia minorenne. Aggiornare l'anagrafe."
                ),
                code="age",
                field="kind",
            )
        if not minor:
            raise PortalError(
                _(
                    "Il delegante è maggiorenne: la delega del genitore vale solo per un figlio minorenne. "
                    "Per un adulto scegliere tutore, amministratore di sostegno o altro delegato."
                ),
                code="age",
                field="kind",
            )
    elif kind in (Delegation.Kind.SUPPORT, Delegation.Kind.OTHER) and minor:
        raise PortalError(
            _(
                "Il delegante è minorenne: per un minore agiscono i genitori (delega del genitore) "
                "o il tutore nominato dal giudice."
            ),
            code="age",
            field="kind",
        )


def delegation_register(
    *,
    delegator: Patient,
    delegate: Patient,
    kind: str,
    evidence: str,
    user: User,
    valid_from: dt.datetime | None = None,
    valid_until: dt.datetime | None = None,
    source: str = "",
) -> Delegation:
    """Record a *delega* that staff checked on ``evidence``; audited ``portal.delegation.register``.

    The kind must fit the delegator's age: a parent's delegation only for a
    minor (and it ends on the 18th birthday: ``valid_until`` is brought back
    to it), an administrator of support or another delegate only for an adult.

    Raises
    ------
    PortalError
        With ``field`` set to the input at fault (``kind`` for the age).
    """
    if delegator.pk == delegate.pk:
        raise PortalError(_("Un cittadino non può delegare sé stesso."), field="delegate_cf")
    if kind not in Delegation.Kind.values:
        raise PortalError(_("Tipo di delega sconosciuto: %(kind)s.") % {"kind": kind}, field="kind")
    if not evidence.strip():
        raise PortalError(_("Indicare il documento che giustifica la delega."), field="evidence")
    valid_from = valid_from or timezone.now()
    _kind_age_check(kind=kind, delegator=delegator, now=valid_from)
    if kind == Delegation.Kind.PARENT and delegator.birth_date is not None:
        adult = coming_of_age(delegator.birth_date)
        valid_until = adult if valid_until is None else min(valid_until, adult)
    if valid_until is not None and valid_until <= valid_from:
        raise PortalError(_("La fine della validità viene dopo il suo inizio."), field="valid_until")
    with transaction.atomic():
        delegation = Delegation.objects.create(
            delegator=delegator,
            delegate=delegate,
            kind=kind,
            evidence=evidence.strip(),
            registered_by=user,
            valid_from=valid_from,
            valid_until=valid_until,
        )
        audit_record(
            action="portal.delegation.register",
            user=user,
            patient=delegator,
            source=source,
            detail={"delegation": delegation.pk, "delegate": delegate.codice_fiscale, "kind": kind},
        )
    return delegation


def delegation_revoke(*, delegation: Delegation, user: User, source: str = "") -> Delegation:
    """End a *delega* now (idempotent); audited ``portal.delegation.revoke``."""
    with transaction.atomic():
        now = timezone.now()
        if Delegation.objects.filter(pk=delegation.pk, revoked_at__isnull=True).update(revoked_at=now, revoked_by=user):
            audit_record(
                action="portal.delegation.revoke",
                user=user,
                patient=delegation.delegator,
                source=source,
                detail={"delegation": delegation.pk, "delegate": delegation.delegate.codice_fiscale},
            )
    delegation.refresh_from_db()
    return delegation


def right_check(*, requested_by: Patient | None, patient: Patient, right: str, now: dt.datetime) -> None:
    """Refuse ``requested_by`` exercising ``right`` for ``patient`` unless she is the patient or her
    delegations in force allow it (:func:`citizen_rights`); None: an operator for the patient."""
    if requested_by is None or requested_by.pk == patient.pk:
        return
    if right not in citizen_rights(citizen=requested_by, patient=patient, now=now):
        if right == Delegation.Right.CONSENT:
            message = _(
                "Solo l'interessato può revocare il proprio consenso, oppure chi ne ha la rappresentanza legale "
                "perché non può farlo da sé (il genitore di un minore, il tutore)."
            )
        else:
            message = _(
                "La Sua delega permette di vedere e scaricare gli esami, non di oscurarli: lo può fare "
                "l'interessato o chi ne ha la rappresentanza legale (genitore, tutore, amministratore di sostegno)."
            )
        raise PortalError(message, code="not_representative")
