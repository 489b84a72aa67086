"""The access matrix of the web: every URL pattern Django's resolver knows, against
every kind of principal and every kind of study (issue 15).

The routes are read from the resolver, not from a list: a route, or a model
registered in the admin, without a decision in the tables below fails
:func:`test_every_route_has_a_decision`. Each decision says what the route
shows and how to fill its parameters for one study; the matrix then asks
each route as each principal for each study and checks:

* a principal never receives a study it may not see: the study's UIDs,
  accession number, description and its patient's codice fiscale appear
  nowhere in the answer, and a route that names the study answers as for a
  missing one (404, the login page, a 403 of a page the principal may not
  use at all, or the admin's "does not exist");
* a principal allowed the route (the superusers on staff routes, the
  citizens on theirs) gets it for the studies it may see, so that none of
  the refusals above is an accident.

The DIMSE services have their own matrix: tests/archive/test_dimse_matrix.py.

What each principal may see is written here by hand, not asked of the policy:

=================  ============================================================
anonymous          nothing
admin_asugi        superuser of ASUGI: Rossi's study (Bianchi's is hidden, Verdi's is ASUFC's)
admin_emergency    the same, with a live emergency access for Bianchi: Rossi's and Bianchi's
admin_region       superuser of no authority: Rossi's and Verdi's (never a hidden one)
rad_asufc          radiologist of ASUFC: Verdi's (checked only for what it must not see)
mario              citizen Rossi: his own exam
laura              citizen Bianchi: her own exam, which she hid
delegate           a citizen with Rossi's delegation: Rossi's exam
=================  ============================================================

One instance of Rossi's study was withdrawn by a rejection note (IOCM,
archive.rejection): nobody finds it or the note on any route but the admin's
pages of rejection notes and storage, not even who sees Rossi's study.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from archive.ingest import instance_ingest
from archive.models import (
    Copy,
    Instance,
    Patient,
    RejectionNote,
    Report,
    Series,
    StaffProfile,
    StorageAlert,
    Study,
)
from archive.reporting import services as reports
from archive.sample_data import rejection_note
from booking.models import Booking
from kernel.audit import audit_record
from portal import links, publication
from portal.accounts import citizen_account_create
from portal.models import CdMedium, CitizenAccount, Delegation, DownloadPackage
from tests.access_helpers import Scene, emergency, hide
from tests.access_helpers import scene as scene  # noqa: F401  (the shared fixture)
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, MARIO_CF, Cup, linked_booking
from tests.portal.portal_helpers import CITIZEN_PASSWORD, citizen_login
from tests.reporting_helpers import EXPOSURE_TEXT, RADIOLOGIST_PASSWORD
from tests.reporting_helpers import reporting as reporting  # noqa: F401

cup = booking_fixtures.cup

pytestmark = pytest.mark.slow

TARGETS = ("rossi", "bianchi", "verdi")
SEES: dict[str, set[str]] = {
    "anonymous": set(),
    "admin_asugi": {"rossi"},
    "admin_emergency": {"rossi", "bianchi"},
    "admin_region": {"rossi", "verdi"},
    "rad_asufc": {"verdi"},
    "mario": {"rossi"},
    "laura": {"bianchi"},
    "delegate": {"rossi"},
}
STAFF = ("admin_asugi", "admin_emergency", "admin_region", "rad_asufc")
CITIZENS = ("mario", "laura", "delegate")
# Principals that must be let through where they may see: allowed every staff route (superusers) or
# every citizen route (the citizens); the ASUFC radiologist lacks permissions for most pages.
ALLOWED = {"staff": ("admin_asugi", "admin_emergency", "admin_region"), "citizen": CITIZENS}
# Staff of no health authority keep the region's patient registry (the patients, not their hidden studies).
REGISTRY_STAFF = ("admin_region",)
DELEGATE_CF = "ZNTGLI90S63G888K"  # Zanetti Giulia


# --- the world ---------------------------------------------------------------------


@dataclass
class Target:
    name: str
    study: Study
    patient: Patient
    series: Series
    instance: Instance
    report: Report
    booking: Booking
    package: DownloadPackage
    markers: list[str] = field(default_factory=list)  # what identifies the study's data
    patient_markers: list[str] = field(default_factory=list)  # what identifies its patient


@dataclass
class World:
    scene: Scene
    cup: Cup
    targets: dict[str, Target]
    users: dict[str, Any]
    clients: dict[str, Client]
    withdrawn: list[str] = field(default_factory=list)  # a rejected instance and its note: shown to nobody
    cd_media: dict[str, int] = field(default_factory=dict)  # a ready CD per study (portal.cdmedia)


def _reject_one(study: Study, tmp_path: Any) -> list[str]:
    """A rejection note from Rossi's CT withdraws the last instance of his study; the UIDs
    of the instance and of the note (both out of regular use)."""
    from pydicom import dcmread

    from archive.storage import tiers as storage

    instance = Instance.objects.filter(series__study=study).order_by("-pk").first()
    copy = Copy.objects.get(instance=instance)
    header = dcmread(storage.absolute_path(copy.tier, copy.path), stop_before_pixels=True)
    note = rejection_note([header], code="113001")
    path = tmp_path / "rejection-note.dcm"
    note.save_as(path, enforce_file_format=True)
    instance_ingest(path=path, facility=study.facility, owned=False, calling_ae="CT01")
    assert RejectionNote.objects.filter(sop_instance_uid=note.SOPInstanceUID).exists()
    return [str(instance.sop_instance_uid), str(note.SOPInstanceUID)]


def _superuser(username: str, authority: Any) -> Any:
    user = get_user_model().objects.create_superuser(username=username, password=RADIOLOGIST_PASSWORD)
    StaffProfile.objects.create(user=user, authority=authority)
    return user


def _sign(study: Study, user: Any) -> Report:
    draft = reports.report_draft_start(study=study, user=user)
    draft = reports.report_save(
        report=draft,
        user=user,
        revision=draft.revision,
        clinical_question="Controllo.",
        technique="TC senza mezzo di contrasto.",
        findings="Reperto di prova.",
        conclusion="Nella norma.",
        exposure=EXPOSURE_TEXT,
        exposure_confirmed=True,
    )
    return reports.report_sign(report=draft, user=user, password=RADIOLOGIST_PASSWORD, revision=draft.revision)


def _target(name: str, study: Study, report: Report, booking: Booking, cf: str) -> Target:
    study = Study.objects.select_related("patient", "facility").get(pk=study.pk)
    description = f"ESAME-{name.upper()}-MATRICE"
    Study.objects.filter(pk=study.pk).update(study_description=description)
    series = list(Series.objects.filter(study=study).order_by("series_number", "pk"))
    instances = list(Instance.objects.filter(series__study=study).order_by("pk"))
    package = DownloadPackage.objects.create(study=study, kind="jpeg", fingerprint=f"{name:0<64}"[:64])
    markers = [
        study.study_instance_uid,
        description,
        *(s.series_instance_uid for s in series),
        *(i.sop_instance_uid for i in instances),
    ]
    return Target(
        name=name,
        study=study,
        patient=study.patient,
        series=series[0],
        instance=instances[0],
        report=report,
        booking=booking,
        package=package,
        markers=markers,
        patient_markers=[cf],
    )


@pytest.fixture
def world(cup: Cup, scene: Scene, tmp_path: Any) -> World:  # noqa: F811  (cup first: it registers the patients)
    s = scene
    withdrawn = _reject_one(s.rossi, tmp_path)
    rep = s.rep
    # Each study booked online, reported by a radiologist of its authority, published to its patient.
    b_rossi = linked_booking(cup, s.rossi)
    b_bianchi = linked_booking(cup, s.bianchi, patient=cup.laura)
    verdi_patient = s.verdi.patient
    b_verdi = cup.book(patient=verdi_patient)
    Study.objects.filter(pk=s.verdi.pk).update(accession_number=b_verdi.accession_number)
    Booking.objects.filter(pk=b_verdi.pk).update(study=s.verdi, status=Booking.Status.PERFORMED)
    b_verdi.refresh_from_db()
    reports_ = {
        "rossi": _sign(s.rossi, rep.radiologist),
        "bianchi": _sign(s.bianchi, rep.radiologist),
        "verdi": _sign(s.verdi, rep.foreign),
    }
    for name, study in (("rossi", s.rossi), ("bianchi", s.bianchi), ("verdi", s.verdi)):
        publication.report_publish(report_pk=reports_[name].pk, study_pk=study.pk)
    # Bianchi hides her study from health professionals.
    hide(s.bianchi)
    targets = {
        "rossi": _target("rossi", s.rossi, reports_["rossi"], b_rossi, MARIO_CF),
        "bianchi": _target("bianchi", s.bianchi, reports_["bianchi"], b_bianchi, LAURA_CF),
        "verdi": _target("verdi", s.verdi, reports_["verdi"], b_verdi, str(verdi_patient.codice_fiscale)),
    }
    for t in targets.values():
        audit_record(action="test.matrix", study=t.study, detail={"note": "an event about the study"})
        copy = Copy.objects.filter(instance=t.instance).first()
        StorageAlert.objects.create(
            kind=StorageAlert.Kind.DAMAGED,
            tier=copy.tier if copy else "x",
            path=copy.path if copy else "x",
            instance=t.instance,
            detail="matrice",
        )
    # A CD ready to burn for each study (its image a stand-in file: the matrix asks who gets it).
    cd_media = {}
    for name, t in targets.items():
        image = tmp_path / f"cd-{name}.iso"
        image.write_bytes(b"ISO 9660 " + name.encode())
        cd_media[name] = CdMedium.objects.create(
            booking=t.booking,
            report=t.report,
            status=CdMedium.Status.READY,
            path=str(image),
            size=image.stat().st_size,
            sha256="0" * 64,
        ).pk
    users: dict[str, Any] = {
        "admin_asugi": _superuser("admin-asugi", rep.region.authority),
        "admin_emergency": _superuser("admin-emergenza", rep.region.authority),
        "admin_region": _superuser("admin-regione", None),
        "rad_asufc": rep.foreign,
    }
    emergency(users["admin_emergency"], targets["bianchi"].patient)
    delegate_patient = Patient.objects.create(codice_fiscale=DELEGATE_CF, family_name="ZANETTI", given_name="GIULIA")
    Delegation.objects.create(
        delegator=cup.mario,
        delegate=delegate_patient,
        kind=Delegation.Kind.OTHER,
        evidence="delega firmata",
        registered_by=cup.operator.user,
    )
    for name, cf in (("mario", MARIO_CF), ("laura", LAURA_CF), ("delegate", DELEGATE_CF)):
        users[name] = citizen_account_create(codice_fiscale=cf, password=CITIZEN_PASSWORD)
    clients: dict[str, Client] = {"anonymous": Client()}
    for name in STAFF:
        clients[name] = Client()
        clients[name].force_login(users[name])
    for name, cf in (("mario", MARIO_CF), ("laura", LAURA_CF), ("delegate", DELEGATE_CF)):
        clients[name] = Client()
        assert citizen_login(clients[name], cf).status_code == 302
    return World(
        scene=s, cup=cup, targets=targets, users=users, clients=clients, withdrawn=withdrawn, cd_media=cd_media
    )


# --- decisions ---------------------------------------------------------------------

PUBLIC = "public"  # shows no study's data to anyone
REGISTRY = "registry"  # the CUP's patients and bookings: never a study's DICOM data
ONE = "one"  # names one study's resource: the study's own data, or absent
SEARCH = "search"  # lists or searches studies: only what the principal may see
ACTION = "action"  # acts on one study's data (POST): refused for a study the principal may not see

Fill = Callable[[World, Target], str]


@dataclass(frozen=True)
class Decision:
    kind: str
    family: str = ""  # "staff" or "citizen": who may use the route at all
    fill: Fill | None = None  # the URL for one study (ONE, ACTION, SEARCH per study)
    finds: bool = False  # SEARCH: an allowed principal finds a study it may see (its UID shows)
    method: str = "get"
    patient: bool = False  # names the study's patient: the region's registry staff see every patient


def _t(pattern: str, **values: Callable[[World, Target], Any]) -> Fill:
    """The route's pattern with each <converter:name> replaced by ``values[name](world, target)``."""

    def fill(w: World, t: Target) -> str:
        def sub(m: re.Match[str]) -> str:
            return str(values[m.group(1)](w, t))

        return "/" + re.sub(r"<(?:\w+:)?(\w+)>", sub, pattern)

    return fill


