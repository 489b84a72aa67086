"""The CUP's page of the CDs to burn (``/cup/cd/``): the media :mod:`portal.cdmedia` made
for the patients who chose CD, their ISO image to download and burn, and the
"consegnato" that records the hand-over.

The views only translate: the list, the file and the hand-over are
:mod:`portal.cdmedia`'s, which scopes them to the user's health authority (a
medium of another authority answers 404, as one that does not exist). Every
page and download is audited with the patients it shows. Mounted by
``pacs/urls.py`` under the CUP's ``/cup/`` area; the page extends the CUP
desk's skeleton (``booking/_base.html``).

Who sees which disc is the access policy's staff rule
(:func:`portal.cdmedia.media_principal`): the CD permission stands in for
``archive.view_study``, so a CUP operator sees the discs of their health
authority and never one of a study the patient hid (oscuramento), which does
not exist for professionals; the patient who wants it reveals the exam first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import FileResponse, Http404, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from kernel.audit import audit_record
from kernel.web import AuthenticatedHttpRequest, client_ip, content_disposition, perms_required

from . import cdmedia
from .errors import PortalError
from .models import CdMedium

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "portal.view_cdmedium"
DELIVER_PERMISSION = "portal.deliver_cdmedium"


def _medium(request: AuthenticatedHttpRequest, pk: int) -> CdMedium:
    try:
        return cdmedia.medium_for(user=request.user, pk=pk)
    except PortalError as exc:
        raise Http404(str(exc)) from exc


@perms_required(VIEW_PERMISSION)
@require_GET
def cd_media(request: AuthenticatedHttpRequest) -> HttpResponse:
    to_burn = list(cdmedia.media_to_burn(user=request.user))
    if request.GET.get("format") == "json":
        # What the page's script follows: ids, states and progress, no patient data (not audited).
        return JsonResponse({"media": [{"id": m.pk, "status": m.status, "percent": m.percent} for m in to_burn]})
    delivered = cdmedia.media_delivered(user=request.user)
    for patient in {m.booking.patient_id: m.booking.patient for m in [*to_burn, *delivered]}.values():
        audit_record(
            action="portal.cd.list",
            user=request.user,
            patient=patient,
            source=client_ip(request),
            detail={"page": "cd_media"},
        )
    return render(
        request,
        "portal/cd_media.html",
        {
            "to_burn": to_burn,
            "delivered": delivered,
            "preparing": any(m.status == CdMedium.Status.PREPARING for m in to_burn),
            "can_deliver": request.user.has_perm(DELIVER_PERMISSION),
        },
    )


# perms_required as it is, spelled out: it is typed for views that answer an HttpResponse.
@login_required
@permission_required((VIEW_PERMISSION, DELIVER_PERMISSION), raise_exception=True)
@require_GET
def cd_medium_download(request: AuthenticatedHttpRequest, pk: int) -> HttpResponseBase:
    """The ISO image, streamed from disk (FileResponse reads it in blocks)."""
    medium = _medium(request, pk)
    if medium.status not in (CdMedium.Status.READY, CdMedium.Status.DELIVERED) or not cdmedia.medium_file_ok(medium):
        raise Http404("CD non disponibile")
    cdmedia.medium_download_audit(medium=medium, user=request.user, source=client_ip(request))
    response = FileResponse(Path(medium.path).open("rb"), content_type="application/x-iso9660-image")
    response["Content-Disposition"] = content_disposition(
        f"CD-{medium.booking.accession_number}-v{medium.report.version}.iso"
    )
    response["Content-Length"] = str(medium.size)
    return response


@perms_required(VIEW_PERMISSION, DELIVER_PERMISSION)
@require_POST
def cd_medium_deliver(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    medium = _medium(request, pk)
    try:
        cdmedia.medium_deliver(medium=medium, user=request.user, source=client_ip(request))
    except PortalError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            _("CD dell'esame %(accession)s di %(patient)s segnato come consegnato.")
            % {"accession": medium.booking.accession_number, "patient": medium.booking.patient},
        )
    return redirect("cd_media:list")
