"""The codice fiscale, the citizen's regional identifier: normalising and checking it.

The arithmetic (check character, *omocodia* substitutions, the encoded birth
date and place) is python-codicefiscale's; this module turns its verdict into
one clear message per kind of mistake, for forms, the API and ingestion.
"""

from __future__ import annotations

from codicefiscale import codicefiscale as _cf
from django.core.exceptions import ValidationError
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
