"""The codice fiscale, the citizen's regional identifier: normalising and checking it.

The arithmetic (check character, *omocodia* substitutions, the encoded birth
date and place) is python-codicefiscale's; this module turns its verdict into
one clear message per kind of mistake, for forms, the API and ingestion.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from codicefiscale import codicefiscale as _cf
from django.core.exceptions import ValidationError
from django.utils.text import slugify
from django.utils.translation import gettext_lazy as _


def normalize_codice_fiscale(value: str) -> str:
    """Upper case, no spaces. An *omocodia* code (digits replaced by letters
    because two people shared a code) is a different person's code and is kept
    exactly as issued."""
    return "".join(str(value or "").split()).upper()


def codice_fiscale_error(value: str) -> str | None:
    """Why ``value`` is not a valid codice fiscale, or None when it is."""
    code = normalize_codice_fiscale(value)
    if len(code) != 16:
        return str(_("Il codice fiscale deve avere 16 caratteri (ne ha %(n)d).") % {"n": len(code)})
    if not _cf.CODICEFISCALE_RE.match(code):
        return str(_("Il codice fiscale %(code)s non ha il formato previsto.") % {"code": code})
    expected = _cf.encode_cin(code[:15])
    if code[15] != expected:
        return str(
            _("Il carattere di controllo di %(code)s è errato: atteso %(expected)s.")
            % {"code": code, "expected": expected}
        )
    try:
        _cf.decode(code)
    except ValueError as exc:
        reason = str(exc).replace("[codicefiscale] ", "")
        if "date" in reason:
            return str(_("La data di nascita in %(code)s non esiste.") % {"code": code})
        if "birthplace" in reason:
            return str(_("Il codice del luogo di nascita in %(code)s non esiste.") % {"code": code})
        return str(_("Il codice fiscale %(code)s non è valido: %(reason)s") % {"code": code, "reason": reason})
    return None


def is_valid_codice_fiscale(value: str) -> bool:
    return codice_fiscale_error(value) is None


def validate_codice_fiscale(value: str) -> None:
    """Django validator: raises ``ValidationError`` with the reason."""
    error = codice_fiscale_error(value)
    if error:
        raise ValidationError(error, code="invalid_codice_fiscale")


@dataclass(frozen=True)
class CodiceFiscaleFacts:
    """What a valid codice fiscale says of its holder.

    ``province`` is the place's province, ``EE`` for a foreign country;
    ``place_names`` every name the place is known by (Bolzano, Bozen).
    """

    code: str
    birth_date: dt.date
    sex: str
    place: str
    province: str
    place_code: str
    place_names: tuple[str, ...]

    @property
    def born_abroad(self) -> bool:
        return self.province == "EE"

    @property
    def place_label(self) -> str:
        """``Trieste (TS)``, or the country alone for a place abroad."""
        return self.place if self.born_abroad else f"{self.place} ({self.province})"

    def place_matches(self, typed: str) -> bool:
        """Whether ``typed`` names the place of birth: a name it is known by,
        optionally followed by the province in brackets, any case or accents."""
        text = (typed or "").strip()
        province = None
        match = re.match(r"^(.*?)\s*\(\s*([A-Za-z]{2})\s*\)$", text)
        if match:
            text, province = match.group(1), match.group(2).upper()
        if province is not None and province != self.province:
            return False
        return _place_slug(text) in {_place_slug(n) for n in self.place_names}


def _place_slug(name: str) -> str:
    # "Sant'Antonio" and "Sant Antonio", "Forlì" and "Forli" are the same place.
    return slugify(name.replace("'", " ").replace("’", " "))


def codice_fiscale_facts(value: str) -> CodiceFiscaleFacts:
    """Birth date, sex and place of birth written in ``value``.

    Raises ``ValueError`` with the reason (``codice_fiscale_error``'s message)
    when the code is not valid. A code issued in *omocodia* decodes like any other.
    """
    code = normalize_codice_fiscale(value)
    error = codice_fiscale_error(code)
    if error:
        raise ValueError(error)
    decoded = _cf.decode(code)
    place = decoded["birthplace"]
    names = [place.get("name") or "", *(place.get("name_slugs") or [])]
    names += [place.get(k) or "" for k in ("name_alt", "name_trans", "name_alt_trans", "name_alt_en")]
    return CodiceFiscaleFacts(
        code=code,
        birth_date=decoded["birthdate"].date(),
        sex=str(decoded["gender"]),
        place=str(place["name"]),
        province=str(place.get("province") or ""),
        place_code=str(place["code"]),
        place_names=tuple(dict.fromkeys(n for n in names if n)),
    )