def _q(path: str, **params: Callable[[World, Target], Any]) -> Fill:
    def fill(w: World, t: Target) -> str:
        return f"/{path}?" + urlencode({k: v(w, t) for k, v in params.items()})

    return fill


STUDY_UID = lambda w, t: t.study.study_instance_uid  # noqa: E731
SERIES_UID = lambda w, t: t.series.series_instance_uid  # noqa: E731
SOP_UID = lambda w, t: t.instance.sop_instance_uid  # noqa: E731
FACILITY = lambda w, t: t.study.facility.code  # noqa: E731
DICOMWEB = {
    "study": STUDY_UID,
    "series": SERIES_UID,
    "instance": SOP_UID,
    "frames": lambda w, t: 1,
    "tags": lambda w, t: "7FE00010",
    "facility": FACILITY,
}


def _dicomweb_decision(route: str) -> Decision:
    if route.endswith("/wado"):
        fill = _q(
            route,
            requestType=lambda w, t: "WADO",
            studyUID=STUDY_UID,
            seriesUID=SERIES_UID,
            objectUID=SOP_UID,
            contentType=lambda w, t: "application/dicom",
        )
        if "<facility" in route:
            prefix = route.split("/wado")[0]

            def fill_facility(w: World, t: Target, inner: Fill = fill, prefix: str = prefix) -> str:
                return inner(w, t).replace(prefix, prefix.replace("<facility:facility>", t.study.facility.code), 1)

            return Decision(ONE, "staff", fill_facility)
        return Decision(ONE, "staff", fill)
    tail = route.split("/")[-1]
    if tail in ("studies", "series", "instances") and route.count("<") <= 1 + ("<facility" in route):
        # A search: QIDO-RS for the study's UID (nested searches name the study in the path).
        if ":study>" in route or ":series>" in route:
            return Decision(SEARCH, "staff", _t(route, **DICOMWEB), finds=True)
        return Decision(
            SEARCH,
            "staff",
            lambda w, t, r=route: (
                _t(r, **DICOMWEB)(w, t) + "?" + urlencode({"StudyInstanceUID": t.study.study_instance_uid})
            ),
            finds=True,
        )
    if tail == "instances" and ":series>" in route:
        return Decision(SEARCH, "staff", _t(route, **DICOMWEB), finds=True)
    return Decision(ONE, "staff", _t(route, **DICOMWEB))


