"""What a request may see: a service root (:class:`Scope`), UID checks, the instances a URL names.

Files are opened through :func:`archive.storage.retrieve.instance_open` (the nearest
verified copy); one that cannot be read now is a 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, BinaryIO

from django.db.models import QuerySet

from archive.storage import retrieve
from archive.storage.retrieve import NotAvailable, instance_open, instances_with_copies
from archive.storage.tiers import facility_tier
from kernel.querycache import Slot, compiled

from .. import access
from ..dicom import is_valid_uid
from ..models import Facility, Instance, Series, Study
from .media import DicomwebError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    """One DICOMweb service root: the whole region, or one facility's studies.

    ``base_url``: the absolute URL of the service root, without a trailing slash.
    """

    facility: Facility | None
    base_url: str
    # Who asks: the studies it may see (archive.access); a study it may not see is not there.
    principal: access.Principal = access.NOBODY

    def studies(self) -> QuerySet[Study]:
        qs = access.studies_visible(self.principal)
        if self.facility is not None:
            qs = qs.filter(facility=self.facility)
        return qs

    def study_url(self, study_uid: str) -> str:
        return f"{self.base_url}/studies/{study_uid}"

    def series_url(self, study_uid: str, series_uid: str) -> str:
        return f"{self.study_url(study_uid)}/series/{series_uid}"

    def instance_url(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return f"{self.series_url(study_uid, series_uid)}/instances/{sop_uid}"


def check_uid(value: str, what: str) -> str:
    if not is_valid_uid(value):
        raise DicomwebError(400, f"{what} {value[:80]!r} is not a valid DICOM UID")
    return value


def study_get(scope: Scope, study_uid: str) -> Study:
    """The study a URL names, with its patient, under the access policy: 400 for a malformed
    UID, 404 for a study that is not there for the scope's principal.

    Its SQL is built and compiled once per principal and facility (:mod:`kernel.querycache`,
    as :func:`instance_one_select`'s) and run again with the URL's UID."""
    check_uid(study_uid, "StudyInstanceUID")

    def build(study: str) -> QuerySet[Study]:
        return scope.studies().select_related("patient").filter(study_instance_uid=study).order_by("pk")[:1]

    key = (
        "archive.dicomweb.scope.study_get",
        scope.principal,
        access.policy_extension(),
        scope.facility.pk if scope.facility is not None else None,
    )
    found = compiled(key, _STUDY_SLOTS, build).fetch(study=study_uid)
    if not found:
        raise DicomwebError(404, f"study {study_uid} is not in this archive{_scope_note(scope)}")
    return found[0]


_STUDY_SLOTS = [Slot("study")]


def _scope_note(scope: Scope) -> str:
    return f" (facility {scope.facility.code})" if scope.facility is not None else ""


def _instances_qs(
    scope: Scope, *, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> tuple[Study, QuerySet[Instance]]:
    study = study_get(scope, study_uid)
    qs = Instance.objects.filter(series__study=study)
    if series_uid is not None:
        check_uid(series_uid, "SeriesInstanceUID")
        if sop_uid is None:
            _series_check(study, study_uid, series_uid)
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        check_uid(sop_uid, "SOPInstanceUID")
        qs = qs.filter(sop_instance_uid=sop_uid)
    return study, qs.order_by("series__series_number", "series__id", "instance_number", "id")


def _series_check(study: Study, study_uid: str, series_uid: str) -> None:
    if not Series.objects.filter(study=study, series_instance_uid=series_uid).exists():
        raise DicomwebError(404, f"series {series_uid} is not in study {study_uid}")


def _none_there(study: Study, study_uid: str, series_uid: str | None, sop_uid: str | None) -> DicomwebError:
    # An instance URL: its series is looked for only now (a found instance needs no second query).
    if sop_uid is not None and series_uid is not None:
        _series_check(study, study_uid, series_uid)
    if sop_uid is not None:
        return DicomwebError(404, f"instance {sop_uid} is not in series {series_uid} of study {study_uid}")
    return DicomwebError(404, "no instance is archived there")


def instances_select(
    scope: Scope, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[Study, list[Instance]]:
    """The study and the instances a study/series/instance URL names, in series and instance order.

    Raises 400 for a malformed UID and 404 for one that does not exist in
    this scope (or belongs to another study or series than the URL says).
    """
    study, qs = _instances_qs(scope, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    instances = list(instances_with_copies(qs.select_related("series__study")))
    if not instances:
        raise _none_there(study, study_uid, series_uid, sop_uid)
    return study, instances


def instance_one_select(
    scope: Scope,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    annotations: Callable[[], dict[str, Any]] | None = None,
    annotations_key: Hashable = None,
) -> tuple[Study, Instance]:
    """The study and the one instance an instance URL names, with its copies, in one query
    under the access policy (the policy's condition put on the instance's study);
    the annotations ``annotations()`` gives (called only when the query is built) are added
    to that query. When nothing matches, :func:`instances_select`
    says why with the same answers as every other URL (400, or 404 for the study, the series
    or the instance: a study the principal may not see is not there).

    The query's SQL is built and compiled once per principal, facility and
    ``annotations_key`` (which must name everything that shapes the annotations' SQL)
    and run again with the URL's UIDs
    (:mod:`kernel.querycache`): the policy's condition depends on the principal only
    (:func:`archive.access.visible_q`), and a principal changes with what it may see
    (its emergency accesses' patients, its authority), so a changed one is a new entry.
    """
    if annotations is not None and annotations_key is None:
        raise TypeError("annotations need an annotations_key naming what shapes their SQL")
    check_uid(study_uid, "StudyInstanceUID")
    check_uid(series_uid, "SeriesInstanceUID")
    check_uid(sop_uid, "SOPInstanceUID")

    def build(study: str, series: str, sop: str) -> QuerySet[Instance]:
        path = "series__study__"
        qs = Instance.objects.filter(
            access.visible_q(scope.principal, path),
            series__study__study_instance_uid=study,
            series__series_instance_uid=series,
            sop_instance_uid=sop,
        )
        if scope.facility is not None:
            qs = qs.filter(series__study__facility=scope.facility)
        if annotations is not None:
            qs = qs.annotate(**annotations())
        # Its copies with it (a reader opens one): one round trip, not two.
        qs = qs.annotate(**{retrieve.COPIES: retrieve.copies_annotation()})
        return qs.select_related("facility", "series__study__patient").order_by("id")[:1]

    key = (
        "archive.dicomweb.scope.instance_one_select",
        scope.principal,
        access.policy_extension(),
        scope.facility.pk if scope.facility is not None else None,
        annotations_key if annotations is not None else None,
    )
    found = compiled(key, _INSTANCE_SLOTS, build).fetch(study=study_uid, series=series_uid, sop=sop_uid)
    if found:
        retrieve.copies_from_annotation(found[0])
    if not found:
        study, instances = instances_select(scope, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
        return study, instances[0]  # not reached unless it appeared meanwhile
    return found[0].series.study, found[0]


_INSTANCE_SLOTS = [Slot("study"), Slot("series"), Slot("sop")]


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """What a retrieve of whole instances needs of one, as a row (no model instance)."""

    pk: int
    sop_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    own_tier: str  # its facility's tier ("" without a facility): copies there are read first


def instance_rows_select(
    scope: Scope, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[Study, list[InstanceRow], QuerySet[Instance]]:
    """:func:`instances_select` as rows: the access policy checked once (the study), then one
    query for the instances whatever their number (their copies: :func:`copies_ranked`, to
    which the query is given as a subquery)."""
    study, qs = _instances_qs(scope, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    rows = [
        InstanceRow(pk, sop, series, ts, facility_tier(code) if code else "")
        for pk, sop, series, ts, code in qs.values_list(
            "pk", "sop_instance_uid", "series__series_instance_uid", "transfer_syntax_uid", "facility__code"
        ).iterator(chunk_size=2000)
    ]
    if not rows:
        raise _none_there(study, study_uid, series_uid, sop_uid)
    return study, rows, qs


def instance_load(pk: int) -> Instance:
    """One instance as :func:`instance_open` wants it (its facility and copies loaded)."""
    return instances_with_copies(Instance.objects.filter(pk=pk).select_related("series__study")).get()


def instances_load(pks: list[int]) -> list[Instance]:
    """:func:`instance_load` for many: one query for the instances and one for their copies."""
    return list(instances_with_copies(Instance.objects.filter(pk__in=pks).select_related("series__study")))


def instance_url(scope: Scope, instance: Instance) -> str:
    series = instance.series
    return scope.instance_url(series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid)


def _open_all(instances: list[Instance]) -> Iterator[tuple[Instance, BinaryIO]]:
    """Each instance with its open file; unreadable ones are skipped and logged.

    The first readable one is opened before this returns, so that a request
    none of whose instances can be read fails with 503 instead of an empty body.
    """

    def generate(rest: list[Instance]) -> Iterator[tuple[Instance, BinaryIO]]:
        for instance in rest:
            try:
                fh = instance_open(instance)
            except NotAvailable as exc:
                logger.error("DICOMweb: skipping %s: %s", instance.sop_instance_uid, exc.reason)
                continue
            yield instance, fh

    for i, instance in enumerate(instances):
        try:
            fh = instance_open(instance)
        except NotAvailable as exc:
            if len(instances) == 1:
                raise DicomwebError(
                    503, f"instance {instance.sop_instance_uid} cannot be read now: {exc.reason}"
                ) from None
            logger.error("DICOMweb: skipping %s: %s", instance.sop_instance_uid, exc.reason)
            continue
        return chain([(instance, fh)], generate(instances[i + 1 :]))
    raise DicomwebError(503, "none of the requested instances can be read now")


def _open_one(instance: Instance) -> BinaryIO:
    try:
        return instance_open(instance)
    except NotAvailable as exc:
        raise DicomwebError(503, f"instance {instance.sop_instance_uid} cannot be read now: {exc.reason}") from None
