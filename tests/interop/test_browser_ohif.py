"""A viewer on another origin in a real Chromium, as OHIF is: the browser's own CORS
preflights, a token from /api/token/, QIDO-RS and WADO-RS with ``Authorization: Bearer``,
and a frame parsed as Cornerstone's extractMultipart.ts does and drawn on a canvas.

The page is served by a second HTTP server (http://127.0.0.1:<port>), the archive by the
live server (http://localhost:<port>): two origins, both loopback (no Private Network
Access preflight in the way)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.reporting_helpers import RADIOLOGIST_PASSWORD, Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

CHROMIUM = Path("/usr/bin/chromium")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

PAGE = """<!doctype html><html lang="it"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Visore di prova</title></head>
<body><h1>Visore su un'altra origine</h1><p id="stato">in attesa</p><canvas id="frame"></canvas></body></html>"""

# What OHIF (dicomweb-client) and Cornerstone do, in the page: the token, the study and series
# searches with OHIF's includefields, one series' metadata, the first frame, parsed as
# cornerstone3D's wadors/extractMultipart.ts parses it, and drawn.
SCRIPT = """async ({base, username, password, studyUid}) => {
  const out = {};
  const tokenResponse = await fetch(base + '/api/token/', {
    method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({username, password}),
  });
  out.tokenStatus = tokenResponse.status;
  const token = (await tokenResponse.json()).token;
  const auth = {Authorization: 'Bearer ' + token};
  const json = async (url) => {
    const r = await fetch(base + url, {headers: {...auth, Accept: 'application/dicom+json'}});
    return {status: r.status, type: r.headers.get('Content-Type'), body: await r.json()};
  };
  const studies = await json('/dicomweb/studies?StudyInstanceUID=' + studyUid +
    '&limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030');
  out.studies = {status: studies.status, type: studies.type, count: studies.body.length};
  const series = await json('/dicomweb/studies/' + studyUid + '/series?includefield=0008103E%2C00080021');
  out.series = {status: series.status, count: series.body.length};
  const seriesUid = series.body[0]['0020000E'].Value[0];
  const metadata = await json('/dicomweb/studies/' + studyUid + '/series/' + seriesUid + '/metadata');
  const item = metadata.body[0];
  const v = (tag) => item[tag].Value[0];
  out.metadata = {status: metadata.status, count: metadata.body.length, rows: v('00280010'), columns: v('00280011'),
                  bits: v('00280100'), signed: v('00280103'), bulk: item['7FE00010'].BulkDataURI};
  const frameUrl = '/dicomweb/studies/' + studyUid + '/series/' + seriesUid + '/instances/' + v('00080018') + '/frames/1';
  const frame = await fetch(base + frameUrl, {headers: {...auth,
    Accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}});
  const bytes = new Uint8Array(await frame.arrayBuffer());
  // extractMultipart.ts: the header up to CRLFCRLF, the boundary line, the part's Content-Type.
  const text = String.fromCharCode(...bytes.slice(0, 1000));
  const headerEnd = text.indexOf('\\r\\n\\r\\n');
  const header = text.slice(0, headerEnd).split('\\r\\n');
  const boundary = header.find((line) => line.substr(0, 2) === '--');
  const partType = header.find((line) => line.substr(0, 13) === 'Content-Type:').substr(13).trim();
  const offset = headerEnd + 4;
  const tail = String.fromCharCode(...bytes.slice(bytes.length - boundary.length - 8));
  const end = bytes.length - (tail.length - tail.indexOf(boundary));
  const pixels = bytes.slice(offset, end - 2);
  out.frame = {status: frame.status, type: frame.headers.get('Content-Type'), partType, length: pixels.length};
  // Draw it: 16-bit values, windowed to their range.
  const values = out.metadata.signed ? new Int16Array(pixels.buffer) : new Uint16Array(pixels.buffer);
  let lo = Infinity, hi = -Infinity;
  for (const x of values) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
  const canvas = document.getElementById('frame');
  canvas.width = out.metadata.columns; canvas.height = out.metadata.rows;
  canvas.style.width = (3 * canvas.width) + 'px';
  const context = canvas.getContext('2d');
  const image = context.createImageData(canvas.width, canvas.height);
  values.forEach((x, i) => {
    const g = Math.round(255 * (x - lo) / Math.max(hi - lo, 1));
    image.data.set([g, g, g, 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
  // A token that is not the archive's: a 401 the page can read (not a CORS failure).
  const refused = await fetch(base + '/dicomweb/studies', {headers: {Authorization: 'Bearer nope'}});
  out.refused = refused.status;
  document.getElementById('stato').textContent = 'immagine caricata: ' + out.frame.length + ' byte';
  return out;
}"""


@pytest.fixture
def viewer_origin(tmp_path: Path) -> Any:
    (tmp_path / "index.html").write_text(PAGE, encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_a_viewer_on_another_origin_reads_dicomweb_with_a_bearer_token(
    transactional_db: None, live_server: Any, reporting: Reporting, viewer_origin: str, settings: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    settings.CORS_ALLOWED_ORIGINS = [viewer_origin]
    study = reporting.study
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            failed: list[str] = []
            page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)
            page.goto(f"{viewer_origin}/index.html")
            out = page.evaluate(
                SCRIPT,
                {
                    "base": live_server.url,
                    "username": reporting.radiologist.username,  # type: ignore[attr-defined]
                    "password": RADIOLOGIST_PASSWORD,
                    "studyUid": study.study_instance_uid,
                },
            )
            page.screenshot(path=str(tmp_path / "ohif-origin.png"))
        finally:
            browser.close()
    assert out["tokenStatus"] == 200
    assert out["studies"] == {"status": 200, "type": "application/dicom+json", "count": 1}
    assert out["series"] == {"status": 200, "count": 2}
    assert out["metadata"]["status"] == 200 and out["metadata"]["count"] == 3
    assert out["metadata"]["bulk"].startswith(live_server.url + "/dicomweb/studies/")
    frame = out["frame"]
    assert frame["status"] == 200 and frame["type"].startswith("multipart/related;")
    assert frame["partType"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    meta = out["metadata"]
    assert frame["length"] == meta["rows"] * meta["columns"] * meta["bits"] // 8
    assert out["refused"] == 401
    # The only console errors are the refused request's.
    assert all("401" in message for message in failed), failed
    print(f"screenshot: {tmp_path / 'ohif-origin.png'}")