DECISIONS: dict[str, Decision] = {
    "": Decision(PUBLIC),
    # Operations (pacs.ops): liveness and readiness name checks and tiers, never a study or a path;
    # /metrics is refused outside its allowlist (loopback: the test client's 127.0.0.1 passes) and
    # shows counts per facility only (tests/ops).
    "health/live/": Decision(PUBLIC),
    "health/ready/": Decision(PUBLIC),
    "metrics": Decision(PUBLIC),
    # The research exports' pages show projects and pseudonymised summaries, no study's data; the
    # study an export names (in the POST's body) is refused as missing when hidden (tests/research).
    "ricerca/": Decision(PUBLIC),
    "ricerca/progetti/<int:pk>/": Decision(PUBLIC),
    "ricerca/progetti/<int:pk>/chiavi/": Decision(PUBLIC),
    "ricerca/esportazioni/<int:pk>/": Decision(PUBLIC),
    "ricerca/esportazioni/<int:pk>/scarica/": Decision(PUBLIC),
    # DICOMweb's service root answers OPTIONS only (the capabilities, no data): a GET is refused.
    "dicomweb/": Decision(PUBLIC),
    "dicomweb/<facility:facility>/": Decision(PUBLIC, fill=_t("dicomweb/<facility:facility>/", facility=FACILITY)),
    "i18n/setlang/": Decision(PUBLIC),
    "accounts/login/": Decision(PUBLIC),
    # Asked with GET (405): a POST would log the principal out for the rest of the matrix.
    "accounts/logout/": Decision(PUBLIC),
    "accounts/password_change/": Decision(PUBLIC),
    "accounts/password_change/done/": Decision(PUBLIC),
    "accounts/password_reset/": Decision(PUBLIC),
    "accounts/password_reset/done/": Decision(PUBLIC),
    "accounts/reset/<uidb64>/<token>/": Decision(PUBLIC, fill=lambda w, t: "/accounts/reset/MQ/set-password/"),
    "accounts/reset/done/": Decision(PUBLIC),
    # The CUP desk: the region's patients and bookings, never a study's DICOM data.
    "cup/": Decision(PUBLIC),
    "cup/pazienti/": Decision(REGISTRY, fill=_q("cup/pazienti/", q=lambda w, t: t.patient.codice_fiscale)),
    "cup/pazienti/nuovo/": Decision(PUBLIC),
    "cup/pazienti/<int:pk>/": Decision(REGISTRY, fill=_t("cup/pazienti/<int:pk>/", pk=lambda w, t: t.patient.pk)),
    # Decodes a typed codice fiscale (birth date, sex, place): reads no record.
    "cup/pazienti/codice-fiscale/": Decision(PUBLIC),
    "cup/pazienti/<int:pk>/prima-disponibilita/": Decision(
        REGISTRY, fill=_t("cup/pazienti/<int:pk>/prima-disponibilita/", pk=lambda w, t: t.patient.pk)
    ),
    "cup/pazienti/<int:pk>/prenota/": Decision(
        REGISTRY, fill=_t("cup/pazienti/<int:pk>/prenota/", pk=lambda w, t: t.patient.pk)
    ),
    **{
        f"cup/prenotazioni/<str:accession>/{tail}": Decision(
            REGISTRY,
            fill=_t(f"cup/prenotazioni/<str:accession>/{tail}", accession=lambda w, t: t.booking.accession_number),
        )
        for tail in ("", "consegna/", "annulla/", "arrivo/", "ricevuta.pdf")
    },
    # The reconciliation queue holds the studies that matched no booking (none here: every one matched).
    "cup/riconciliazione/": Decision(SEARCH, "staff"),
    "cup/riconciliazione/<int:pk>/": Decision(ONE, "staff"),
    "cup/riconciliazione/<int:pk>/collega/": Decision(ACTION, "staff"),
    "cup/riconciliazione/<int:pk>/riassegna/": Decision(ACTION, "staff"),
    "cup/riconciliazione/<int:pk>/respingi/": Decision(ACTION, "staff"),
    # The CDs to burn (portal.cd_views): the staff rule, the CD permission standing in for view_study.
    "cup/cd/": Decision(SEARCH, "staff"),
    "cup/cd/<int:pk>/immagine.iso": Decision(
        ONE, "staff", fill=lambda w, t: f"/cup/cd/{w.cd_media[t.name]}/immagine.iso"
    ),
    "cup/cd/<int:pk>/consegnato/": Decision(
        ACTION, "staff", fill=lambda w, t: f"/cup/cd/{w.cd_media[t.name]}/consegnato/"
    ),
    # The citizen's portal.
    "fse/accesso/": Decision(PUBLIC),
    "fse/": Decision(SEARCH, "citizen"),
    "fse/esami/<int:pk>/": Decision(ONE, "citizen", _t("fse/esami/<int:pk>/", pk=lambda w, t: t.booking.pk)),
    "fse/esami/<int:pk>/pacchetti/<str:kind>/": Decision(
        ACTION,
        "citizen",
        _t("fse/esami/<int:pk>/pacchetti/<str:kind>/", pk=lambda w, t: t.booking.pk, kind=lambda w, t: "jpeg"),
    ),
    "fse/esami/<int:pk>/immagini/": Decision(
        ONE, "citizen", _t("fse/esami/<int:pk>/immagini/", pk=lambda w, t: t.booking.pk)
    ),
    "fse/esami/<int:pk>/immagini/<int:instance_pk>.jpg": Decision(
        ONE,
        "citizen",
        _t(
            "fse/esami/<int:pk>/immagini/<int:instance_pk>.jpg",
            pk=lambda w, t: t.booking.pk,
            instance_pk=lambda w, t: t.instance.pk,
        ),
    ),
    "fse/esami/<int:pk>/oscuramento/": Decision(
        ACTION, "citizen", _t("fse/esami/<int:pk>/oscuramento/", pk=lambda w, t: t.booking.pk)
    ),
    "fse/esami/<int:pk>/revoca-consenso/": Decision(
        ACTION, "citizen", _t("fse/esami/<int:pk>/revoca-consenso/", pk=lambda w, t: t.booking.pk)
    ),
    "fse/pacchetti/<int:pk>/": Decision(ONE, "citizen", _t("fse/pacchetti/<int:pk>/", pk=lambda w, t: t.package.pk)),
    # A signed link is made for the principal asking (see _url): only a principal who sees the report opens it.
    "fse/scarica/<str:token>/": Decision(ONE, "citizen", _t("fse/scarica/<str:token>/", token=lambda w, t: "TOKEN")),
    "fse/accessi/": Decision(SEARCH, "citizen"),
    "fse/deleghe/": Decision(PUBLIC),
    # SPID/CIE over OpenID Connect: off to the identity provider, and back with a code.
    "fse/oidc/authenticate/": Decision(PUBLIC),
    "fse/oidc/callback/": Decision(PUBLIC),
    # The portal's desk: the emergency access is asked for a codice fiscale (a form), delegations are registry data.
    "fse/sportello/emergenza/": Decision(PUBLIC),
    "fse/sportello/deleghe/": Decision(PUBLIC),
    "fse/sportello/deleghe/<int:pk>/revoca/": Decision(
        PUBLIC, fill=lambda w, t: f"/fse/sportello/deleghe/{Delegation.objects.get().pk}/revoca/"
    ),
    # The radiologist's pages.
    "refertazione/": Decision(SEARCH, "staff"),
    "refertazione/studi/<int:pk>/": Decision(
        ONE, "staff", _t("refertazione/studi/<int:pk>/", pk=lambda w, t: t.study.pk)
    ),
    "refertazione/studi/<int:pk>/viewer/": Decision(
        ONE, "staff", _t("refertazione/studi/<int:pk>/viewer/", pk=lambda w, t: t.study.pk)
    ),
    "refertazione/pazienti/<int:pk>/": Decision(
        ONE, "staff", _t("refertazione/pazienti/<int:pk>/", pk=lambda w, t: t.patient.pk), patient=True
    ),
    "refertazione/studi/<int:pk>/inizia/": Decision(
        ACTION, "staff", _t("refertazione/studi/<int:pk>/inizia/", pk=lambda w, t: t.study.pk)
    ),
    "refertazione/referti/<int:pk>/": Decision(
        ONE, "staff", _t("refertazione/referti/<int:pk>/", pk=lambda w, t: t.report.pk)
    ),
    **{
        f"refertazione/referti/<int:pk>/{tail}": Decision(
            ACTION, "staff", _t(f"refertazione/referti/<int:pk>/{tail}", pk=lambda w, t: t.report.pk)
        )
        for tail in ("salva/", "abbandona/", "firma/", "nuova-versione/")
    },
    **{
        f"refertazione/referti/<int:pk>/{tail}": Decision(
            ONE, "staff", _t(f"refertazione/referti/<int:pk>/{tail}", pk=lambda w, t: t.report.pk)
        )
        for tail in ("referto.pdf", "referto.p7m")
    },
    # A radiologist's own standard phrases: no study's data.
    "refertazione/frasi/": Decision(PUBLIC),
    "refertazione/frasi/<int:pk>/elimina/": Decision(PUBLIC, fill=lambda w, t: "/refertazione/frasi/0/elimina/"),
    # The REST API.
    "api/schema/": Decision(PUBLIC),
    "api/schema/swagger/": Decision(PUBLIC),
    "api/schema/redoc/": Decision(PUBLIC),
    "api/token/": Decision(PUBLIC),
    "api/facilities/": Decision(PUBLIC),
    "api/facilities/<facility:code>/": Decision(PUBLIC, fill=_t("api/facilities/<facility:code>/", code=FACILITY)),
    "api/studies/": Decision(
        SEARCH, "staff", _q("api/studies/", patient_id=lambda w, t: t.study.dicom_patient_id), finds=True
    ),
    "api/studies/<str:study_instance_uid>/": Decision(
        ONE, "staff", _t("api/studies/<str:study_instance_uid>/", study_instance_uid=STUDY_UID)
    ),
    "api/reports/": Decision(SEARCH, "staff", finds=True),
    "api/reports/<int:pk>/": Decision(ONE, "staff", _t("api/reports/<int:pk>/", pk=lambda w, t: t.report.pk)),
    "api/reports/<int:pk>/pdf": Decision(ONE, "staff", _t("api/reports/<int:pk>/pdf", pk=lambda w, t: t.report.pk)),
    "api/reports/<int:pk>/p7m": Decision(ONE, "staff", _t("api/reports/<int:pk>/p7m", pk=lambda w, t: t.report.pk)),
    # The CUP systems' API: bookings and slots, never a study's data.
    "api/cup/procedures/": Decision(PUBLIC),
    "api/cup/stations/": Decision(PUBLIC),
    "api/cup/slots/": Decision(PUBLIC),
    "api/cup/bookings/": Decision(REGISTRY),
    **{
        f"api/cup/bookings/<str:accession_number>/{tail}": Decision(
            REGISTRY,
            fill=_t(
                f"api/cup/bookings/<str:accession_number>/{tail}",
                accession_number=lambda w, t: t.booking.accession_number,
            ),
        )
        for tail in ("", "cancel/", "choice/")
    },
}

