"""The first available slot ("prima disponibilità"): the search across the
facilities of a health authority or of the region, nearest first, in two
queries whatever the window; its page, its bad input and its audit."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from archive.models import Facility, HealthAuthority
from booking import services
from booking.formatting import long_date
from booking.models import Booking, Station
from kernel.models import AuditEvent
from tests.booking.conftest import Cup
from tests.dicomweb_helpers import make_user

pytestmark = pytest.mark.django_db


def _weekday(day: dt.date) -> str:
    return str(day.isoweekday())


@pytest.fixture
def tomorrow() -> dt.date:
    return timezone.localdate() + dt.timedelta(days=1)


@pytest.fixture
def staggered(cup: Cup, tomorrow: dt.date) -> Cup:
    """Cattinara's CT opens only on the weekday after tomorrow; Gorizia's every day."""
    Station.objects.filter(pk=cup.ct_station.pk).update(open_weekdays=_weekday(tomorrow + dt.timedelta(days=1)))
    cup.ct_station.refresh_from_db()
    return cup


def _search(cup: Cup, start: dt.date, days: int = 10, **kwargs: object) -> list[services.FreeDay]:
    facilities = kwargs.pop("facilities", Facility.objects.all())
    return services.first_available(
        procedure=cup.ct,
        facilities=facilities,  # type: ignore[arg-type]
        start=start,
        days=days,
        **kwargs,  # type: ignore[arg-type]
    )


# --- the service ---------------------------------------------------------------------------


def test_nearest_day_first_then_facility(staggered: Cup, tomorrow: dt.date) -> None:
    cup = staggered
    found = _search(cup, tomorrow)
    rows = [(f.day, f.facility.code) for f in found]
    assert rows == [
        (tomorrow, "GO-SG"),
        (tomorrow + dt.timedelta(days=1), "TS-CAT"),  # "Ospedale di Cattinara" before "Ospedale di Gorizia"
        (tomorrow + dt.timedelta(days=1), "GO-SG"),
        (tomorrow + dt.timedelta(days=8), "TS-CAT"),  # its next open day, a week later
    ]
    first = found[0]
    assert first.station == cup.other_ct_station
    assert first.slots == services.station_free_slots(station=cup.other_ct_station, day=tomorrow)
    assert first.slots[0].hour == 8 and first.slots == sorted(first.slots)


def test_taken_slots_are_left_out_and_cancelled_ones_come_back(cup: Cup, tomorrow: dt.date) -> None:
    slots = services.station_slots(station=cup.other_ct_station, day=tomorrow)
    booking = cup.book(station=cup.other_ct_station, when=slots[0])
    [gorizia] = [f for f in _search(cup, tomorrow, days=1) if f.facility.code == "GO-SG"]
    assert gorizia.slots[0] == slots[1]
    services.booking_cancel(booking=booking, user=cup.operator.user, reason="prova")
    [gorizia] = [f for f in _search(cup, tomorrow, days=1) if f.facility.code == "GO-SG"]
    assert gorizia.slots[0] == slots[0]


def test_a_full_day_moves_the_station_to_its_next_day(cup: Cup, tomorrow: dt.date) -> None:
    Station.objects.filter(pk=cup.other_ct_station.pk).update(opens_at=dt.time(8, 0), closes_at=dt.time(9, 0))
    cup.other_ct_station.refresh_from_db()
    for when in services.station_slots(station=cup.other_ct_station, day=tomorrow):
        cup.book(station=cup.other_ct_station, when=when)
    gorizia = [f.day for f in _search(cup, tomorrow) if f.facility.code == "GO-SG"]
    assert gorizia == [tomorrow + dt.timedelta(days=1), tomorrow + dt.timedelta(days=2)]


def test_only_the_authority_asked_and_only_open_rooms_of_the_modality(cup: Cup, tomorrow: dt.date) -> None:
    asufc = HealthAuthority.objects.create(code="ASUFC", name="Azienda sanitaria universitaria Friuli Centrale")
    udine = Facility.objects.create(
        code="UD-SMM", name="Ospedale di Udine", authority=asufc, ae_title="UDINE_PACS", dicom_port=11114
    )
    Station.objects.create(facility=udine, ae_title="CT01", name="TC Udine", modality="CT")
    Station.objects.create(facility=udine, ae_title="CT02", name="TC spenta", modality="CT", active=False)

    asugi = {
        f.facility.code
        for f in _search(cup, tomorrow, facilities=Facility.objects.filter(authority=cup.region.authority))
    }
    region = {f.station.name for f in _search(cup, tomorrow)}
    assert asugi == {"TS-CAT", "GO-SG"}
    assert region == {"TC 1", "TC Gorizia", "TC Udine"}  # not the inactive room, not the MR
    mr = services.first_available(procedure=cup.mr, facilities=Facility.objects.all(), start=tomorrow, days=3)
    assert {f.station for f in mr} == {cup.mr_station}


def test_slots_already_past_today_are_not_offered(cup: Cup) -> None:
    today = timezone.localdate()
    Station.objects.update(open_weekdays="1234567")
    noon = timezone.make_aware(dt.datetime.combine(today, dt.time(12, 0)))
    found = services.first_available(procedure=cup.ct, facilities=Facility.objects.all(), start=today, days=1, now=noon)
    assert found and all(s > noon for f in found for s in f.slots)
    assert min(s for f in found for s in f.slots) == noon + dt.timedelta(minutes=20)


@pytest.mark.parametrize("days", [0, -3, services.FIRST_AVAILABLE_MAX_DAYS + 1])
def test_a_window_out_of_bounds_is_refused(cup: Cup, tomorrow: dt.date, days: int) -> None:
    with pytest.raises(services.BookingError) as exc:
        _search(cup, tomorrow, days=days)
    assert exc.value.field == "days"
    assert "da 1 a 90 giorni" in exc.value.message


def test_a_procedure_not_bookable_is_refused(cup: Cup, tomorrow: dt.date) -> None:
    cup.ct.active = False
    cup.ct.save()
    with pytest.raises(services.BookingError) as exc:
        _search(cup, tomorrow)
    assert exc.value.field == "procedure"


@pytest.mark.parametrize("days", [1, 30, 90])
def test_two_queries_whatever_the_window(
    cup: Cup,
    tomorrow: dt.date,
    days: int,
    django_assert_num_queries,  # type: ignore[no-untyped-def]
) -> None:
    cup.book()
    cup.book(station=cup.other_ct_station)
    with django_assert_num_queries(2):
        found = services.first_available(procedure=cup.ct, facilities=Facility.objects.all(), start=tomorrow, days=days)
        # The rows carry what the page shows, already fetched.
        assert all(f.facility.authority.code for f in found)


# --- the page ------------------------------------------------------------------------------


@pytest.fixture
def client(cup: Cup) -> Client:
    c = Client()
    c.force_login(cup.operator.user)
    return c


def _url(cup: Cup) -> str:
    return reverse("booking:booking_first", args=[cup.mario.pk])


def test_the_form_comes_first_with_thirty_days_from_today(client: Client, cup: Cup) -> None:
    response = client.get(_url(cup))
    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["results"] is None
    assert re.search(r'<input[^>]*name="days"[^>]*value="30"', html)
    assert re.search(rf'<input[^>]*name="start"[^>]*value="{timezone.localdate().isoformat()}"', html)
    assert "In tutta la regione" in html
    assert re.search(r'<select[^>]*name="procedure"[^>]*autofocus', html)


def test_results_nearest_first_and_each_time_leads_to_step_two(
    client: Client, staggered: Cup, tomorrow: dt.date
) -> None:
    cup = staggered
    response = client.get(_url(cup), {"procedure": cup.ct.pk, "authority": "", "start": tomorrow, "days": 10})
    html = response.content.decode()
    headings = re.findall(r"<h3[^>]*>(.*?)</h3>", html)
    assert headings[:2] == [
        f"{long_date(tomorrow)} – Ospedale di Gorizia",
        f"{long_date(tomorrow + dt.timedelta(days=1))} – Ospedale di Cattinara",
    ]
    assert headings[0] == headings[0].lower().replace("ospedale di gorizia", "Ospedale di Gorizia")

    first = response.context["results"][0]
    when, url = first["times"][0]
    query = parse_qs(urlsplit(url).query)
    assert urlsplit(url).path == reverse("booking:booking_new", args=[cup.mario.pk])
    assert query["facility"] == [str(cup.region.other_facility.pk)] and query["day"] == [tomorrow.isoformat()]
    slot = f"{cup.other_ct_station.pk}|{timezone.localtime(when).isoformat()}"
    assert query["slot"] == [slot]
    assert len(first["times"]) == 8 and first["more"] == len(first["free"].slots) - 8
    # The nearest time has the focus; the form gives it up.
    assert re.search(rf'<a[^>]*href="{re.escape(url.replace("&", "&amp;"))}" autofocus', html)
    assert len(re.findall(r"\bautofocus\b", html)) == 1

    step2 = client.get(url)
    assert step2.context["selected_slot"] == slot
    assert re.search(rf'<input[^>]*value="{re.escape(slot)}"[^>]*checked autofocus', step2.content.decode())
    booked = client.post(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        {
            "procedure": cup.ct.pk,
            "facility": cup.region.other_facility.pk,
            "day": tomorrow.isoformat(),
            "slot": slot,
            "channel": Booking.Channel.AUTHORITY_CUP,
            "delivery": "cd",
        },
    )
    booking = Booking.objects.get(patient=cup.mario)
    assert booked.status_code == 302 and booking.station == cup.other_ct_station and booking.scheduled_at == when


def test_a_slot_taken_meanwhile_is_not_chosen_and_the_page_says_so(client: Client, cup: Cup, tomorrow: dt.date) -> None:
    when = cup.next_slot(cup.other_ct_station)
    slot = f"{cup.other_ct_station.pk}|{timezone.localtime(when).isoformat()}"
    cup.book(cup.laura, station=cup.other_ct_station, when=when)
    response = client.get(
        reverse("booking:booking_new", args=[cup.mario.pk]),
        {"procedure": cup.ct.pk, "facility": cup.region.other_facility.pk, "day": tomorrow.isoformat(), "slot": slot},
    )
    html = response.content.decode()
    assert response.context["selected_slot"] == ""
    assert "orario scelto non è più libero" in html
    assert f'value="{slot}"' not in html


def test_no_free_slot_says_so(client: Client, cup: Cup, tomorrow: dt.date) -> None:
    Station.objects.update(active=False)
    response = client.get(_url(cup), {"procedure": cup.ct.pk, "start": tomorrow, "days": 5})
    assert response.context["results"] == []
    assert "Nessun orario libero nel periodo cercato" in response.content.decode()


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"days": "0"}, "days", "Cerca in almeno 1 giorno."),
        ({"days": "91"}, "days", "Si cerca al massimo in 90 giorni."),
        ({"days": "trenta"}, "days", "Scrivi un numero di giorni, da 1 a 90."),
        ({"start": "2020-01-01"}, "start", "Il giorno 01/01/2020 è già passato: parti da oggi o da un giorno futuro."),
        ({"start": "31/02/2027"}, "start", None),
        ({"procedure": ""}, "procedure", None),
        ({"procedure": "999999"}, "procedure", None),
        ({"authority": "999999"}, "authority", None),
    ],
)
def test_bad_input_is_reported_in_italian_and_searches_nothing(
    client: Client, cup: Cup, tomorrow: dt.date, params: dict[str, str], field: str, message: str | None
) -> None:
    query = {"procedure": str(cup.ct.pk), "authority": "", "start": tomorrow.isoformat(), "days": "30", **params}
    response = client.get(_url(cup), query)
    html = response.content.decode()
    form = response.context["form"]
    assert response.status_code == 200
    assert response.context["results"] is None
    assert list(form.errors) == [field]
    if message:
        assert form.errors[field] == [message]
    label = str(form.fields[field].label)
    assert f'<a href="#id_{field}">{label}</a>: ' in html  # the summary names the field in Italian, and leads to it
    assert "La ricerca non è stata fatta" in html
    # The first field at fault has the focus.
    assert re.search(rf'<(input|select)[^>]*name="{field}"[^>]*autofocus', html)
    assert len(re.findall(r"\bautofocus\b", html)) == 1


def test_start_too_far_ahead_is_refused(client: Client, cup: Cup) -> None:
    far = timezone.localdate() + dt.timedelta(days=400)
    response = client.get(_url(cup), {"procedure": cup.ct.pk, "start": far.isoformat(), "days": "30"})
    assert response.context["form"].errors["start"] == ["Parti al più tardi da un giorno entro un anno da oggi."]


def test_the_search_is_audited_with_what_was_asked(client: Client, cup: Cup, tomorrow: dt.date) -> None:
    client.get(_url(cup), {"procedure": cup.ct.pk, "authority": cup.region.authority.pk, "start": tomorrow, "days": 7})
    event = AuditEvent.objects.filter(action="cup.patient.view", patient=cup.mario).latest("pk")
    assert event.username == "operatore"
    assert event.detail == {"page": "booking_first", "procedure": "87.41", "authority": "ASUGI"}


def test_only_who_may_book_searches(cup: Cup) -> None:
    reader = make_user("lettore-cup", "booking.view_booking", "archive.view_patient", staff=False)
    c = Client()
    c.force_login(reader.user)
    assert c.get(_url(cup)).status_code == 403
    assert Client().get(_url(cup)).status_code == 302  # to the login page


def test_patient_page_and_step_one_lead_to_the_search(client: Client, cup: Cup) -> None:
    for url in (
        reverse("booking:patient_detail", args=[cup.mario.pk]),
        reverse("booking:booking_new", args=[cup.mario.pk]),
    ):
        assert f'href="{_url(cup)}"' in client.get(url).content.decode()


def test_the_page_in_english(client: Client, staggered: Cup, tomorrow: dt.date) -> None:
    client.post(reverse("set_language"), {"language": "en", "next": "/"})
    html = client.get(_url(staggered), {"procedure": staggered.ct.pk, "start": tomorrow, "days": 3}).content.decode()
    assert "First available slot" in html and "Free times, nearest first" in html
    with translation.override("en"):
        assert long_date(tomorrow) in html  # "Sunday 6 December 2026": English capitalises
    assert "Prima disponibilità" not in html
