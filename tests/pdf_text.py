"""Reading back the text of the PDFs the archive writes (reportlab), for tests only.

The report's PDF embeds TrueType subsets (archive.reporting.pdf): a string's
bytes are glyph codes, read through the font's ``/ToUnicode`` map; the other
PDFs (standard fonts) are read as reportlab writes them, in cp1252.
"""

from __future__ import annotations

import io
import re

import pikepdf


def _cmap(font: pikepdf.Object) -> dict[int, str] | None:
    if "/ToUnicode" not in font:
        return None
    data = font.ToUnicode.read_bytes().decode("latin-1")
    mapping: dict[int, str] = {}
    for block in re.findall(r"beginbfchar(.*?)endbfchar", data, re.S):
        for src, dst in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            mapping[int(src, 16)] = bytes.fromhex(dst).decode("utf-16-be")
    for block in re.findall(r"beginbfrange(.*?)endbfrange", data, re.S):
        for lo, hi, dst in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            start = int(dst, 16)
            for offset, code in enumerate(range(int(lo, 16), int(hi, 16) + 1)):
                mapping[code] = chr(start + offset)
    return mapping


def pdf_pages(data: bytes) -> list[str]:
    """The strings each page draws (its content streams in order), whitespace folded."""
    pages = []
    with pikepdf.open(io.BytesIO(data)) as pdf:
        for page in pdf.pages:
            fonts = page.Resources.get("/Font", {})
            maps = {str(name): _cmap(font) for name, font in fonts.items()}
            current: dict[int, str] | None = None
            parts: list[str] = []
            for operands, operator in pikepdf.parse_content_stream(page):
                op = str(operator)
                if op == "Tf":
                    current = maps.get(str(operands[0]))
                elif op == "Tj":
                    raw = bytes(operands[0])
                    if current is None:
                        parts.append(raw.decode("cp1252"))
                    else:
                        parts.append("".join(current.get(b, "?") for b in raw))
            pages.append(re.sub(r"\s+", " ", " ".join(parts)))
    return pages


def pdf_text(data: bytes) -> str:
    """The strings the whole PDF draws, joined."""
    return " ".join(pdf_pages(data))
