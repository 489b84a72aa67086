"""Report templates and standard phrases: the text a radiologist starts from.

A *modello di referto* (:class:`archive.models.ReportTemplate`) belongs to a
health authority and a catalogue procedure (by its CUP code): the editor
proposes those of the study's facility's authority for the procedure the study
was booked as (``archive.reporting.booked``), and inserting one fills only the
sections still empty (:func:`template_fill`); the browser asks before it
replaces text already written. A *frase standard*
(:class:`archive.models.ReportPhrase`) is one radiologist's own: they keep
theirs on their phrases page and insert them at the cursor.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from archive.models import REPORT_SECTIONS, ReportPhrase, ReportTemplate, Study
from archive.reporting.booked import BookedExam

logger = logging.getLogger(__name__)


def templates_for_study(*, study: Study, booked: BookedExam | None) -> QuerySet[ReportTemplate]:
    """The templates of ``study``'s health authority for the procedure it was booked as (none without a booking)."""
    if booked is None or not booked.procedure_code:
        return ReportTemplate.objects.none()
    return ReportTemplate.objects.filter(
        authority_id=study.facility.authority_id, procedure_code=booked.procedure_code
    ).order_by("name")


def template_fill(*, sections: dict[str, str], template: ReportTemplate) -> dict[str, str]:
    """``sections`` with each empty one (blank) taken from ``template``; written text is never replaced."""
    return {
        name: value if value.strip() else getattr(template, name)
        for name, value in ((name, sections.get(name, "")) for name in REPORT_SECTIONS)
    }


def template_json(template: ReportTemplate) -> dict[str, Any]:
    """What the editor's script needs to insert ``template``."""
    return {"id": template.pk, "name": template.name, "sections": {n: getattr(template, n) for n in REPORT_SECTIONS}}


def phrases_of(*, user: Any) -> QuerySet[ReportPhrase]:
    return ReportPhrase.objects.filter(owner=user).order_by("title")


def phrase_save(*, user: Any, title: str, text: str, phrase: ReportPhrase | None = None) -> ReportPhrase:
    """Add a phrase of ``user``'s, or change ``phrase`` (theirs).

    Raises
    ------
    ValidationError
        An empty title or text, a title ``user`` already uses, or a phrase of somebody else.
    """
    title, text = title.strip(), text.replace("\r\n", "\n").strip()
    if not title or not text:
        raise ValidationError(_("Scrivi il titolo e il testo della frase."))
    if phrase is not None and phrase.owner_id != user.pk:
        raise ValidationError(_("La frase non è tua."))
    row = phrase or ReportPhrase(owner=user)
    row.title, row.text = title, text
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError as exc:
        raise ValidationError(_("Hai già una frase con il titolo «%(title)s».") % {"title": title}) from exc
    return row


def phrase_delete(*, user: Any, phrase: ReportPhrase) -> None:
    """Delete ``phrase`` of ``user``'s.

    Raises
    ------
    ValidationError
        The phrase is somebody else's.
    """
    if phrase.owner_id != user.pk:
        raise ValidationError(_("La frase non è tua."))
    phrase.delete()
