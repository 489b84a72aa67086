"""«Chi ha visto i miei dati», grouped: one line per actor, exam and session, in
plain words; emergency accesses first with their reason and what was seen;
the system's work apart; filters by exam and period with clear errors; pages
that never split a line and read a bounded number of events whatever the
length of the history; the log of a delegator's exam as the delegation allows.

Events are written through the real ``audit_record`` (and the real services
where one writes them), at chosen times: the audit module's clock is set."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from archive.models import Patient, StaffProfile, Study
from booking import services as booking_services
from booking.models import Booking
from kernel import audit
from kernel.audit import audit_record
from kernel.models import AuditEvent
from portal import access_log, delegations
from portal.access_log import AccessGroup, Cursor, access_log_events, access_log_page, exam_ref
from portal.accounts import citizen_account_create
from portal.emergency import emergency_access_grant
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import LAURA_CF, Cup
from tests.portal.portal_helpers import CITIZEN_PASSWORD, CitizenExam, citizen_exam_make, citizen_login
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

cup = booking_fixtures.cup

pytestmark = pytest.mark.django_db

REASON = "Paziente incosciente in pronto soccorso: servono le TC precedenti."


@pytest.fixture
def online(cup: Cup, reporting: Reporting) -> CitizenExam:
    exam = citizen_exam_make(cup, reporting)
    StaffProfile.objects.filter(user=exam.rep.colleague).update(title="Dott.ssa", role="radiologa")
    return exam


@contextmanager
def clock(when: dt.datetime) -> Iterator[None]:
    """The audit log's clock set to ``when`` (only the audit module's: the rest of Django keeps time)."""
    real = audit.timezone
    audit.timezone = SimpleNamespace(now=lambda: when)  # type: ignore[assignment]
    try:
        yield
    finally:
        audit.timezone = real


def at(day: dt.date, hh: int, mm: int, ss: int = 0) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time(hh, mm, ss)))


# A day a month ago: nothing else (the fixture's own events, written now) falls on it or the days around it.
DAY = dt.date.today() - dt.timedelta(days=30)
D = f"{DAY:%d/%m/%Y}"


def look(user: Any, study: Study, when: dt.datetime, *, images: int = 12, report: bool = True) -> None:
    """A radiologist's look at an exam as the archive audits it: the study page, a DICOMweb
    request per series and instance, the report."""
    with clock(when):
        audit_record(action="study.view", user=user, study=study, source="10.0.0.7")
    for i in range(images - 1):
        with clock(when + dt.timedelta(seconds=20 * (i + 1))):
            audit_record(action="dicomweb.retrieve", user=user, study=study, source="10.0.0.7")
    if report:
        with clock(when + dt.timedelta(minutes=7)):
            audit_record(action="report.view", user=user, study=study, source="10.0.0.7")


def people_groups(online: CitizenExam, **kwargs: Any) -> list[AccessGroup]:
    return access_log_page(patients=[online.booking.patient], viewer=online.user, **kwargs).groups


def by_actor(groups: list[AccessGroup], name: str) -> list[AccessGroup]:
    return [g for g in groups if g.actor is not None and name in g.actor.name]


# --- grouping ------------------------------------------------------------------------------------


def test_a_radiologists_look_at_images_and_report_is_one_line(online: CitizenExam) -> None:
    look(online.rep.colleague, online.rep.study, at(DAY, 10, 2))
    [line] = by_actor(people_groups(online), "Degano")
    assert line.actor is not None and line.actor.label == "Dott.ssa Chiara Degano, radiologa"
    assert line.what == "ha visto le immagini e il referto"
    assert line.count == 13
    assert line.when == f"13 accessi, il {D} tra le 10:02 e le 10:09"
    assert line.exam == exam_ref(online.booking) and line.exam.performed
    study_day = online.rep.study.study_date
    assert line.exam.label == f"TC torace senza mdc del {study_day:%d/%m/%Y}"


def test_a_gap_longer_than_the_window_starts_a_new_line(online: CitizenExam) -> None:
    user, study = online.rep.colleague, online.rep.study
    for when in (at(DAY, 10, 0), at(DAY, 10, 25), at(DAY, 10, 55), at(DAY, 11, 26)):
        with clock(when):
            audit_record(action="study.view", user=user, study=study)
    lines = by_actor(people_groups(online), "Degano")
    # 10:00-10:25-10:55 are each within 30 minutes of the previous one; 11:26 is 31 minutes after.
    assert [(g.count, timezone.localtime(g.oldest).strftime("%H:%M")) for g in lines] == [(1, "11:26"), (3, "10:00")]


def test_interleaved_actors_and_exams_each_get_their_line(online: CitizenExam, cup: Cup) -> None:
    other_booking = cup.book()
    for minute in range(0, 10, 2):
        with clock(at(DAY, 9, minute)):
            audit_record(action="study.view", user=online.rep.colleague, study=online.rep.study)
        with clock(at(DAY, 9, minute + 1)):
            audit_record(action="report.view", user=online.rep.radiologist, study=online.rep.study)
        with clock(at(DAY, 9, minute, 30)):
            audit_record(
                action="cup.booking.view",
                user=online.rep.colleague,
                patient=online.booking.patient,
                detail={"accession_number": other_booking.accession_number},
            )
    groups = [g for g in people_groups(online) if g.oldest.date() == at(DAY, 9, 0).date()]
    summary = sorted((g.actor.name, g.exam.name if g.exam else "", g.count, g.what) for g in groups if g.actor)
    assert summary == [
        ("Dott.ssa Chiara Degano", "TC torace senza mdc", 5, "ha consultato la prenotazione"),
        ("Dott.ssa Chiara Degano", "TC torace senza mdc", 5, "ha visto le immagini"),
        ("Stefano Cossutta", "TC torace senza mdc", 5, "ha visto il referto"),
    ]
    booked = next(g for g in groups if g.what == "ha consultato la prenotazione")
    assert booked.exam is not None and not booked.exam.performed
    assert booked.exam.label.startswith("TC torace senza mdc, prenotato per il ")


def test_the_role_comes_from_the_profile_else_from_groups_or_permissions_in_neutral_form(
    online: CitizenExam, cup: Cup
) -> None:
    look(online.rep.radiologist, online.rep.study, at(DAY, 8, 0), images=2, report=False)
    groups = people_groups(online)
    [cossutta] = [g for g in by_actor(groups, "Cossutta") if g.oldest == at(DAY, 8, 0)]
    assert cossutta.actor is not None and cossutta.actor.label == "Stefano Cossutta, radiologo/a"
    assert cossutta.actor.where == online.rep.region.authority.name
    operator = cup.operator.user
    operator.first_name, operator.last_name = "Luca", "Tomasin"
    operator.save()
    operator.groups.add(Group.objects.create(name="Operatori CUP"))
    [booking_line] = [g for g in people_groups(online) if g.actor and g.actor.name == "Luca Tomasin"]
    assert booking_line.actor is not None and booking_line.actor.role == "operatore/operatrice CUP"
    StaffProfile.objects.create(user=operator, role="operatore CUP")
    [booking_line] = [g for g in people_groups(online) if g.actor and g.actor.name == "Luca Tomasin"]
    assert booking_line.actor is not None and booking_line.actor.label == "Luca Tomasin, operatore CUP"


def test_booking_work_says_what_was_booked_and_what_changed(online: CitizenExam, cup: Cup) -> None:
    booking = cup.book()
    first = timezone.localtime(booking.scheduled_at)
    later = cup.next_slot(days=3)
    booking_services.booking_update(
        booking=booking, user=cup.operator.user, scheduled_at=later, contact_phone="040 123456"
    )
    booking_services.booking_status_set(booking=booking, status=Booking.Status.ARRIVED, user=cup.operator.user)
    [line] = [g for g in people_groups(online) if g.exam and g.exam.booking_id == booking.pk]
    moved = f"dal {first:%d/%m/%Y %H:%M} al {timezone.localtime(later):%d/%m/%Y %H:%M}"
    assert line.what.startswith("ha prenotato l'esame")
    assert f"ha modificato la prenotazione (data e ora: {moved}; telefono)" in line.what
    assert line.what.endswith("e ha registrato l'arrivo in accettazione")
    assert line.exam is not None and line.exam.label.endswith(f"prenotato per il {timezone.localtime(later):%d/%m/%Y}")
    assert "ha gestito la prenotazione" not in line.what


def test_the_system_work_is_apart_in_plain_categories(online: CitizenExam) -> None:
    page = access_log_page(patients=[online.booking.patient], viewer=online.user)
    # citizen_exam_make matched the images to the booking and published the signed report: both automatic.
    background = {g.what for g in page.background}
    assert {"ha associato le immagini alla prenotazione", "ha pubblicato il referto sul Fascicolo"} <= background
    assert all(g.actor is not None and g.actor.kind == "system" for g in page.background)
    assert all(g.actor is not None and g.actor.kind != "system" for g in page.groups)
    with clock(at(DAY, 3, 0)):
        audit_record(action="preservation.package", system="preservation.package_build", study=online.rep.study)
    with clock(at(DAY, 3, 1)):
        audit_record(action="lifecycle.move", system="archive.lifecycle", study=online.rep.study)
    page = access_log_page(patients=[online.booking.patient], viewer=online.user)
    texts = [g.what for g in page.background]
    assert "ha conservato le immagini e il referto nell'archivio di conservazione" in texts
    assert "ha spostato le copie delle immagini nell'archivio a lungo termine" in texts


def test_a_search_that_returned_the_citizen_is_told_as_such(online: CitizenExam) -> None:
    mario = online.booking.patient
    other = Patient.objects.create(family_name="VERDI", given_name="ANNA", provisional=True)
    mine = audit_record(action="dicomweb.search", user=online.rep.radiologist, patients=[other.pk, mario.pk])
    theirs = audit_record(action="api.studies", user=online.rep.radiologist, patients=[other.pk])
    audit_record(action="dicom.query", ae_title="CT01", patients=[mario.pk])
    found = set(access_log_events(patients=[mario]).values_list("pk", flat=True))
    assert mine.pk in found and theirs.pk not in found
    groups = people_groups(online)
    [search] = [g for g in groups if g.search and g.actor and g.actor.kind == "staff"]
    assert search.what == "ha cercato esami nell'archivio: i dati erano tra i risultati"
    [device] = [g for g in groups if g.actor and g.actor.kind == "device"]
    assert device.actor is not None and device.actor.label == "CT01, apparecchiatura"


# --- emergency accesses --------------------------------------------------------------------------


def test_an_emergency_access_comes_first_with_who_when_until_why_and_what_was_seen(online: CitizenExam) -> None:
    start = at(DAY, 22, 40)
    with clock(start):
        row = emergency_access_grant(
            user=online.rep.colleague, patient=online.booking.patient, reason=REASON, now=start
        )
    look(online.rep.colleague, online.rep.study, start + dt.timedelta(minutes=2), images=3)
    look(online.rep.colleague, online.rep.study, start + dt.timedelta(days=1), images=2, report=False)  # after it ended
    page = access_log_page(patients=[online.booking.patient], viewer=online.user)
    [shown] = page.emergencies
    assert (shown.who, shown.role, shown.reason) == ("Dott.ssa Chiara Degano", "radiologa", REASON)
    assert shown.where == online.rep.region.authority.name
    assert shown.at == row.at and shown.until == row.at + dt.timedelta(minutes=access_log.emergency_access_minutes())
    [seen] = shown.seen
    assert (seen.what, seen.count) == ("ha visto le immagini e il referto", 4)
    lines = by_actor(page.groups, "Degano")
    # The request itself, the look during it (flagged), the look after it (not flagged).
    assert sorted((g.count, g.emergency is not None) for g in lines) == [(1, True), (2, False), (4, True)]

    html = online.client.get("/fse/accessi/").content.decode().replace("&#x27;", "'")
    assert html.index('id="emergency-title"') < html.index('id="accesses-title"')
    box = html[html.index('id="emergency-title"') : html.index("</section>")]
    assert REASON in box and "Dott.ssa Chiara Degano, radiologa" in box
    assert f"{timezone.localtime(shown.until):%H:%M}" in box and "Ha visto le immagini e il referto" in box


def test_no_emergency_box_without_emergency_accesses(online: CitizenExam) -> None:
    html = online.client.get("/fse/accessi/").content.decode()
    assert 'id="emergency-title"' not in html and 'id="accesses-title"' in html


# --- filters ---------------------------------------------------------------------------------------------


def test_filters_by_exam_and_by_period(online: CitizenExam, cup: Cup) -> None:
    other = cup.book()
    look(online.rep.colleague, online.rep.study, at(DAY, 10, 0), images=2)
    with clock(at(DAY + dt.timedelta(days=2), 9, 0)):
        audit_record(
            action="cup.booking.view",
            user=cup.operator.user,
            patient=other.patient,
            detail={"accession_number": other.accession_number},
        )
    only_other = people_groups(online, exam=other)
    assert {g.exam.booking_id for g in only_other if g.exam} == {other.pk}
    assert all(g.exam is not None for g in only_other)
    on_day = people_groups(online, since=DAY, until=DAY)
    assert [g.what for g in on_day] == ["ha visto le immagini e il referto"]
    assert people_groups(online, since=DAY + dt.timedelta(days=1), until=DAY + dt.timedelta(days=1)) == []

    later = DAY + dt.timedelta(days=2)
    response = online.client.get(
        "/fse/accessi/", {"esame": other.pk, "dal": later.isoformat(), "al": f"{later:%d/%m/%Y}"}
    )
    assert response.status_code == 200
    assert [g.what for g in response.context["page"].groups] == ["ha consultato la prenotazione"]
    html = response.content.decode()
    assert f'value="{later.isoformat()}"' in html  # the filters stay filled in
    event = AuditEvent.objects.filter(action="portal.access_log.view").latest("pk")
    assert event.detail["esame"] == other.pk and event.detail["accession_number"] == other.accession_number


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"dal": "31/02/2026"}, "Scriva la data come giorno/mese/anno, per esempio 04/12/2026."),
        ({"al": "domani"}, "Scriva la data come giorno/mese/anno, per esempio 04/12/2026."),
        (
            {"dal": "2026-12-05", "al": "2026-12-04"},
            "Il giorno finale (04/12/2026) viene prima di quello iniziale (05/12/2026): li inverta o li corregga.",
        ),
        ({"esame": "999999"}, "Scelga uno degli esami dell'elenco."),
        ({"esame": "x"}, "Scelga uno degli esami dell'elenco."),
        ({"dopo": "1e9-12"}, "Questa pagina del registro non esiste: riparta dagli accessi più recenti."),
    ],
)
def test_bad_filters_get_a_clear_error_and_show_nothing(
    online: CitizenExam, query: dict[str, str], message: str
) -> None:
    views_before = AuditEvent.objects.filter(action="portal.access_log.view").count()
    response = online.client.get("/fse/accessi/", query)
    assert response.status_code == 400
    html = response.content.decode().replace("&#x27;", "'")
    assert message in html and 'role="alert"' in html
    assert response.context["page"] is None and 'id="accesses-title"' not in html
    assert AuditEvent.objects.filter(action="portal.access_log.view").count() == views_before


# --- pages --------------------------------------------------------------------------------------------------


def _sessions(online: CitizenExam, n: int) -> None:
    """``n`` looks an hour apart, alternating two radiologists, with a CUP look in between."""
    for i in range(n):
        start = at(DAY, 0, 0) + dt.timedelta(hours=i)
        user = online.rep.colleague if i % 2 else online.rep.radiologist
        look(user, online.rep.study, start, images=3, report=bool(i % 3))


def _follow(client: Client, first: str, rel: str) -> list[list[tuple[str, int, dt.datetime]]]:
    pages = []
    url: str | None = first
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page = response.context["page"]
        pages.append([(g.actor.name, g.count, g.oldest) for g in page.groups + page.background])
        link = re.search(rf'href="([^"]+)" rel="{rel}"', response.content.decode())
        url = "/fse/accessi/" + link.group(1).replace("&amp;", "&") if link else None
    return pages


def test_pages_follow_each_other_back_and_forth_without_splitting_a_line(
    online: CitizenExam, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sessions(online, 14)
    monkeypatch.setattr(access_log, "PAGE_GROUPS", 1000)
    whole = access_log_page(patients=[online.booking.patient], viewer=online.user)
    assert not whole.older
    monkeypatch.setattr(access_log, "PAGE_GROUPS", 4)
    forward = _follow(online.client, "/fse/accessi/", "next")
    assert len(forward) >= 4
    lines = [line for page in forward for line in page]
    expected = [(g.actor.name, g.count, g.oldest) for g in whole.groups + whole.background if g.actor]
    viewing = {line for line in lines if line[0] == "Lei"}  # reading the log is in the log, as it is read
    assert sorted(set(lines) - viewing) == sorted(set(expected) - {e for e in expected if e[0] == "Lei"})
    assert len(lines) == len(set(lines))  # no line on two pages
    # Back from the oldest page, through the newer links, to the newest.
    last = online.client.get("/fse/accessi/", {"dopo": Cursor(True, at(DAY, 0, 0), 1).token()})
    assert last.status_code == 200
    back = _follow(online.client, "/fse/accessi/?dopo=" + Cursor(True, at(DAY, 1, 30), 0).token(), "prev")
    assert len(back) >= 4
    looks = [line for page in back for line in page if line[0] != "Lei"]
    assert len(looks) == len(set(looks))
    assert set(looks) == {line for line in lines if line[0] != "Lei"}


def test_one_endless_session_is_cut_at_the_scan_limit(online: CitizenExam, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "SCAN_LIMIT", 30)
    monkeypatch.setattr(access_log, "SCAN_CHUNK", 8)
    look(online.rep.colleague, online.rep.study, at(DAY, 10, 0), images=50, report=False)
    page = access_log_page(patients=[online.booking.patient], viewer=online.user)
    assert sum(g.count for g in page.groups + page.background) == 30 and page.older
    rest = access_log_page(
        patients=[online.booking.patient], viewer=online.user, cursor=Cursor.parse(page.older, older=True)
    )
    degano = by_actor(page.groups, "Degano") + by_actor(rest.groups, "Degano")
    assert sum(g.count for g in degano) == 50


def _history(online: CitizenExam, cup: Cup, events: int) -> None:
    """A citizen's history of about ``events`` events: looks by two radiologists, a CUP operator, searches."""
    mario = online.booking.patient
    written = 0
    i = 0
    while written < events:
        start = at(DAY, 0, 0) - dt.timedelta(hours=3 * i)
        look(online.rep.colleague if i % 2 else online.rep.radiologist, online.rep.study, start, images=8)
        written += 9
        with clock(start + dt.timedelta(hours=1)):
            audit_record(
                action="cup.booking.view",
                user=cup.operator.user,
                patient=mario,
                detail={"accession_number": online.booking.accession_number},
            )
            audit_record(action="dicom.query", ae_title="CT01", patients=[mario.pk])
        written += 2
        i += 1