# The admin, per registered model: the path from the model to the study it shows (None: it shows no
# study's data) and the row of one study's to open.
AdminRow = Callable[[World, Target], Any]
ADMIN_MODELS: dict[str, tuple[str | None, AdminRow | None]] = {
    "auth.Group": (None, None),
    "auth.User": (None, None),
    "axes.AccessAttempt": (None, None),
    "axes.AccessLog": (None, None),
    "axes.AccessFailureLog": (None, None),
    "knox.AuthToken": (None, None),
    "archive.HealthAuthority": (None, None),
    "archive.Facility": (None, None),
    "archive.RemoteNode": (None, None),
    "archive.StaffProfile": (None, None),
    "archive.ReportTemplate": (None, None),
    "archive.LifecyclePolicy": (None, None),
    "archive.ScopeMigration": (None, None),
    "archive.FixityRun": (None, None),
    "archive.Patient": ("patient", lambda w, t: t.patient),
    "archive.Study": ("", lambda w, t: t.study),
    "archive.Series": ("study__", lambda w, t: t.series),
    "archive.Instance": ("series__study__", lambda w, t: t.instance),
    "archive.Copy": ("instance__series__study__", lambda w, t: Copy.objects.filter(instance=t.instance).first()),
    "archive.InstanceConflict": ("study__", None),
    # A modality's procedure step names its study by UID (hidden with it) and its patient.
    "archive.PerformedProcedureStep": ("study__", None),
    "kernel.AuditEvent": ("study__", lambda w, t: t.study and _event(t)),
    "archive.Report": ("study__", lambda w, t: t.report),
    # The dose register: one row per study and quantity (hidden with its study).
    "archive.DoseRecord": ("study__", None),
    "archive.StorageAlert": ("instance__series__study__", lambda w, t: StorageAlert.objects.get(instance=t.instance)),
    "archive.CopyFailure": ("instance__series__study__", None),
    # The rejection notes' own pages: they name what they withdrew (to who sees the study).
    "archive.RejectionNote": (
        "study__",
        lambda w, t: RejectionNote.objects.filter(study=t.study).first(),
    ),
    "archive.RejectionNotice": ("study__", None),
    "booking.Procedure": (None, None),
    "booking.Station": (None, None),
    "booking.AccessionSequence": (None, None),
    "booking.ConsentText": (None, None),
    "booking.Booking": ("study__", lambda w, t: t.booking),
    "booking.Reconciliation": ("study__", None),
    "booking.FacilityContact": (None, None),
    # A citizen's account names a patient (by codice fiscale); a package, one study.
    "portal.CitizenAccount": (
        "patient",
        lambda w, t: CitizenAccount.objects.filter(codice_fiscale=t.patient.codice_fiscale).first(),
    ),
    "portal.DownloadPackage": ("study__", lambda w, t: t.package),
    "portal.CdMedium": ("booking__study__", lambda w, t: CdMedium.objects.get(pk=w.cd_media[t.name])),
    "preservation.Package": ("study__", None),
    "preservation.Volume": (None, None),
    "preservation.JournalEntry": (None, None),
    "preservation.RetentionClass": (None, None),
    "preservation.LegalHold": ("study__", None),
    "preservation.Discard": (None, None),
    "preservation.FixityAudit": (None, None),
    "preservation.PreservationAlert": (None, None),
    # The FSE gateway's outbox: each operation and attempt names its study (hidden with it).
    "fse_gateway.Operation": ("study__", None),
    "fse_gateway.Attempt": ("operation__study__", None),
    # The research exports: no study's data (the exports' studies and criteria are not shown);
    # the key table names patients to the data-protection role only (tests/research).
    "research.ExportProject": (None, None),
    "research.Export": (None, None),
    "research.PseudonymKey": (None, None),
    "research.ProjectSecret": (None, None),
}


