"""The research exports' pages: projects, an export's request and progress, its download, the key table.

Views translate and call :mod:`research.services`. An export is its
requester's: anyone else (a colleague, the DPO) gets 404 for it, as for one
that does not exist. The key table is the data-protection role's
(``research.view_pseudonymkey``): anyone else gets 403, recorded in the audit log.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from kernel.audit import audit_record
from kernel.errors import NotFound
from kernel.models import AuditEvent
from kernel.web import AuthenticatedHttpRequest, client_ip, perms_required

from . import services
from .forms import ExportForm, ProjectForm
from .models import KEY_PERM, Export, ExportProject, PseudonymKey

VIEW_PROJECT = "research.view_exportproject"
ADD_PROJECT = "research.add_exportproject"
ADD_EXPORT = "research.add_export"


@perms_required(VIEW_PROJECT)
@require_http_methods(["GET", "POST"])
def projects(request: AuthenticatedHttpRequest) -> HttpResponse:
    may_create = request.user.has_perm(ADD_PROJECT)
    form = ProjectForm(request.POST or None) if may_create else None
    if request.method == "POST":
        if form is None:
            return HttpResponse(status=403)
        if form.is_valid():
            data = dict(form.cleaned_data)
            data["pixel_regions"] = data.pop("regions")
            project = services.project_create(user=request.user, **data)
            messages.success(request, _("Progetto creato."))
            return redirect("research:project", project.pk)
    return render(
        request,
        "research/projects.html",
        {"projects": ExportProject.objects.all(), "form": form, "may_see_keys": request.user.has_perm(KEY_PERM)},
    )


@perms_required(VIEW_PROJECT)
@require_http_methods(["GET", "POST"])
def project(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(ExportProject, pk=pk)
    may_export = request.user.has_perm(ADD_EXPORT)
    if request.method == "POST" and not may_export:
        raise PermissionDenied
    form = ExportForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            export = services.export_request(
                project=project, user=request.user, criteria=form.criteria(), source=client_ip(request)
            )
        except NotFound:
            # A hidden study and a missing one read alike.
            form.add_error(None, _("Nessuno studio corrisponde ai criteri indicati."))
            status = 404
        except services.ExportError:
            form.add_error(None, _("I criteri indicati non sono validi."))
            status = 400
        else:
            return redirect("research:export", export.pk)
    elif request.method == "POST":
        status = 400
    exports = Export.objects.filter(project=project, requested_by=request.user)
    return render(
        request,
        "research/project.html",
        {
            "project": project,
            "form": form,
            "exports": exports,
            "options": services.project_options(project),
            "may_export": may_export,
            "may_see_keys": request.user.has_perm(KEY_PERM),
        },
        status=status,
    )


def _own_export(request: AuthenticatedHttpRequest, pk: int) -> Export:
    export = Export.objects.select_related("project").filter(pk=pk, requested_by_id=request.user.pk).first()
    if export is None:
        raise Http404
    return export


@perms_required(ADD_EXPORT)
def export(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    export = _own_export(request, pk)
    ready = export.status == Export.Status.READY
    url = reverse("research:download", args=[export.pk]) if ready else ""
    if request.GET.get("format") == "json":
        return JsonResponse(
            {"status": export.status, "percent": export.percent, "download_url": url, "error": bool(export.error)}
        )
    return render(request, "research/export.html", {"export": export, "download_url": url})


@perms_required(ADD_EXPORT)
def download(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    try:
        export = services.export_for_download(export_pk=pk, user=request.user, source=client_ip(request))
    except NotFound as exc:
        raise Http404 from exc
    name = f"esportazione-{export.project.code}-{export.pk}.zip"
    response = FileResponse(open(export.path, "rb"), as_attachment=True, filename=name, content_type="application/zip")
    return response  # type: ignore[return-value]  # a streaming response, served as any page's


@perms_required(VIEW_PROJECT)
def keys(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(ExportProject, pk=pk)
    if not request.user.has_perm(KEY_PERM):
        audit_record(
            action="research.keys.view",
            outcome=AuditEvent.Outcome.DENIED,
            user=request.user,
            source=client_ip(request),
            detail={"project": project.code},
        )
        return render(request, "research/keys_refused.html", {"project": project}, status=403)
    rows = list(PseudonymKey.objects.filter(project=project).select_related("patient").order_by("pseudonym"))
    audit_record(
        action="research.keys.view",
        user=request.user,
        source=client_ip(request),
        detail={"project": project.code, "rows": len(rows)},
        patients=[r.patient_id for r in rows],
    )
    return render(request, "research/keys.html", {"project": project, "rows": rows})
