"""One numbering of a study's series for everything a person reads: the
radiologist's viewer, the citizen's viewer, the JPEG zip's folders.

A report says "serie 5, immagine 120"; the citizen who opens the viewer or the
zip must find series 5 there. So the number shown is the modality's own
SeriesNumber, which the report and any other workstation show too. Where it
cannot serve (missing, zero or negative, or already taken by an earlier series
of the same study: two runs of a modality often both start at 1), the series
gets the next number after the highest in the study, in the study's order. The
numbers are decided over every series of the study, whatever a page then
leaves out (a series with no image in a viewer), so that a series keeps its
number everywhere.

The series are listed by that number; within a series, the images by
InstanceNumber (missing last), then by arrival. An image's position in its
series ("immagine 3 di 50") is its place in that order, counted from 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import F, QuerySet
from django.utils.translation import gettext as _

from .models import Instance, Series

# The modality in the words a patient uses (DICOM's codes are English abbreviations).
MODALITY_NAMES = {
    "CT": "TC",
    "MR": "RM",
    "US": "Ecografia",
    "CR": "RX",
    "DX": "RX",
    "MG": "Mammografia",
    "NM": "Medicina nucleare",
    "PT": "PET",
    "XA": "Angiografia",
    "RF": "Fluoroscopia",
    "OT": "Altro",
}


@dataclass(frozen=True)
class NumberedSeries:
    series: Series
    number: int  # "Serie 5": the one number every page and file shows
    instances: list[Instance]  # in the order above; the image at position n is instances[n - 1]


def series_label(number: int, series: Series, *, plain: bool = False) -> str:
    """``Serie 5 – CT Torace``; ``plain``: the modality in a patient's words (``Serie 5 – TC Torace``)."""
    modality = MODALITY_NAMES.get(series.modality.upper(), series.modality) if plain else series.modality
    text = _("Serie %(n)s") % {"n": number}
    extra = " ".join(x for x in (modality, series.series_description) if x)
    return f"{text} – {extra}" if extra else text


def series_ordered(queryset: QuerySet[Series]) -> QuerySet[Series]:
    return queryset.order_by(F("series_number").asc(nulls_last=True), "pk")


def instances_ordered(queryset: QuerySet[Instance]) -> QuerySet[Instance]:
    return queryset.order_by(F("instance_number").asc(nulls_last=True), "pk")


def series_number_assign(series: Iterable[Series]) -> dict[int, int]:
    """``{series pk: number}`` for ``series``, all of one study, given in :func:`series_ordered` order
    (which decides who keeps a number two series share, and the order of those renumbered)."""
    rows = list(series)
    taken: set[int] = set()
    numbers: dict[int, int] = {}
    pending: list[Series] = []
    for s in rows:
        n = s.series_number
        if n is not None and n > 0 and n not in taken:
            numbers[s.pk] = n
            taken.add(n)
        else:
            pending.append(s)
    following = max(taken, default=0)
    for s in pending:
        following += 1
        numbers[s.pk] = following
    return numbers


def study_series_numbered(*, study_id: int, instances: QuerySet[Instance] | None = None) -> list[NumberedSeries]:
    """The study's series that have instances in ``instances`` (default: all of the
    study's), each with its number and its instances, by number.

    ``instances``: the instances to show, already narrowed by the caller (only
    images for a viewer, with copies for a zip); it is limited to the study here.
    """
    series = list(series_ordered(Series.objects.filter(study_id=study_id).select_related("study")))
    numbers = series_number_assign(series)
    chosen = instances if instances is not None else Instance.objects.all()
    by_series: dict[int, list[Instance]] = {}
    for instance in instances_ordered(chosen.filter(series__study_id=study_id)):
        by_series.setdefault(instance.series_id, []).append(instance)
    found = [NumberedSeries(s, numbers[s.pk], by_series[s.pk]) for s in series if s.pk in by_series]
    return sorted(found, key=lambda n: n.number)