def _event(t: Target) -> Any:
    from kernel.models import AuditEvent

    return AuditEvent.objects.filter(action="test.matrix", study=t.study).get()


ADMIN_GENERIC = ("", "add/", "<path:object_id>/history/", "<path:object_id>/delete/", "<path:object_id>/change/")
# Admin routes that are not a model's: the site's own pages.
ADMIN_SITE = {
    "admin/": PUBLIC,
    "admin/login/": PUBLIC,
    "admin/logout/": PUBLIC,
    "admin/password_change/": PUBLIC,
    "admin/password_change/done/": PUBLIC,
    "admin/jsi18n/": PUBLIC,
    # Objects by content type: no model here has a public page, so every id answers alike.
    "admin/r/<path:content_type_id>/<path:object_id>/": PUBLIC,
    "admin/(?P<url>.*)$": PUBLIC,
    # The storage dashboard: totals, fixity runs and open alerts (an alert names its copy's path).
    "admin/archive/storage-dashboard/": SEARCH,
}
# The app index pages (one pattern listing the apps) and the autocomplete (searched in the matrix).
ADMIN_APP_INDEX = re.compile(r"^admin/\^\(\?P<app_label>[\w|]+\)/\$$")
ADMIN_AUTOCOMPLETE = "admin/autocomplete/"


