"""The admin's storage pages: lifecycle policies, scope migrations, fixity runs,
storage alerts (acknowledged by staff), copies the lifecycle could not make
(stuck, with their next try), and the storage dashboard."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from archive import access
from archive.admin import ReadOnlyAdmin, VisibleRowsMixin
from archive.models import (
    CopyFailure,
    Facility,
    FixityRun,
    HealthAuthority,
    LifecyclePolicy,
    ScopeMigration,
    StorageAlert,
)
from archive.storage import lifecycle
from archive.storage import tiers as storage
from kernel.admin import AlertAdminMixin

logger = logging.getLogger(__name__)


@admin.register(LifecyclePolicy)
class LifecyclePolicyAdmin(admin.ModelAdmin):
    list_display = ("facility", "modality", "migrate_after_days", "evict_after_days")
    list_filter = ("facility",)


@admin.register(ScopeMigration)
class ScopeMigrationAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "target_scope", "total", "copied", "released", "percent", "failures", "finished_at")


@admin.register(FixityRun)
class FixityRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "finished_at", "checked", "ok", "damaged", "repaired", "unreadable")


@admin.register(CopyFailure)
class CopyFailureAdmin(VisibleRowsMixin, ReadOnlyAdmin):
    """Copies the lifecycle could not make: why, how many times, and when it tries again
    (shown to who may see the instance's study, as the storage alerts)."""

    study_path = "instance__series__study__"

    list_display = ("instance", "step", "tier", "damaged", "attempts", "last_failed_at", "next_try_at", "last_error")
    list_filter = ("step", "damaged", "tier")
    search_fields = ("instance__sop_instance_uid",)
    list_select_related = ("instance",)


@admin.register(StorageAlert)
class StorageAlertAdmin(AlertAdminMixin, VisibleRowsMixin, admin.ModelAdmin):
    """An alert naming an instance is shown only to who may see its study (archive.access)."""

    list_display = (
        "created_at",
        "last_seen_at",
        "count",
        "kind",
        "tier",
        "instance",
        "repaired",
        "acknowledged_at",
        "acknowledged_by",
    )
    list_filter = ("kind", "repaired", ("acknowledged_at", admin.EmptyFieldListFilter))
    readonly_fields = (
        "created_at",
        "kind",
        "tier",
        "path",
        "instance",
        "fixity_run",
        "detail",
        "repaired",
        "last_seen_at",
        "count",
        "acknowledged_at",
        "acknowledged_by",
    )

    def visible_q(self, principal: access.Principal) -> Q:
        return access.any_q(Q(instance__isnull=True), access.visible_q(principal, "instance__series__study__"))


def tier_label(tier: str, *, facilities: dict[str, str], authorities: dict[str, str]) -> str:
    """A tier in words: "facility:TS-CAT" is "Ospedale di Cattinara, Trieste – archivio a
    breve termine"; a tier of a code no longer in the region keeps its code."""
    kind, _sep, scope = tier.partition(":")
    if kind == storage.FACILITY:
        return gettext("%(place)s – archivio a breve termine") % {"place": facilities.get(scope, scope)}
    if kind == storage.LONGTERM:
        if scope == storage.REGION:
            return gettext("Archivio regionale a lungo termine")
        return gettext("%(place)s – archivio a lungo termine") % {"place": authorities.get(scope, scope)}
    if kind == storage.PRESERVATION:
        if scope == storage.REGION:
            return gettext("Conservazione a norma (regionale)")
        return gettext("%(place)s – conservazione a norma") % {"place": authorities.get(scope, scope)}
    return tier


@dataclass
class TierRow:
    tier: str
    label: str
    objects: int = 0
    bytes: int = 0
    space: storage.TierSpace | None = None
    # Why there is no free space to show: an object store, or the error met.
    space_note: str = ""

    @property
    def low_space(self) -> bool:
        return self.space is not None and self.space.free_percent < LOW_SPACE_PERCENT


# Below this share of free space a tier's row is flagged.
LOW_SPACE_PERCENT = 10


def tier_rows(
    tiers: list[dict[str, Any]], *, facilities: dict[str, str], authorities: dict[str, str]
) -> tuple[list[TierRow], dict[str, int]]:
    """Each tier with copies, and each one configured without any yet (every facility's,
    the long-term tiers of the current scope, the preservation tier): its name in
    words, objects and bytes, and the free space of its filesystem (``shutil.disk_usage``;
    not measurable for an object store). With the totals of objects and bytes.
    ``facilities`` and ``authorities`` map codes to names."""
    counted = {t["tier"]: t for t in tiers}
    names = set(counted) | {storage.facility_tier(code) for code in facilities}
    if settings.PACS_LONG_TERM_SCOPE == storage.REGION:
        names.add(storage.longterm_tier(storage.REGION))
    else:
        names |= {storage.longterm_tier(code) for code in authorities}
    names.add(str(settings.PACS_PRESERVATION_TIER))
    order = {storage.FACILITY: 0, storage.LONGTERM: 1, storage.PRESERVATION: 2}
    rows = []
    for tier in names:
        row = TierRow(
            tier=tier,
            label=tier_label(tier, facilities=facilities, authorities=authorities),
            objects=int(counted.get(tier, {}).get("objects") or 0),
            bytes=int(counted.get(tier, {}).get("bytes") or 0),
        )
        try:
            row.space = storage.tier_space(tier)
            if row.space is None:
                row.space_note = gettext("non misurabile: archivio a oggetti (S3)")
        except storage.StorageError as exc:
            logger.warning("free space of %s not measurable: %s", tier, exc)
            row.space_note = gettext("non disponibile: %(error)s") % {"error": exc}
        rows.append(row)
    rows.sort(key=lambda r: (order.get(storage.tier_kind(r.tier), 3), r.label.casefold()))
    totals = {"objects": sum(r.objects for r in rows), "bytes": sum(r.bytes for r in rows)}
    return rows, totals


@staff_member_required
@permission_required("archive.view_copy", raise_exception=True)
def storage_dashboard(request: HttpRequest) -> HttpResponse:
    """Objects, bytes and free space per tier, per facility, the lifecycle backlog, the last
    fixity results and open alerts."""
    summary = lifecycle.storage_summary(principal=access.principal_for_request(request))
    facilities = dict(Facility.objects.values_list("code", "name"))
    authorities = dict(HealthAuthority.objects.values_list("code", "name"))
    rows, totals = tier_rows(summary["tiers"], facilities=facilities, authorities=authorities)
    # The alerts and stuck copies name their tier in words too (the code stays in a title).
    for row in [*summary["alerts"], *summary["stuck"]]:
        row.tier_label = tier_label(row.tier, facilities=facilities, authorities=authorities)
    summary["per_facility"].sort(
        key=lambda r: (facilities.get(r["instance__facility__code"], "").casefold(), r["tier"])
    )
    for r in summary["per_facility"]:
        code = r["instance__facility__code"]
        r["facility_name"] = facilities.get(code, code)
        # The facility is in the row already: its own tier is named by what it is.
        if r["tier"] == storage.facility_tier(code):
            r["tier_label"] = gettext("archivio a breve termine del presidio")
        else:
            r["tier_label"] = tier_label(r["tier"], facilities=facilities, authorities=authorities)
    context = {
        **admin.site.each_context(request),
        "title": _("Archiviazione: livelli e ciclo di vita"),
        **summary,
        "tier_rows": rows,
        "totals": totals,
        "scope_label": _("regionale") if summary["scope"] == storage.REGION else _("per azienda sanitaria"),
        "low_space_percent": LOW_SPACE_PERCENT,
    }
    request.current_app = admin.site.name
    return TemplateResponse(request, "admin/archive/storage_dashboard.html", context)
