/* The signed report shown in the citizen's exam page (templates/portal/exam.html)
 * with PDF.js (npm pdfjs-dist, its legacy build, served from this server as
 * static/vendor/pdfjs: pacs/settings.py). An ES module, loaded with type="module".
 *
 * Each .report-viewer names the PDF (the audited download link with ?mostra=1,
 * answered inline), PDF.js's module and worker and its standard fonts. Every
 * page is drawn on a canvas at the box's width (sharp on high-density
 * screens) with PDF.js's text layer over it: the words stay selectable and a
 * screen reader reads them. Drawn again when the width changes (a phone turned).
 *
 * Under the page's Content-Security-Policy (scripts, workers and fetches from
 * this server only, no inline styles, no eval): PDF.js runs its parser in a
 * worker from this server, needs no eval, and WebAssembly (for image codecs a
 * report does not use, which would need 'wasm-unsafe-eval') is turned off.
 * Without JavaScript, or if anything fails, the download buttons remain.
 */

const MAX_WIDTH = 860;

function format(text, values) {
  return text.replace(/%\((\w+)\)s/g, (_m, key) => String(values[key]));
}

async function show(box, pdfjs) {
  const status = box.querySelector(".report-status");
  const pages = box.querySelector(".report-pages");
  const task = pdfjs.getDocument({
    url: box.dataset.url,
    withCredentials: true,
    standardFontDataUrl: box.dataset.fonts,
    useWasm: false,
    enableXfa: false,
    isEvalSupported: false, // older PDF.js versions only; nothing evaluates strings
  });
  const pdf = await task.promise;
  let drawnWidth = 0;
  let drawing = Promise.resolve();

  async function draw() {
    // At most an A4 page's width on a desktop: larger only makes the text too big to read.
    const width = Math.min(MAX_WIDTH, Math.floor(pages.clientWidth || box.clientWidth));
    if (!width || Math.abs(width - drawnWidth) < 8) {
      return;
    }
    drawnWidth = width;
    const frag = document.createDocumentFragment();
    const ratio = window.devicePixelRatio || 1;
    for (let n = 1; n <= pdf.numPages; n++) {
      const page = await pdf.getPage(n);
      const inner = width - 2 * 8; // the list's padding
      const scale = inner / page.getViewport({ scale: 1 }).width;
      const viewport = page.getViewport({ scale });
      const holder = document.createElement("div");
      holder.className = "report-page";
      holder.setAttribute("role", "group");
      holder.setAttribute("aria-label", format(box.dataset.pageLabel, { n, total: pdf.numPages }));
      holder.style.width = `${Math.floor(viewport.width)}px`;
      holder.style.height = `${Math.floor(viewport.height)}px`;
      holder.style.setProperty("--scale-factor", String(scale));
      holder.style.setProperty("--total-scale-factor", String(scale));
      const canvas = document.createElement("canvas");
      canvas.width = Math.floor(viewport.width * ratio);
      canvas.height = Math.floor(viewport.height * ratio);
      canvas.setAttribute("aria-hidden", "true");
      holder.appendChild(canvas);
      const text = document.createElement("div");
      text.className = "textLayer";
      holder.appendChild(text);
      frag.appendChild(holder);
      await page.render({
        canvas,
        canvasContext: canvas.getContext("2d"),
        viewport,
        transform: ratio !== 1 ? [ratio, 0, 0, ratio, 0, 0] : undefined,
      }).promise;
      const layer = new pdfjs.TextLayer({
        textContentSource: page.streamTextContent(),
        container: text,
        viewport,
      });
      await layer.render();
    }
    pages.replaceChildren(frag);
    pages.hidden = false;
    box.dataset.rendered = String(pdf.numPages);
    status.hidden = true;
  }

  await draw();
  let timer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      drawing = drawing.then(draw).catch(() => {});
    }, 200);
  });
}

async function main() {
  const boxes = Array.from(document.querySelectorAll(".report-viewer[data-url]"));
  if (!boxes.length) {
    return;
  }
  let pdfjs;
  try {
    pdfjs = await import(boxes[0].dataset.pdfjs);
    pdfjs.GlobalWorkerOptions.workerSrc = boxes[0].dataset.worker;
  } catch (error) {
    boxes.forEach((box) => {
      box.querySelector(".report-status").textContent = box.dataset.failed;
      box.dataset.failedReason = String(error);
    });
    return;
  }
  for (const box of boxes) {
    try {
      await show(box, pdfjs);
    } catch (error) {
      box.querySelector(".report-status").textContent = box.dataset.failed;
      box.dataset.failedReason = String(error);
    }
  }
}

main();
