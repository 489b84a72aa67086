"""Reading back the text of the PDFs the archive writes (reportlab, page
streams left uncompressed or Flate-compressed), for tests only."""

from __future__ import annotations

import re
import zlib


def _unescape(literal: bytes) -> str:
    """A PDF string literal's text: reportlab escapes parentheses, backslashes and non-ASCII (octal)."""
    value = re.sub(rb"\\([0-7]{1,3})", lambda m: bytes([int(m.group(1), 8)]), literal)
    return re.sub(rb"\\([()\\])", rb"\1", value).decode("cp1252")


def pdf_pages(data: bytes) -> list[str]:
    """The strings each page draws (its content streams in order), whitespace folded."""
    pages = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        raw = match.group(1)
        try:
            raw = zlib.decompress(raw)
        except zlib.error:
            pass
        if b"BT" not in raw:  # not a page's content (fonts, images)
            continue
        parts = [_unescape(s) for s in re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", raw)]
        pages.append(re.sub(r"\s+", " ", " ".join(parts)))
    return pages


def pdf_text(data: bytes) -> str:
    """The strings the whole PDF draws, joined."""
    return " ".join(pdf_pages(data))