def _routes() -> Iterator[tuple[str, Any]]:
    def walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for p in patterns:
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                yield prefix + str(p.pattern), p

    yield from walk(get_resolver().url_patterns, "")


def _admin_route(route: str) -> tuple[str, str] | None:
    """(model label, the model's own route) for a model's admin route, else None."""
    for model in admin.site._registry:
        prefix = f"admin/{model._meta.app_label}/{model._meta.model_name}/"
        if route.startswith(prefix):
            return model._meta.label, route[len(prefix) :]
    return None


def _decision(route: str) -> Decision | str | None:
    if route in DECISIONS:
        return DECISIONS[route]
    if route.startswith("dicomweb/"):
        return _dicomweb_decision(route)
    if route == ADMIN_AUTOCOMPLETE:
        return "admin-autocomplete"
    if route in ADMIN_SITE:
        kind = ADMIN_SITE[route]
        return Decision(kind, "staff" if kind == SEARCH else "")
    if ADMIN_APP_INDEX.match(route):
        return Decision(PUBLIC)
    found = _admin_route(route)
    if found is not None and found[0] in ADMIN_MODELS:
        return "admin-model"
    return None


def test_every_route_has_a_decision() -> None:
    missing = [route for route, _ in _routes() if _decision(route) is None]
    assert not missing, "routes without an access decision in tests/test_access_matrix.py:\n" + "\n".join(missing)
    unknown = [m._meta.label for m in admin.site._registry if m._meta.label not in ADMIN_MODELS]
    assert not unknown, f"admin models without an access decision: {unknown}"


