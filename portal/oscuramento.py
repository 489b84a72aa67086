"""The oscuramento: the data subject hides a study from health professionals, and
makes it visible again.

Hidden studies are left out by the access policy (:mod:`portal.policy`);
the citizen still sees them, and so does the report's author. A delegate may
hide only as a legal representative (:func:`portal.delegations.right_check`),
and never lifts a hiding the patient set herself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from archive.models import Patient, Study
from kernel.audit import audit_record

from .delegations import right_check
from .errors import PortalError
from .models import Concealment, Delegation

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def is_concealed(*, study: Study) -> bool:
    """Whether ``study`` is hidden now: for the citizen's own pages, never for a professional's."""
    return Concealment.objects.filter(study=study, revealed_at__isnull=True).exists()


def concealment_revealable_by(*, concealment: Concealment, requested_by: Patient | None) -> bool:
    """Whether ``requested_by`` may lift ``concealment``: the patient always; a delegate only a hiding
    the patient did not set herself (one set by a representative). None: an operator for the patient."""
    if requested_by is None or requested_by.pk == concealment.patient_id:
        return True
    # Rows without requested_by predate it: taken as the patient's own choice.
    return concealment.requested_by_id not in (None, concealment.patient_id)


def conceal(
    *,
    patient: Patient,
    study: Study,
    by_user: User | None = None,
    requested_by: Patient | None = None,
    source: str = "",
) -> Concealment:
    """Hide ``study`` from health professionals; idempotent (an active concealment is returned).

    ``patient`` is the study's patient. ``by_user`` is the operator who
    recorded the request at a desk; without one the citizen did it on the
    portal. ``requested_by`` is the citizen who asked, when a delegate: only a
    legal representative may (:data:`portal.models.KIND_RIGHTS`).

    Raises
    ------
    PortalError
        ``not_representative``: the delegate's delegation does not allow it.
    ValueError
        The study is not the patient's.
    """
    if study.patient_id != patient.pk:
        raise ValueError(_("Lo studio non appartiene a questo paziente."))
    now = timezone.now()
    right_check(requested_by=requested_by, patient=patient, right=Delegation.Right.CONCEALMENT, now=now)
    with transaction.atomic():
        active = Concealment.objects.select_for_update().filter(study=study, revealed_at__isnull=True).first()
        if active is not None:
            return active
        concealment = Concealment.objects.create(
            patient=patient,
            study=study,
            requested_by=requested_by or patient,
            hidden_by_patient=by_user is None,
            hidden_by=by_user,
        )
        audit_record(
            action="portal.conceal",
            user=by_user,
            patient=patient,
            study=study,
            source=source,
            detail={"concealment": concealment.pk, "requested_by": (requested_by or patient).codice_fiscale},
        )
    return concealment


def reveal(
    *,
    patient: Patient,
    study: Study,
    by_user: User | None = None,
    requested_by: Patient | None = None,
    source: str = "",
) -> Concealment | None:
    """Make ``study`` visible to health professionals again; the closed concealment, or None if none was active.

    A delegate (``requested_by``, a legal representative) never lifts a hiding
    the patient set herself (:func:`concealment_revealable_by`).

    Raises
    ------
    PortalError
        ``not_representative`` or ``subject_choice``.
    ValueError
        The study is not the patient's.
    """
    if study.patient_id != patient.pk:
        raise ValueError(_("Lo studio non appartiene a questo paziente."))
    now = timezone.now()
    right_check(requested_by=requested_by, patient=patient, right=Delegation.Right.CONCEALMENT, now=now)
    with transaction.atomic():
        active = Concealment.objects.select_for_update().filter(study=study, revealed_at__isnull=True).first()
        if active is None:
            return None
        if not concealment_revealable_by(concealment=active, requested_by=requested_by):
            raise PortalError(
                _(
                    "L'esame è stato oscurato dall'interessato: solo l'interessato può renderlo di nuovo "
                    "visibile ai professionisti."
                ),
                code="subject_choice",
            )
        active.revealed_at = now
        active.revealed_by = by_user
        active.save(update_fields=["revealed_at", "revealed_by"])
        audit_record(
            action="portal.reveal",
            user=by_user,
            patient=patient,
            study=study,
            source=source,
            detail={"concealment": active.pk, "requested_by": (requested_by or patient).codice_fiscale},
        )
    return active
