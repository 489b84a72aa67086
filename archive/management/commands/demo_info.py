"""Print how to reach the running demo: web URL, DICOM address and AE titles, logins."""

from __future__ import annotations

import os
import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from archive import demo
from archive.models import Facility


class Command(BaseCommand):
    help = "Print the demo's URLs, DICOM port and AE titles, and logins."

    def handle(self, *args: Any, **opts: Any) -> None:
        host = os.environ.get("WEB_HOST", "127.0.0.1")
        port = os.environ.get("WEB_PORT", "8000")
        dicom_host = "127.0.0.1" if settings.PACS_DICOM_HOST in ("0.0.0.0", "::") else settings.PACS_DICOM_HOST
        creds = demo.demo_credentials()
        w = self.stdout.write
        w("")
        w("PACS regionale – demo")
        w(f"  Web:    http://{host}:{port}/        (amministrazione: http://{host}:{port}/admin/)")
        w(f"  DICOM:  host {dicom_host}, port {settings.PACS_DICOM_PORT}; one AE title per facility:")
        for f in Facility.objects.select_related("authority").order_by("authority__code", "code"):
            w(f"          {f.ae_title:<16} {f.code:<8} {f.name} ({f.authority.code})")
        first = Facility.objects.order_by("code").first()
        if first:
            w(
                f"          e.g.  TCP_NODELAY=1 storescu -aec {first.ae_title} {dicom_host} "
                f"{settings.PACS_DICOM_PORT} image.dcm"
            )
            w(
                f"                TCP_NODELAY=1 findscu -S -aec {first.ae_title} -k QueryRetrieveLevel=STUDY "
                f"-k PatientName=ROSSI* -k StudyInstanceUID {dicom_host} {settings.PACS_DICOM_PORT}"
            )
            w(
                f"                TCP_NODELAY=1 getscu -S -aec {first.ae_title} -od . -k QueryRetrieveLevel=STUDY "
                f"-k StudyInstanceUID=<uid> {dicom_host} {settings.PACS_DICOM_PORT}"
            )
        w(
            "          Unregistered AE titles may echo and store only; query and retrieve as FINDSCU, GETSCU or "
            "MOVESCU (that facility's studies) or RADWS (its health authority's)."
        )
        w(f"  CUP:      http://{host}:{port}/cup/  (booking desk: log in as cup; studies to reconcile: archivista)")
        w(f"  Referti:  http://{host}:{port}/refertazione/  (radiologo: ASUGI, radiologa: ASUFC)")
        if first:
            w(
                f"          worklist: TCP_NODELAY=1 findscu -W -aet CT01 -aec {first.ae_title} "
                f"-k ScheduledProcedureStepSequence[0].Modality=CT -k PatientName -k AccessionNumber "
                f"{dicom_host} {settings.PACS_DICOM_PORT}"
            )
        w(f"  DICOMweb: http://{host}:{port}/dicomweb/  (QIDO-RS, WADO-RS, STOW-RS; staff login or API token)")
        w(f"  API:      http://{host}:{port}/api/schema/swagger/  (external CUP systems: /api/cup/, token)")
        w(f"  Logins (kept in {demo.credentials_path()}):")
        for username, _first, _last, _group, role in demo.ACCOUNTS:
            if username in creds:
                w(f"          {username:<14} {creds[username]:<20} {role}")
        citizens = sorted(k for k in creds if len(k) == 16 and k.isalnum() and k.isupper())
        w(f"  FSE (cittadini): http://{host}:{port}/fse/accesso/")
        if settings.PACS_OIDC_ENABLED:
            idp = re.match(r"^https?://[^/]+", settings.OIDC_OP_AUTHORIZATION_ENDPOINT)
            w(
                f'          "Entra con SPID" or "Entra con CIE": the IdP di prova ({idp.group(0) if idp else "?"}) '
                "knows the demo citizens and every patient registered at the CUP, by codice fiscale."
            )
        if citizens:
            w("          or the demo citizens' codice fiscale and password:")
            for cf in citizens:
                w(f"          {cf:<16} {creds[cf]}")
        w("  Ctrl-C stops everything.")
        w("")