def _page_queries(client: Client) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/fse/accessi/").status_code == 200
    return len(queries), [q["sql"] for q in queries.captured_queries]


def test_a_page_costs_the_same_queries_on_2000_events_as_on_200(online: CitizenExam, cup: Cup) -> None:
    _history(online, cup, 200)
    small, _sql = _page_queries(online.client)
    _history(online, cup, 2000)
    assert access_log_events(patients=[online.booking.patient]).count() > 2000
    large, sql = _page_queries(online.client)
    assert large == small <= 30
    reads = [s for s in sql if 'FROM "archive_auditevent"' in s and '"archive_auditevent"."detail"' in s]
    assert reads and all(re.search(r"LIMIT \d+", s) for s in reads)
    assert all(int(re.search(r"LIMIT (\d+)", s).group(1)) <= access_log.SCAN_CHUNK for s in reads)  # type: ignore[union-attr]


# --- delegations ----------------------------------------------------------------------------------------------


def test_a_delegate_reads_the_delegators_log_while_the_delegation_is_in_force(online: CitizenExam) -> None:
    mario = online.booking.patient
    laura = Patient.objects.get(codice_fiscale=LAURA_CF)
    delegation = delegations.delegation_register(
        delegator=mario, delegate=laura, kind="tutore", evidence="Decreto n. 12/2026", user=online.rep.radiologist
    )
    citizen_account_create(codice_fiscale=LAURA_CF, password=CITIZEN_PASSWORD)
    client = Client()
    citizen_login(client, LAURA_CF)
    look(online.rep.colleague, online.rep.study, at(DAY, 10, 0), images=2)
    response = client.get("/fse/accessi/", {"esame": online.booking.pk})
    assert response.status_code == 200
    assert "ha visto le immagini e il referto" in [g.what for g in response.context["page"].groups]
    assert "ROSSI MARIO" in response.content.decode()  # whose exam, in the exam list
    # Mario reads that his delegate read his log.
    [line] = [g for g in people_groups(online) if g.actor and g.actor.kind == "delegate"]
    assert line.actor is not None and line.actor.role == "persona delegata"
    assert line.what == "ha consultato il registro degli accessi"

    delegations.delegation_revoke(delegation=delegation, user=online.rep.radiologist)
    refused = client.get("/fse/accessi/", {"esame": online.booking.pk})
    assert refused.status_code == 400
    page = client.get("/fse/accessi/").context["page"]
    assert not [g for g in page.groups if g.actor and "Degano" in g.actor.name]


