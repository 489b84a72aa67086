"""What the browser tests share about the pages they drive."""

from __future__ import annotations

import re


def viewer_page_url(url: str) -> re.Pattern[str]:
    """A page with the image viewer, at ``url``, as ``page.wait_for_url`` must look for it.

    ``pacs/static/viewer.js`` keeps the address in step with the image shown: as soon as it
    starts, ``history.replaceState`` adds ``?serie=...&immagine=...#viewer``. When that runs
    before Playwright looks (a busy machine, an image that renders slowly), the exact address
    has already gone, and waiting for it waits until the timeout: the browser tests' one
    intermittent failure, seen in CI three times (2026-12-05).
    """
    return re.compile(rf"^{re.escape(url)}(\?[^#]*)?(#.*)?$")


def exam_page_drawn(page) -> None:  # type: ignore[no-untyped-def]
    """Wait until the citizen's exam page has drawn its report (``pacs/static/report-viewer.js``).

    The report's pages then appear above the page's buttons. They used to move them down, and
    a click sent meanwhile landed elsewhere (seen on a busy machine: a download that never
    came); their space is now kept from the first paint (``pacs/static/portal-exam.css``,
    tests/interop/test_browser_exam.py), but for one page only: a longer report on a phone
    held upright still grows the box. A page without a report (not online, on CD) has
    nothing to wait for.
    """
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.report-viewer'))"
        ".every(box => box.dataset.rendered || box.dataset.failedReason)",
        timeout=30_000,
    )
