"""The English catalogue and the language switcher.

The interface is written in Italian; locale/en holds its English translation.
The catalogue must be complete (no empty or fuzzy entries), keep every
placeholder, and the committed .mo must match the .po, since a fresh machine
may have no gettext to compile it. The switcher in the page header changes the
language of every page, the login page included."""

from __future__ import annotations

import ast
import datetime as dt
import gettext
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.test import Client
from django.utils import translation

from booking import services
from tests.booking import conftest as booking_fixtures
from tests.booking.conftest import MARIO_CF, Cup

# The CUP data of tests/booking, offered to this module too.
cup = booking_fixtures.cup

REPO = Path(__file__).resolve().parent.parent
PO = REPO / "locale" / "en" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")


@dataclass
class Entry:
    line: int
    flags: set[str] = field(default_factory=set)
    msgctxt: str | None = None
    msgid: str = ""
    msgid_plural: str | None = None
    msgstr: dict[int, str] = field(default_factory=dict)  # index 0 for a singular entry
    obsolete: bool = False


def _po_string(text: str) -> str:
    # A PO string is a C string literal; the catalogue holds no escapes Python reads differently.
    return ast.literal_eval(text)


def read_po(path: Path) -> list[Entry]:
    """A small PO reader: enough for the files makemessages writes."""
    entries: list[Entry] = []
    entry: Entry | None = None
    target: tuple[str, int] = ("msgid", 0)
    keyword = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*")$')
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            entry = None
            continue
        if entry is None:
            entry = Entry(line=number)
            entries.append(entry)
        if line.startswith("#~"):
            entry.obsolete = True
            continue
        if line.startswith("#,"):
            entry.flags.update(flag.strip() for flag in line[2:].split(","))
            continue
        if line.startswith("#"):
            continue
        match = keyword.match(line)
        if match:
            name, index, value = match.groups()
            if name.startswith("msgstr"):
                target = ("msgstr", int(index or 0))
                entry.msgstr[target[1]] = _po_string(value)
            else:
                target = (name, 0)
                setattr(entry, name, _po_string(value))
        elif line.startswith('"'):
            name, index = target
            if name == "msgstr":
                entry.msgstr[index] += _po_string(line)
            else:
                setattr(entry, name, getattr(entry, name) + _po_string(line))
        else:
            raise AssertionError(f"{path}:{number}: unexpected line {raw!r}")
    return entries


def messages() -> list[Entry]:
    return [e for e in read_po(PO) if e.msgid and not e.obsolete]


PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|%[sd]|\{\{\s*\w+\s*\}\}")


# --- the catalogue ------------------------------------------------------------


def test_catalogue_header_is_english_with_two_plural_forms() -> None:
    header = next(e for e in read_po(PO) if e.msgid == "")
    assert "fuzzy" not in header.flags
    assert "Language: en\n" in header.msgstr[0]
    assert "Plural-Forms: nplurals=2; plural=(n != 1);" in header.msgstr[0]


def test_every_message_is_translated_and_none_is_fuzzy() -> None:
    entries = messages()
    assert len(entries) > 400
    fuzzy = [e.msgid for e in entries if "fuzzy" in e.flags]
    assert fuzzy == []
    untranslated = [e.msgid for e in entries if not e.msgstr or any(not s.strip() for s in e.msgstr.values())]
    assert untranslated == []
    plural_forms = [e.msgid for e in entries if e.msgid_plural is not None and sorted(e.msgstr) != [0, 1]]
    assert plural_forms == []


def test_translations_keep_every_placeholder() -> None:
    wrong = []
    for e in messages():
        for index, text in e.msgstr.items():
            source = e.msgid_plural if index and e.msgid_plural is not None else e.msgid
            expected = sorted(PLACEHOLDER.findall(source))
            got = sorted(PLACEHOLDER.findall(text))
            # The singular of a plural may leave out its number ("this conflict").
            if got != expected and not (e.msgid_plural is not None and index == 0 and set(got) <= set(expected)):
                wrong.append((e.msgid, text))
    assert wrong == []


def test_python_format_entries_are_flagged_and_translations_are_english() -> None:
    entries = messages()
    for e in entries:
        if re.search(r"%\(\w+\)[sd]", e.msgid):
            assert "python-format" in e.flags, e.msgid
    still_italian = [
        e.msgid
        for e in entries
        for text in e.msgstr.values()
        if re.search(r"\b(della|degli|delle|prenotazione|paziente|presidio|diagnostica|referto)\b", text)
    ]
    assert still_italian == []