def test_the_page_says_whose_data_when_the_citizen_acts_for_others(online: CitizenExam) -> None:
    mario = online.booking.patient
    laura = Patient.objects.get(codice_fiscale=LAURA_CF)
    delegations.delegation_register(
        delegator=mario, delegate=laura, kind="altro", evidence="Delega firmata", user=online.rep.radiologist
    )
    citizen_account_create(codice_fiscale=LAURA_CF, password=CITIZEN_PASSWORD)
    client = Client()
    citizen_login(client, LAURA_CF)
    look(online.rep.colleague, online.rep.study, at(DAY, 10, 0), images=2)
    page = client.get("/fse/accessi/").context["page"]
    [line] = by_actor(page.groups, "Degano")
    assert line.about == str(mario)


def test_a_role_from_permissions_is_found_whether_held_directly_or_through_a_group(db: None) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from portal.access_log import _roles

    User = get_user_model()
    direct, via_group, neither = (User.objects.create_user(name) for name in ("diretto", "tramite-gruppo", "nessuno"))
    direct.user_permissions.add(Permission.objects.get(codename="sign_report"))
    team = Group.objects.create(name="Reparto 3")  # a name that says no role
    team.permissions.add(Permission.objects.get(codename="reconcile_study"))
    via_group.groups.add(team)
    assert _roles({direct.pk, via_group.pk, neither.pk}) == {direct.pk: "radiologo/a", via_group.pk: "archivista"}
