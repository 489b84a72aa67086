"""Person names as the archive matches them: one search key per name, the same in
every database.

PS3.4 C.2.2.2.1 leaves it to the SCP whether Person Name (PN) matching is
case-sensitive or accent-sensitive, if it documents its choice. This archive
matches PN keys **ignoring case and accents**: ``nicolò^pàola``,
``NICOLO^PAOLA`` and ``Nicolò^Pàola`` find ``NICOLÒ^PÀOLA``; ``müller*`` and
``mull*`` find ``MÜLLER^HANS``; ``zolw*`` finds ``ŻÓŁW^JAN``.

Both sides of a comparison go through :func:`pn_search_key`: the stored name
once, when it is written (a search column beside the name, indexed), and the
query's value when a query runs. The database then compares plain text
exactly (``=``, or a LIKE/GLOB with a literal stem), so SQLite, whose own case
folding stops at ASCII, and PostgreSQL answer the same, and a name prefix is
read from an index.

The key is the name with:

* each letter case-folded (``str.casefold``: ``ß`` becomes ``ss``);
* compatibility-decomposed (NFKD) and its diacritical marks dropped (the
  combining marks of the Combining Diacritical Marks blocks: ``ò`` is ``o``,
  ``ż`` is ``z``; the Japanese voicing marks are letters' parts, not accents,
  and stay);
* the letters NFKD leaves whole written as their base letters
  (:data:`SPECIAL_LETTERS`: ``ł`` is ``l``, ``ø`` is ``o``, ``æ`` is ``ae``,
  ``đ`` is ``d``, ``ı`` is ``i``, ...);
* the PN structure kept: components separated by ``^`` and component groups
  (alphabetic, ideographic, phonetic) by ``=``; spaces around components and
  empty components and groups at the end dropped, since ``ROSSI^MARIO^^^`` is
  ``ROSSI^MARIO`` (PS3.5 6.2.1).

``*`` and ``?`` pass unchanged, so a wildcard value's key is a wildcard pattern
over the stored keys. A ``?`` stands for one character of the key: ``ß`` and
``æ`` are two there (``STRAU??`` finds ``STRAUß``).
"""

from __future__ import annotations

import unicodedata

# Letters NFKD does not decompose into a base letter and a mark, written as the
# base letter(s) a reader without the letter on their keyboard types. Keys are
# case-folded letters (the table is applied after str.casefold).
SPECIAL_LETTERS: dict[str, str] = {
    "ł": "l",  # Polish
    "ø": "o",  # Danish, Norwegian
    "æ": "ae",  # Danish, Norwegian, Icelandic
    "œ": "oe",  # French
    "đ": "d",  # Croatian, Serbian, Vietnamese
    "ð": "d",  # Icelandic, Faroese
    "þ": "th",  # Icelandic
    "ı": "i",  # Turkish dotless i
    "ħ": "h",  # Maltese
    "ŧ": "t",  # Northern Sami
    "ŋ": "n",  # Northern Sami
    "ĸ": "k",  # Greenlandic (old orthography)
    "ſ": "s",  # long s (casefold already makes it s; kept for clarity)
}
_TRANSLATE = str.maketrans(SPECIAL_LETTERS)

# Unicode blocks of diacritical marks that combine with Latin, Greek and
# Cyrillic letters: these are accents. Other combining marks (the kana voicing
# marks U+3099/U+309A, Indic vowel signs, Hebrew points) are part of a letter.
_ACCENT_BLOCKS = (
    (0x0300, 0x036F),  # Combining Diacritical Marks
    (0x1AB0, 0x1AFF),  # Combining Diacritical Marks Extended
    (0x1DC0, 0x1DFF),  # Combining Diacritical Marks Supplement
    (0x20D0, 0x20FF),  # Combining Diacritical Marks for Symbols
    (0xFE20, 0xFE2F),  # Combining Half Marks
)

# The longest key the index columns hold (twice the name's 256: NFKD and the
# table lengthen a name, "ß" and "æ" by one letter each).
SEARCH_KEY_MAX_LENGTH = 512


def _is_accent(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _ACCENT_BLOCKS)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(c for c in decomposed if not _is_accent(c))
    # The table after the marks: "Ø" folds to "ø" (no decomposition), "Ł" to "ł".
    # NFC at the end puts the letters kept whole (Japanese voiced kana) back together.
    return unicodedata.normalize("NFC", bare.translate(_TRANSLATE))


def pn_search_key(value: str | None) -> str:
    """The search key of a PN value (one value: a list's items each have their own).

    ``pn_search_key("NICOLÒ^PÀOLA") == pn_search_key("nicolo^paola^^") == "nicolo^paola"``.
    Wildcards (``*``, ``?``) pass unchanged.
    """
    if not value:
        return ""
    groups = []
    for group in value.split("="):
        components = [_fold(component).strip() for component in group.split("^")]
        groups.append("^".join(components).rstrip("^"))
    return "=".join(groups).rstrip("=")[:SEARCH_KEY_MAX_LENGTH]


def text_search_key(value: str | None) -> str:
    """A free text folded as :func:`pn_search_key` folds a name, with no PN structure
    (a fuzzy key, part of a name)."""
    return _fold(value or "").strip()[:SEARCH_KEY_MAX_LENGTH]
