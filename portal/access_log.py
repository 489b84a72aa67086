"""«Chi ha visto i miei dati»: the audit log of a citizen's data, in words.

Every :class:`~kernel.models.AuditEvent` about the citizen (and the people
they act for) is shown: who (a professional, a DICOM device, a background
process, the citizen or their delegate), when, from where, what, and with
what outcome; and every search whose answer included them (C-FIND, QIDO-RS,
the API's and the admin's lists record the patients they returned:
:class:`~kernel.models.AuditEventPatient`). The audit log is the only
source: nothing is hidden from it.

Emergency accesses (*accesso in emergenza*: a professional opening the
citizen's hidden exams) come first and apart, with who, when, until when and
the reason the professional gave (DPCM 178/2015: the patient sees them with
their reason), read from their own rows (:class:`~portal.models.EmergencyAccess`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.utils.translation import gettext_lazy as _

from archive.models import Patient, StaffProfile
from kernel.models import AuditEvent, AuditEventPatient

from .emergency import emergency_access_until
from .models import EmergencyAccess

# Longest prefix first: what an action means for the citizen.
ACTIONS: list[tuple[str, Any]] = [
    ("portal.exams.view", _("ha consultato l'elenco degli esami sul Fascicolo")),
    ("portal.exam.view", _("ha aperto la pagina dell'esame sul Fascicolo")),
    ("portal.exam.denied", _("ha chiesto un esame non suo (rifiutato)")),
    ("portal.download", _("ha scaricato un documento dal Fascicolo")),
    ("portal.package", _("ha chiesto le immagini da scaricare")),
    ("portal.viewer", _("ha visto le immagini sul Fascicolo")),
    ("portal.access_log", _("ha consultato questo registro degli accessi")),
    ("portal.delegation", _("ha gestito una delega")),
    ("portal.delegations", _("ha consultato le deleghe")),
    ("portal.conceal", _("ha oscurato un esame")),
    ("portal.reveal", _("ha reso di nuovo visibile un esame")),
    ("portal.emergency_access", _("ha chiesto un accesso in emergenza ai tuoi esami oscurati")),
    ("portal.consent_revoke", _("ha chiesto di revocare il consenso alla consegna online")),
    ("portal.publish", _("ha pubblicato il referto sul Fascicolo")),
    ("portal.withdraw", _("ha ritirato il referto dal Fascicolo")),
    ("portal.login", _("ha effettuato l'accesso al Fascicolo")),
    ("report.view", _("ha letto il referto")),
    ("report.download", _("ha scaricato il referto")),
    ("report.sign", _("ha firmato il referto")),
    ("report.amend", _("ha aperto una nuova versione del referto")),
    ("report", _("ha lavorato al referto")),
    ("study.view", _("ha aperto lo studio e le immagini")),
    ("reporting.patient", _("ha consultato l'elenco dei tuoi studi")),
    ("study.denied", _("ha tentato di aprire lo studio (rifiutato)")),
    ("dicom.store", _("ha inviato immagini all'archivio")),
    ("dicom.retrieve", _("ha ricevuto immagini dall'archivio")),
    ("dicom.find", _("ha cercato gli studi nell'archivio")),
    ("dicom.query", _("ha cercato gli studi nell'archivio da un'apparecchiatura DICOM")),
    ("dicom.worklist", _("ha consultato la lista di lavoro di un'apparecchiatura")),
    ("dicomweb.search", _("ha cercato gli studi nell'archivio via DICOMweb")),
    ("api.studies", _("ha cercato gli studi nell'archivio tramite l'API")),
    ("api.study", _("ha consultato lo studio tramite l'API")),
    ("dicom", _("ha scambiato dati DICOM con l'archivio")),
    ("dicomweb", _("ha consultato le immagini via DICOMweb")),
    ("cup.booking.consent_revoke", _("ha registrato la revoca del consenso alla consegna online")),
    ("cup.booking.choice", _("ha registrato la scelta di consegna")),
    ("cup", _("ha gestito la prenotazione")),
    ("booking.match", _("ha associato le immagini alla prenotazione")),
    ("booking", _("ha gestito l'associazione delle immagini alla prenotazione")),
    ("admin", _("ha consultato o modificato i dati in amministrazione")),
    ("archive.study.patient_assign", _("ha corretto il paziente dello studio")),
]
ACTIONS.sort(key=lambda item: -len(item[0]))


def action_label(action: str) -> str:
    for prefix, label in ACTIONS:
        if action == prefix or action.startswith(prefix + "."):
            return str(label)
    return action


@dataclass(frozen=True)
class AccessRow:
    at: Any
    who: str
    kind: str  # you, delegate, staff, device, system
    what: str
    exam: str
    outcome: str
    outcome_code: str
    source: str
    about: str  # whose data, when the citizen acts for others
    emergency: bool = False  # an emergency access granted: shown apart too, with its reason


def _who(event: AuditEvent, viewer: Any) -> tuple[str, str]:
    if event.user_id is not None:
        if event.user_id == viewer.pk:
            return str(_("Lei")), "you"
        user = event.user
        citizen = getattr(user, "citizen", None) if user is not None else None
        name = (user.get_full_name() if user is not None else "") or event.username
        if citizen is not None:
            return f"{name} ({_('delegato')})" if event.detail.get("acting_for") else name, "delegate"
        return name, "staff"
    if event.ae_title:
        return f"{_('Apparecchiatura DICOM')} {event.ae_title}", "device"
    if event.system:
        return str(_("Sistema (procedura automatica)")), "system"
    return event.username or str(_("Sconosciuto")), "system"


def access_log_events(*, patients: Iterable[Patient]) -> QuerySet[AuditEvent]:
    """Events about ``patients``, and searches whose answer included one of them, newest first."""
    ids = [p.pk for p in patients]
    returned = AuditEventPatient.objects.filter(patient__in=ids)
    # A UNION of the two indexed look-ups: an OR over the subquery would make
    # the database filter every audit event (346 ms against 9 ms at 400,000).
    about = AuditEvent.objects.filter(patient__in=ids).order_by().values("pk")
    return (
        AuditEvent.objects.filter(pk__in=about.union(returned.order_by().values("event")))
        .select_related("user", "user__citizen", "study", "patient")
        .prefetch_related(
            Prefetch("patient_links", queryset=returned.select_related("patient"), to_attr="returned_links")
        )
        .order_by("-at", "-pk")
    )


class _Rows:
    """A lazily mapped query, so that the paginator counts and slices in the database."""

    def __init__(self, events: QuerySet[AuditEvent], viewer: Any, many: bool) -> None:
        self.events = events
        self.viewer = viewer
        self.many = many

    def count(self) -> int:
        return self.events.count()

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index: slice) -> list[AccessRow]:
        return [self._row(event) for event in self.events[index]]

    def _row(self, event: AuditEvent) -> AccessRow:
        who, kind = _who(event, self.viewer)
        exam = ""
        if event.study is not None:
            exam = f"{event.study.study_description or _('Studio')} {event.study.study_date or ''}".strip()
        elif event.detail.get("accession_number"):
            exam = str(event.detail["accession_number"])
        what = action_label(event.action)
        about = str(event.patient) if event.patient is not None else ""
        links = getattr(event, "returned_links", [])
        if links and not any(link.patient_id == event.patient_id for link in links):
            # Found through the search's answer, not as its subject.
            found = _("tra i risultati") if self.many else _("i tuoi dati erano tra i risultati")
            what = f"{what}: {found}"
            about = ", ".join(str(link.patient) for link in links)
        return AccessRow(
            at=event.at,
            who=who,
            kind=kind,
            what=what,
            exam=exam,
            outcome=event.get_outcome_display(),
            outcome_code=event.outcome,
            source=event.source,
            about=about if self.many else "",
            emergency=event.action == "portal.emergency_access" and event.outcome == AuditEvent.Outcome.SUCCESS,
        )


def access_log_rows(*, patients: list[Patient], viewer: Any) -> _Rows:
    return _Rows(access_log_events(patients=patients), viewer, many=len(patients) > 1)


@dataclass(frozen=True)
class EmergencyRow:
    at: dt.datetime
    until: dt.datetime
    who: str
    where: str  # the professional's health authority, when known
    reason: str
    about: str  # whose exams, when the citizen acts for others


def emergency_access_rows(*, patients: list[Patient]) -> list[EmergencyRow]:
    """Every emergency access to ``patients``' exams, newest first, with its reason."""
    rows = list(
        EmergencyAccess.objects.filter(patient__in=[p.pk for p in patients])
        .select_related("user", "patient")
        .order_by("-at", "-pk")
    )
    authorities = dict(
        StaffProfile.objects.filter(user_id__in={r.user_id for r in rows}, authority__isnull=False).values_list(
            "user_id", "authority__name"
        )
    )
    many = len(patients) > 1
    return [
        EmergencyRow(
            at=row.at,
            until=emergency_access_until(row),
            who=row.user.get_full_name() or row.user.get_username(),
            where=authorities.get(row.user_id, ""),
            reason=row.reason,
            about=str(row.patient) if many else "",
        )
        for row in rows
    ]
