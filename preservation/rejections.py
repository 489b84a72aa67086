"""What a rejection note (IOCM, :mod:`archive.rejection`) asks of preservation.

A package is write-once: the archive never changes nor purges it. When the
study a rejection note touches was already packaged (or is being packaged),
the archivist gets a :class:`archive.models.RejectionNotice` to handle (an
annotation in the next volume, a discard through the approved procedure).
"""

from __future__ import annotations

from django.utils.translation import gettext as _

from archive import rejection
from archive.models import RejectionNotice

from .models import Package


def rejection_preservation(*, note_pk: int, study_pk: int) -> str:
    """Open the notice if the study has packages; idempotent."""
    packages = list(
        Package.objects.filter(study_id=study_pk)
        .exclude(status=Package.Status.REJECTED)
        .order_by("pk")
        .values_list("identifier", flat=True)
    )
    if not packages:
        return "not preserved"
    detail = _(
        "Lo studio è già in conservazione nei pacchetti %(packages)s: i pacchetti non si modificano; "
        "valutare un'annotazione o uno scarto secondo il manuale di conservazione."
    ) % {"packages": ", ".join(packages)}
    rejection.notice_open(note_pk=note_pk, kind=RejectionNotice.Kind.PRESERVED, detail=detail)
    return "notice"
