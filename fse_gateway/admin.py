"""The outbox in the admin: every operation and every exchange with the gateway, read-only.

Rows name a study: only those whose study the user may see are there
(:mod:`archive.access`). The one action, "Riprova", sends a failed operation
again once an operator has fixed what the gateway's text says.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from archive.admin import AuditedAdminMixin, ReadOnlyAdmin, ReadOnlyInline, VisibleRowsMixin

from . import outbox
from .models import Attempt, Operation


class AttemptInline(ReadOnlyInline):
    model = Attempt
    fields = ("at", "step", "method", "status_code", "trace_id", "duration_ms", "error", "response_body")
    readonly_fields = fields
    show_change_link = False


@admin.register(Operation)
class OperationAdmin(AuditedAdminMixin, VisibleRowsMixin, ReadOnlyAdmin):
    study_path = "study__"
    patient_path = "study__patient_id"
    list_display = (
        "pk",
        "kind",
        "status",
        "accession_number",
        "report_version",
        "attempts",
        "last_status_code",
        "short_error",
    )
    list_filter = ("status", "kind", "last_status_code")
    search_fields = ("booking__accession_number", "document_id", "target_document_id", "trace_id", "last_error")
    date_hierarchy = "created_at"
    list_select_related = ("booking", "report")
    readonly_fields = [f.name for f in Operation._meta.fields]
    inlines = [AttemptInline]
    actions = ["retry"]

    def audit_subject(self, obj: Operation) -> dict[str, Any]:
        return {"patient": obj.study.patient, "study": obj.study}

    @admin.display(description=_("accettazione"), ordering="booking__accession_number")
    def accession_number(self, obj: Operation) -> str:
        return obj.booking.accession_number

    @admin.display(description=_("versione"), ordering="report__version")
    def report_version(self, obj: Operation) -> str:
        return f"v{obj.report.version} ({obj.report.get_kind_display()})"

    @admin.display(description=_("errore del gateway"))
    def short_error(self, obj: Operation) -> str:
        return obj.last_error.splitlines()[0][:120] if obj.last_error else ""

    def get_actions(self, request: HttpRequest) -> Any:
        # ReadOnlyAdmin denies change, which would hide the action: it needs only "view" of a visible row.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description=_("Riprova le operazioni rifiutate selezionate"), permissions=["view"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        if not request.user.has_perm("fse_gateway.change_operation"):
            self.message_user(request, _("Non hai il permesso di inviare di nuovo le operazioni."), messages.ERROR)
            return
        count = sum(outbox.operation_retry(op=op, user=request.user) for op in queryset)
        if count:
            from .tasks import _enqueue, operation_send

            for op in queryset.filter(status=Operation.Status.PENDING):
                _enqueue(operation_send, op.pk)
        self.message_user(
            request,
            ngettext("%(n)d operazione sarà inviata di nuovo.", "%(n)d operazioni saranno inviate di nuovo.", count)
            % {"n": count},
            messages.SUCCESS if count else messages.WARNING,
        )


@admin.register(Attempt)
class AttemptAdmin(AuditedAdminMixin, VisibleRowsMixin, ReadOnlyAdmin):
    study_path = "operation__study__"
    patient_path = "operation__study__patient_id"
    list_display = ("pk", "operation", "step", "method", "status_code", "trace_id", "at", "duration_ms")
    list_filter = ("step", "status_code")
    search_fields = ("trace_id", "error", "response_body")
    date_hierarchy = "at"
    readonly_fields = [f.name for f in Attempt._meta.fields]
    list_select_related = ("operation",)

    def audit_subject(self, obj: Attempt) -> dict[str, Any]:
        return {"patient": obj.operation.study.patient, "study": obj.operation.study}
