"""What a rejection note (IOCM, :mod:`archive.rejection`) asks of the citizen's side.

The withdrawn images left the exam page and any new zip by themselves (the
archive's ``Instance.objects``); what remains is what the citizen already has or
could still take: a zip made before is withdrawn (its file deleted, its row
``purged``), and a report already published on the FSE is reported to the CUP
as a :class:`archive.models.RejectionNotice` to handle (the citizen may have
seen or downloaded images that no longer exist).
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.utils.translation import gettext as _

from archive import rejection
from archive.models import RejectionNotice, Study

from .downloads import LIVE, study_fingerprint
from .models import DownloadPackage, Publication

logger = logging.getLogger(__name__)


def rejection_portal(*, note_pk: int, study_pk: int) -> str:
    """Withdraw the study's zips made before the rejection; open the notice if it was published.

    Idempotent: a second run finds no stale zip and the notice already open.
    """
    study = Study.objects.filter(pk=study_pk).first()
    if study is None:
        return "missing"
    fingerprint, _size, _count = study_fingerprint(study)
    stale = list(DownloadPackage.objects.filter(study_id=study_pk, status__in=LIVE).exclude(fingerprint=fingerprint))
    for package in stale:
        if package.path:
            Path(package.path).unlink(missing_ok=True)
        DownloadPackage.objects.filter(pk=package.pk).update(status=DownloadPackage.Status.PURGED)
    publications = list(
        Publication.objects.filter(booking__study_id=study_pk).select_related("booking").order_by("published_at")
    )
    if not publications:
        return f"zips withdrawn: {len(stale)}"
    first = publications[0]
    detail = _(
        "Referto dell'esame %(accession)s pubblicato sul FSE il %(date)s: il cittadino può aver visto o scaricato "
        "immagini ora ritirate. Pacchetti ritirati: %(zips)d."
    ) % {
        "accession": first.booking.accession_number,
        "date": first.published_at.strftime("%d/%m/%Y %H:%M"),
        "zips": len(stale),
    }
    rejection.notice_open(note_pk=note_pk, kind=RejectionNotice.Kind.PUBLISHED, detail=detail)
    return f"zips withdrawn: {len(stale)}, notice"