def test_compiled_catalogue_matches_the_po() -> None:
    """The committed .mo is the compilation of the committed .po."""
    assert MO.exists(), "run: python manage.py compilemessages -l en --ignore=.venv"
    with MO.open("rb") as fp:
        catalogue = gettext.GNUTranslations(fp)
    stale = []
    for e in messages():
        if e.msgid_plural is None:
            if catalogue.gettext(e.msgid) != e.msgstr[0]:
                stale.append(e.msgid)
        elif catalogue.ngettext(e.msgid, e.msgid_plural, 1) != e.msgstr[0] or (
            catalogue.ngettext(e.msgid, e.msgid_plural, 2) != e.msgstr[1]
        ):
            stale.append(e.msgid)
    assert stale == []


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="GNU gettext's msgfmt is not installed")
def test_msgfmt_checks_the_catalogue(tmp_path: Path) -> None:
    result = subprocess.run(
        ["msgfmt", "--check", "--check-format", "-o", str(tmp_path / "django.mo"), str(PO)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr


# --- the language switcher --------------------------------------------------------


def switch_language(client: Client, language: str, next_url: str) -> None:
    response = client.post("/i18n/setlang/", {"language": language, "next": next_url})
    assert response.status_code == 302
    assert response["Location"] == next_url


@pytest.mark.django_db
def test_login_page_is_italian_by_default_and_offers_the_switcher(client: Client) -> None:
    response = client.get("/accounts/login/?next=/cup/")
    html = response.content.decode()
    assert response.status_code == 200
    assert '<html lang="it">' in html
    assert "Accesso degli operatori" in html
    assert ">Accedi</button>" in html
    # The switcher: a labelled select of the languages, posted with the page to come back to.
    assert '<form class="language" method="post" action="/i18n/setlang/">' in html
    assert '<label for="language-select">Lingua</label>' in html
    assert '<select id="language-select" name="language">' in html
    assert re.search(r'<option value="it" lang="it"\s+selected>Italiano</option>', html)
    assert '<option value="en" lang="en">English</option>' in html
    assert '<input type="hidden" name="next" value="/accounts/login/?next=/cup/">' in html
    assert "Cambia lingua</button>" in html


@pytest.mark.django_db
def test_login_page_in_english_after_switching(client: Client) -> None:
    switch_language(client, "en", "/accounts/login/")
    html = client.get("/accounts/login/").content.decode()
    assert '<html lang="en">' in html
    assert "Staff log in" in html
    assert ">Log in</button>" in html
    assert "Username" in html
    assert "Accedi" not in html
    assert '<label for="language-select">Language</label>' in html
    assert re.search(r'<option value="en" lang="en"\s+selected>English</option>', html)
    # And back to Italian.
    switch_language(client, "it", "/accounts/login/")
    assert ">Accedi</button>" in client.get("/accounts/login/").content.decode()


@pytest.mark.django_db
def test_cup_home_in_italian_then_in_english(client: Client, cup: Cup) -> None:
    client.force_login(cup.operator.user)
    html = client.get("/cup/").content.decode()
    assert "Prenotazioni CUP" in html
    assert "Cerca un paziente" in html
    assert re.search(r">\s*Esci\s*</button>", html)

    switch_language(client, "en", "/cup/")
    response = client.get("/cup/")
    html = response.content.decode()
    assert response.status_code == 200
    assert '<html lang="en">' in html
    assert "CUP bookings" in html
    assert "Find a patient" in html
    assert "New patient" in html
    assert re.search(r">\s*Log out\s*</button>", html)
    assert "Prenotazioni CUP" not in html
    assert "Cerca un paziente" not in html


# --- messages from the services ---------------------------------------------


def register_mario(**changes: object) -> None:
    data: dict[str, object] = {
        "codice_fiscale": MARIO_CF,
        "family_name": "Rossi",
        "given_name": "Mario",
        "birth_date": dt.date(1956, 3, 12),
        "sex": "M",
        "user": None,
    }
    data.update(changes)
    services.patient_create(**data)  # type: ignore[arg-type]


@pytest.mark.django_db
def test_service_errors_follow_the_active_language() -> None:
    wrong_check = MARIO_CF[:15] + "X"
    with translation.override("it"), pytest.raises(services.BookingError) as italian:
        register_mario(codice_fiscale=wrong_check)
    assert str(italian.value) == f"Il carattere di controllo di {wrong_check} è errato: atteso P."

    with translation.override("en"), pytest.raises(services.BookingError) as english:
        register_mario(codice_fiscale=wrong_check)
    assert str(english.value) == f"The check character of {wrong_check} is wrong: P expected."

    with translation.override("en"), pytest.raises(services.BookingError) as english:
        register_mario(sex="F")
    assert str(english.value) == f"The codice fiscale (tax code) {MARIO_CF} belongs to a person of sex M."
