"""The admin's storage pages: lifecycle policies, scope migrations, fixity runs,
storage alerts (acknowledged by staff), copies the lifecycle could not make
(stuck, with their next try), and the storage dashboard."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from archive import access
from archive.admin import AdminMixinBase, ReadOnlyAdmin, VisibleRowsMixin
from archive.models import CopyFailure, FixityRun, LifecyclePolicy, ScopeMigration, StorageAlert
from archive.storage import lifecycle


@admin.register(LifecyclePolicy)
class LifecyclePolicyAdmin(admin.ModelAdmin):
    list_display = ("facility", "modality", "migrate_after_days", "evict_after_days")
    list_filter = ("facility",)


class AlertAdminMixin(AdminMixinBase):
    """An alert's admin: alerts are raised by the system, never added or deleted
    here; staff acknowledge them with an action (the preservation alerts too)."""

    actions = ["acknowledge"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description=_("Prendi visione degli allarmi selezionati"), permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        n = queryset.filter(acknowledged_at__isnull=True).update(
            acknowledged_at=timezone.now(), acknowledged_by=request.user
        )
        self.message_user(
            request, ngettext("%d allarme preso in visione.", "%d allarmi presi in visione.", n) % n, messages.SUCCESS
        )


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


@staff_member_required
@permission_required("archive.view_copy", raise_exception=True)
def storage_dashboard(request: HttpRequest) -> HttpResponse:
    """Objects and bytes per tier and facility, the lifecycle backlog, the last fixity results and open alerts."""
    context = {
        **admin.site.each_context(request),
        "title": _("Archiviazione: livelli e ciclo di vita"),
        **lifecycle.storage_summary(principal=access.principal_for_request(request)),
    }
    request.current_app = admin.site.name
    return TemplateResponse(request, "admin/archive/storage_dashboard.html", context)
