"""The research exports in the admin: projects and exports to read; the key table and the
projects' secrets only for the data-protection role (``research.view_pseudonymkey``).

Nothing here is edited: a project's choices are fixed at creation (its pages),
exports are written by their build, keys by the first export that meets a patient.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from kernel.audit import audit_record
from kernel.web import client_ip

from .models import KEY_PERM, Export, ExportProject, ProjectSecret, PseudonymKey


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ExportProject)
class ExportProjectAdmin(_ReadOnly):
    list_display = ["code", "title", "created_by", "created_at"]
    search_fields = ["code", "title"]


@admin.register(Export)
class ExportAdmin(_ReadOnly):
    list_display = ["pk", "project", "requested_by", "requested_at", "status", "done", "total"]
    list_filter = ["status"]
    # The studies name patients; the criteria may too (a codice fiscale typed in the form, a study's
    # UID since concealed): with the export's pseudonyms that would be the key table's link.
    exclude = ["studies", "criteria", "path"]


class _KeyRoleOnly(_ReadOnly):
    """Visible only to the data-protection role: the model's own view permission is not enough."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(KEY_PERM))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(KEY_PERM))


@admin.register(PseudonymKey)
class PseudonymKeyAdmin(_KeyRoleOnly):
    list_display = ["pseudonym", "project", "codice_fiscale", "original_patient_id", "date_shift_days"]
    list_filter = ["project"]
    search_fields = ["pseudonym", "codice_fiscale", "original_patient_id"]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        rows = getattr(getattr(response, "context_data", None) or {}, "get", lambda _k: None)("cl")
        if rows is not None:
            audit_record(
                action="research.keys.view",
                user=request.user,
                source=client_ip(request),
                detail={"admin": True, "query": request.GET.get("q", "")},
                patients=[r.patient_id for r in rows.result_list],
            )
        return response


@admin.register(ProjectSecret)
class ProjectSecretAdmin(_KeyRoleOnly):
    list_display = ["project", "secret"]
    fields = ["project", "secret"]
    readonly_fields = ["project", "secret"]