# --- asking ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    location: str
    body: str


def _ask(client: Client, url: str, method: str = "get") -> Answer:
    kwargs: dict[str, Any] = {}
    if url.startswith("/dicomweb/") or url.startswith("/api/"):
        kwargs["HTTP_ACCEPT"] = "*/*"
    response = getattr(client, method)(url, **kwargs)
    if getattr(response, "streaming", False):
        body = b"".join(response.streaming_content)
    else:
        body = response.content
    return Answer(response.status_code, response.get("Location", ""), body.decode("latin-1"))


def _refused(answer: Answer, *, admin_page: bool = False) -> bool:
    """An answer that gives nothing: not found, not allowed, not logged in, or the admin's 'does not exist'."""
    if answer.status in (400, 401, 403, 404, 405):
        return True
    if answer.status == 302:
        return (
            "login" in answer.location
            or "accesso" in answer.location
            or (admin_page and answer.location.rstrip("/").endswith("/admin"))
        )
    return False


def _succeeded(answer: Answer) -> bool:
    return 200 <= answer.status < 300 or (answer.status == 302 and not _refused(answer))


@dataclass
class Report_:
    problems: list[str] = field(default_factory=list)
    asked: int = 0

    def add(self, text: str) -> None:
        self.problems.append(text)


def _leaks(answer: Answer, principal: str, w: World, *, registry: bool, url: str = "") -> list[str]:
    """The identifiers of studies (and their patients, outside the registry) ``principal`` may not see
    that appear in ``answer`` (an identifier the request itself named may be echoed: "study X is not
    in the archive" says the same of a study that does not exist)."""
    found = []
    for name, t in w.targets.items():
        if name in SEES[principal]:
            continue
        markers = list(t.markers)
        if not registry and principal not in CITIZENS:
            markers += t.patient_markers
        found += [f"{name}:{m}" for m in markers if m in answer.body and m not in url]
    return found


def _url(w: World, decision: Decision, principal: str, t: Target) -> str:
    assert decision.fill is not None
    url = decision.fill(w, t)
    if "TOKEN" in url:
        user = w.users.get(principal) or w.users["mario"]
        url = url.replace("TOKEN", links.link_token(user=user, kind="pdf", object_id=t.report.pk))
    return url


def _check_route(w: World, route: str, decision: Decision, report: Report_) -> None:
    for principal, client in w.clients.items():
        in_family = (decision.family == "staff" and principal in STAFF) or (
            decision.family == "citizen" and principal in CITIZENS
        )
        targets: list[Target | None] = [w.targets[n] for n in TARGETS] if decision.fill is not None else [None]
        if decision.kind in (ONE, ACTION) and decision.fill is None:
            continue  # no such row for any study here (the reconciliation queue is empty)
        for t in targets:
            url = _url(w, decision, principal, t) if t is not None else "/" + route
            method = "post" if decision.kind == ACTION else decision.method
            if decision.kind == ACTION and t is not None and t.name in SEES[principal] and in_family:
                continue  # acting on a study one may see is the route's own test's business
            answer = _ask(client, url, method)
            report.asked += 1
            where = f"{principal} {method.upper()} {url} -> {answer.status} {answer.location}"
            if answer.status >= 500:
                report.add(f"{where}: server error")
                continue
            leaked = _leaks(
                answer, principal, w, registry=decision.kind in (REGISTRY, PUBLIC) or decision.patient, url=url
            )
            leaked += [f"withdrawn:{uid}" for uid in w.withdrawn if uid in answer.body and uid not in url]
            if leaked:
                report.add(f"{where}: shows {leaked[:3]}")
            if t is None or decision.kind not in (ONE, ACTION, SEARCH):
                continue
            sees = t.name in SEES[principal] or (decision.patient and principal in REGISTRY_STAFF)
            if decision.kind in (ONE, ACTION) and not (sees and in_family) and not _refused(answer):
                report.add(f"{where}: a study it may not see answered as if there")
            if sees and in_family and principal in ALLOWED[decision.family] and decision.kind != ACTION:
                if not _succeeded(answer):
                    report.add(f"{where}: refused a study it may see")
                elif decision.kind == SEARCH and decision.finds and t.study.study_instance_uid not in answer.body:
                    report.add(f"{where}: did not find a study it may see")


def _check_admin(w: World, route: str, report: Report_) -> None:
    label, own = _admin_route(route)  # type: ignore[misc]
    path, row_of = ADMIN_MODELS[label]
    base = "/" + route[: len(route) - len(own)]
    if own == "<path:object_id>/":
        return  # Django's redirect to the change page, the same for any id: nothing to learn
    for principal, client in w.clients.items():
        if own in ("", "add/") or "<" not in own:
            for url in (
                base + own,
                *(
                    (base + "?" + urlencode({"q": q}))
                    for t in w.targets.values()
                    for q in (t.patient.codice_fiscale, t.study.study_instance_uid)
                    if own == ""
                ),
            ):
                answer = _ask(client, url)
                report.asked += 1
                where = f"{principal} GET {url} -> {answer.status} {answer.location}"
                if answer.status >= 500:
                    report.add(f"{where}: server error")
                leaked = _leaks(answer, principal, w, registry=path in (None, "patient"), url=url)
                if leaked:
                    report.add(f"{where}: shows {leaked[:3]}")
                if principal in ALLOWED["staff"] and not _succeeded(answer) and own == "":
                    report.add(f"{where}: the change list refused to a superuser")
            continue
        if row_of is None:
            continue  # no row of this model for any study here
        for t in w.targets.values():
            row = row_of(w, t)
            if row is None:
                continue
            url = base + own.replace("<path:object_id>", str(row.pk)).replace("<id>", str(row.pk))
            answer = _ask(client, url)
            report.asked += 1
            where = f"{principal} GET {url} -> {answer.status} {answer.location}"
            if answer.status >= 500:
                report.add(f"{where}: server error")
                continue
            leaked = _leaks(answer, principal, w, registry=path in (None, "patient"), url=url)
            if leaked:
                report.add(f"{where}: shows {leaked[:3]}")
            if path is None:
                continue
            sees = t.name in SEES[principal] and principal in STAFF
            if label in ("archive.Patient", "portal.CitizenAccount") and principal in REGISTRY_STAFF:
                sees = True  # the region's registry: the patient, never a study the principal may not see
            if not sees and not _refused(answer, admin_page=True):
                report.add(f"{where}: a row of a study it may not see answered as if there")
            if sees and principal in ALLOWED["staff"] and not own.endswith("delete/") and not _succeeded(answer):
                report.add(f"{where}: refused a row it may see")


def _check_autocomplete(w: World, report: Report_) -> None:
    """The admin's autocomplete (legal holds pick studies and patients with it) finds only visible rows."""
    for principal, client in w.clients.items():
        for field_name in ("study", "patient"):
            for t in w.targets.values():
                for term in (t.patient.codice_fiscale, t.patient.family_name, t.study.study_instance_uid):
                    url = "/admin/autocomplete/?" + urlencode(
                        {"app_label": "preservation", "model_name": "legalhold", "field_name": field_name, "term": term}
                    )
                    answer = _ask(client, url)
                    report.asked += 1
                    where = f"{principal} GET {url} -> {answer.status} {answer.location}"
                    if answer.status >= 500:
                        report.add(f"{where}: server error")
                    leaked = _leaks(answer, principal, w, registry=field_name == "patient", url=url)
                    if leaked:
                        report.add(f"{where}: shows {leaked[:3]}")


def _check_withdrawn(w: World, report: Report_) -> None:
    """The withdrawn instance, named by its own URLs, is not there for who sees its study."""
    instance = Instance.all_objects.select_related("series__study").get(sop_instance_uid=w.withdrawn[0])
    t = w.targets["rossi"]
    study, series = instance.series.study.study_instance_uid, instance.series.series_instance_uid
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{instance.sop_instance_uid}"
    asks = {
        "admin_asugi": [base, f"{base}/metadata", f"{base}/rendered", f"{base}/thumbnail", f"{base}/frames/1"],
        "mario": [f"/fse/esami/{t.booking.pk}/immagini/{instance.pk}.jpg"],
    }
    for principal, urls in asks.items():
        for url in urls:
            answer = _ask(w.clients[principal], url)
            report.asked += 1
            if not _refused(answer):
                report.add(f"{principal} GET {url} -> {answer.status}: a withdrawn instance answered as if there")


def test_the_web_access_matrix(world: World, settings: Any) -> None:
    # Readiness answers 200 here: no worker or listener runs beside the matrix (tests/ops checks them).
    settings.PACS_HEALTH_CELERY_WORKERS = False
    settings.PACS_HEALTH_DICOM_LISTENER = False
    report = Report_()
    for route, _pattern in _routes():
        decision = _decision(route)
        if decision is None:
            report.add(f"{route}: no decision")
        elif decision == "admin-model":
            _check_admin(world, route, report)
        elif decision == "admin-autocomplete":
            _check_autocomplete(world, report)
        elif isinstance(decision, Decision):
            if decision.fill is None and ("<" in route or "(" in route):
                continue  # a pattern with parameters and no row to name: nothing to ask
            _check_route(world, route, decision, report)
    _check_withdrawn(world, report)
    assert report.asked > 1000
    assert not report.problems, f"{len(report.problems)} of {report.asked} answers break the policy:\n" + "\n".join(
        report.problems[: int(os.environ.get("PACS_MATRIX_SHOW", "80"))]
    )
