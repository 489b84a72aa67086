// The radiologist's diagnostic viewer (templates/archive/reporting/viewer.html), on Cornerstone3D.
// Images and headers come from the archive's own DICOMweb (WADO-RS series metadata and frames),
// with the staff session cookie; the page's JSON (#viewer3d-data) names the study, its series
// (numbered as archive/series_numbers.py numbers them everywhere) and the patient's priors.
// Bundled by frontend/build.mjs; the state tests read is window.pacsViewer.
import {
  RenderingEngine,
  Enums,
  init as coreInit,
  metaData,
  utilities,
  eventTarget,
  imageLoader,
  imageLoadPoolManager,
  cache,
  setUseCPURendering,
  getShouldUseCPURendering,
} from "@cornerstonejs/core";
import {
  init as toolsInit,
  addTool,
  ToolGroupManager,
  WindowLevelTool,
  PanTool,
  ZoomTool,
  LengthTool,
  AngleTool,
  Enums as ToolEnums,
  annotation,
} from "@cornerstonejs/tools";
import { init as loaderInit, wadors } from "@cornerstonejs/dicom-image-loader";

const data = JSON.parse(document.getElementById("viewer3d-data").textContent);
const texts = data.texts;
const scriptUrl = new URL(import.meta.url);
const ENGINE = "pacs-engine";
const TOOLGROUP = "pacs-tools";
const LAYOUTS = { "1x1": 1, "1x2": 2, "2x2": 4 };
const MouseBindings = ToolEnums.MouseBindings;

const state = {
  ready: false,
  layout: "1x1",
  active: 0,
  tool: "WindowLevel",
  viewports: [], // {id, element, overlay, study, series, imageIds, meta}
  lastAnnotation: null,
  errors: [],
  cine: null,
  linked: new Map(), // viewport index -> {mode, offset}
};

const grid = document.getElementById("v3d-grid");
const status = document.getElementById("v3d-status");
let engine;

function say(text) {
  status.textContent = text;
}

// --- DICOM JSON helpers ------------------------------------------------------------------------

function value(meta, tag) {
  const element = meta && meta[tag];
  return element && element.Value ? element.Value : undefined;
}

function first(meta, tag) {
  const v = value(meta, tag);
  return v ? v[0] : undefined;
}

function personName(meta, tag) {
  const v = first(meta, tag);
  return v && typeof v === "object" ? (v.Alphabetic || "").replace(/\^/g, " ").trim() : v || "";
}

// --- loading a series -------------------------------------------------------------------------

const seriesCache = new Map();

async function loadSeries(series) {
  if (seriesCache.has(series.uid)) return seriesCache.get(series.uid);
  const promise = (async () => {
    const answer = await fetch(series.metadata, {
      headers: { Accept: "application/dicom+json" },
      credentials: "same-origin",
    });
    if (!answer.ok) throw new Error(`${series.metadata}: ${answer.status}`);
    const instances = await answer.json();
    const byUid = new Map(instances.map((m) => [first(m, "00080018"), m]));
    const imageIds = [];
    const metas = [];
    series.instances.forEach((uid, i) => {
      const meta = byUid.get(uid);
      if (!meta) return;
      const imageId = frameImageId(series, i);
      wadors.metaDataManager.add(imageId, meta);
      imageIds.push(imageId);
      metas.push(meta);
    });
    return { imageIds, metas };
  })();
  seriesCache.set(series.uid, promise);
  promise.catch(() => seriesCache.delete(series.uid));
  return promise;
}

// --- geometry ---------------------------------------------------------------------------------

function orientationLetter(vector) {
  // LPS: +x left, +y posterior, +z head. The strongest component first, a second one if large.
  const axes = [
    [vector[0], "L", "R"],
    [vector[1], "P", "A"],
    [vector[2], "H", "F"],
  ].sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]));
  let out = "";
  for (const [component, plus, minus] of axes) {
    if (Math.abs(component) > 0.25) out += component > 0 ? plus : minus;
  }
  return out.slice(0, 2);
}

function plane(imageId) {
  return metaData.get("imagePlaneModule", imageId) || {};
}

function normalOf(p) {
  const r = p.rowCosines;
  const c = p.columnCosines;
  if (!r || !c) return null;
  return [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]];
}

function dot(a, b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

function slicePosition(vp, index) {
  const p = plane(vp.imageIds[index]);
  const n = normalOf(p);
  if (!n || !p.imagePositionPatient) return null;
  return dot(p.imagePositionPatient, n);
}

// --- viewports --------------------------------------------------------------------------------

function makeCell(index) {
  const cell = document.createElement("div");
  cell.className = "v3d-cell";
  cell.dataset.index = String(index);
  const element = document.createElement("div");
  element.className = "v3d-element";
  element.tabIndex = 0;
  element.setAttribute("role", "img");
  element.oncontextmenu = (event) => event.preventDefault();
  const overlay = document.createElement("div");
  overlay.className = "v3d-overlay";
  overlay.setAttribute("aria-live", "off");
  for (const corner of ["tl", "tr", "bl", "br", "top", "bottom", "left", "right", "warn"]) {
    const part = document.createElement("div");
    part.className = `v3d-ov v3d-ov-${corner}`;
    overlay.appendChild(part);
  }
  cell.append(element, overlay);
  grid.appendChild(cell);
  cell.addEventListener("mousedown", () => setActive(index), true);
  element.addEventListener("focus", () => setActive(index));
  return { cell, element, overlay };
}

function ovPart(vp, name) {
  return vp.overlay.querySelector(`.v3d-ov-${name}`);
}

function setActive(index) {
  state.active = index;
  state.viewports.forEach((vp, i) => vp && vp.cell.classList.toggle("active", i === index));
}

function csViewport(index) {
  const vp = state.viewports[index];
  return vp && vp.imageIds ? engine.getViewport(vp.id) : null;
}

function windowOf(index) {
  const viewport = csViewport(index);
  if (!viewport) return null;
  const range = viewport.getProperties().voiRange;
  if (!range) return null;
  const { windowWidth, windowCenter } = utilities.windowLevel.toWindowLevel(range.lower, range.upper);
  return { center: windowCenter, width: windowWidth };
}

function updateOverlay(index) {
  const vp = state.viewports[index];
  const viewport = csViewport(index);
  if (!vp || !viewport) return;
  const i = viewport.getCurrentImageIdIndex();
  const meta = vp.metas[i] || {};
  const p = plane(vp.imageIds[i]);
  ovPart(vp, "tl").textContent = [
    data.patient.name || personName(meta, "00100010"),
    data.patient.id || first(meta, "00100020") || "",
  ].join("\n");
  ovPart(vp, "tr").textContent = [vp.study.date, vp.study.description, vp.series.label].join("\n");
  // Position and orientation only from the data set's own (a secondary capture, a planar
  // NM image have none: Cornerstone's defaults are not the patient's).
  const oriented = Boolean(value(meta, "00200037") && value(meta, "00200032"));
  const position = oriented ? slicePosition(vp, i) : null;
  const loc = first(meta, "00201041");
  const where = loc !== undefined ? Number(loc) : position;
  ovPart(vp, "bl").textContent = [
    `${texts.slice} ${i + 1}/${vp.imageIds.length}`,
    where !== null && where !== undefined && !Number.isNaN(where) ? `Pos. ${where.toFixed(1)} mm` : "",
    state.linked.has(index) ? texts.linked : "",
  ]
    .filter(Boolean)
    .join("\n");
  const w = windowOf(index);
  ovPart(vp, "br").textContent = w ? `W ${Math.round(w.width)} L ${Math.round(w.center)}` : "";
  for (const side of ["left", "right", "top", "bottom"]) ovPart(vp, side).textContent = "";
  if (oriented && p.rowCosines && p.columnCosines) {
    const r = p.rowCosines;
    const c = p.columnCosines;
    const { flipHorizontal, flipVertical } = viewport.getCamera();
    const right = flipHorizontal ? r.map((x) => -x) : r;
    const down = flipVertical ? c.map((x) => -x) : c;
    ovPart(vp, "right").textContent = orientationLetter(right);
    ovPart(vp, "left").textContent = orientationLetter(right.map((x) => -x));
    ovPart(vp, "bottom").textContent = orientationLetter(down);
    ovPart(vp, "top").textContent = orientationLetter(down.map((x) => -x));
  }
  // Calibration: Pixel Spacing (0028,0030) is the patient's; Imager Pixel Spacing (0018,1164)
  // alone is the detector's, not calibrated at the patient; neither: the tools measure in pixels.
  let warning = "";
  if (!value(meta, "00280030")) warning = value(meta, "00181164") ? texts.uncalibrated : texts.noSpacing;
  vp.warning = warning;
  ovPart(vp, "warn").textContent = warning;
  ovPart(vp, "warn").hidden = !warning;
  vp.element.setAttribute("aria-label", `${vp.series.label}, ${texts.slice} ${i + 1}/${vp.imageIds.length}`);
}

function frameImageId(series, i) {
  return `wadors:${new URL(series.frames[i], window.location.href).href}`;
}

async function loadFirst(series) {
  // The first image's header alone (WADO-RS instance metadata): a few ms, where the whole
  // series' metadata takes longer (hundreds of instances), so the first image shows at once.
  const url = series.frames[0].replace(/\/frames\/1$/, "/metadata");
  const answer = await fetch(url, { headers: { Accept: "application/dicom+json" }, credentials: "same-origin" });
  if (!answer.ok) throw new Error(`${url}: ${answer.status}`);
  const [meta] = await answer.json();
  const imageId = frameImageId(series, 0);
  wadors.metaDataManager.add(imageId, meta);
  return { imageIds: [imageId], metas: [meta] };
}

async function showSeries(index, study, series) {
  const vp = state.viewports[index];
  const viewport = engine.getViewport(vp.id);
  say(texts.loading);
  state.linked.delete(index);
  if (state.linked.size < 2) state.linked.clear();
  showLinked();
  const known = seriesCache.has(series.uid);
  const full = loadSeries(series);
  if (!known && series.instances.length > 1) {
    const first = await loadFirst(series);
    Object.assign(vp, { study, series, ...first });
    await viewport.setStack(first.imageIds, 0);
    viewport.render();
    updateOverlay(index);
  }
  const { imageIds, metas } = await full;
  if (!imageIds.length) {
    say(texts.noImages);
    return;
  }
  Object.assign(vp, { study, series, imageIds, metas });
  await viewport.setStack(imageIds, 0);
  viewport.render();
  updateOverlay(index);
  say("");
  prefetch(imageIds);
}

function prefetch(imageIds) {
  // Decode the series in the background so that scrolling shows what is already in memory.
  imageIds.forEach((imageId) => {
    imageLoadPoolManager.addRequest(
      () => imageLoader.loadAndCacheImage(imageId).catch(() => {}),
      Enums.RequestType.Prefetch,
      { imageId },
    );
  });
}

function buildLayout(layout) {
  const count = LAYOUTS[layout];
  const previous = state.viewports;
  const toolGroup = ToolGroupManager.getToolGroup(TOOLGROUP);
  previous.forEach((vp, i) => {
    if (i >= count && vp) {
      toolGroup.removeViewports(ENGINE, vp.id);
      engine.disableElement(vp.id);
      vp.cell.remove();
      state.linked.delete(i);
    }
  });
  state.viewports = previous.slice(0, count);
  if (state.linked.size < 2) state.linked.clear(); // a link needs two viewports
  showLinked();
  state.layout = layout;
  grid.className = `v3d-grid layout-${layout}`;
  for (let i = 0; i < count; i++) {
    if (state.viewports[i]) continue;
    const { cell, element, overlay } = makeCell(i);
    const id = `vp-${i}-${Date.now()}`;
    engine.enableElement({ viewportId: id, type: Enums.ViewportType.STACK, element });
    toolGroup.addViewport(id, ENGINE);
    const vp = { id, cell, element, overlay, imageIds: null, metas: [] };
    state.viewports[i] = vp;
    element.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => updateOverlay(i));
    element.addEventListener(Enums.Events.VOI_MODIFIED, () => updateOverlay(i));
    element.addEventListener(Enums.Events.CAMERA_MODIFIED, () => updateOverlay(i));
    element.addEventListener("wheel", (event) => onWheel(event, i), { passive: false });
  }
  engine.resize(true, true);
  state.viewports.forEach((vp, i) => vp.imageIds && updateOverlay(i));
  document.querySelectorAll("[data-layout]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.layout === layout)));
  if (state.active >= count) setActive(0);
  else setActive(state.active);
}

// --- scrolling and synchronisation ------------------------------------------------------------

let wheelRest = 0;

function onWheel(event, index) {
  event.preventDefault();
  // One image per notch: a mouse gives one event per notch (lines, or about 100 px); a
  // touchpad gives many small pixel deltas, summed to a notch's worth.
  let steps;
  if (event.deltaMode === 0 && Math.abs(event.deltaY) < 50) {
    wheelRest += event.deltaY;
    steps = Math.trunc(wheelRest / 100);
    wheelRest -= steps * 100;
  } else {
    steps = Math.sign(event.deltaY);
  }
  if (steps) scrollBy(index, steps);
}

function scrollTo(index, target, follow = true) {
  // The user's scrolling (wheel, keys, cine) moves the linked viewports too, from here and not
  // from the image events: a follower's own move, rounded to its slices, never leads back.
  const viewport = csViewport(index);
  if (!viewport) return;
  const n = state.viewports[index].imageIds.length;
  const clamped = Math.max(0, Math.min(n - 1, target));
  if (clamped !== viewport.getCurrentImageIdIndex()) viewport.setImageIdIndex(clamped);
  if (follow) syncFrom(index, clamped);
}

function scrollBy(index, steps) {
  const viewport = csViewport(index);
  if (viewport) scrollTo(index, viewport.getCurrentImageIdIndex() + steps);
}

function nearestIndex(vp, position) {
  let best = -1;
  let bestDistance = Infinity;
  vp.imageIds.forEach((_, i) => {
    const here = slicePosition(vp, i);
    if (here === null) return;
    const distance = Math.abs(here - position);
    if (distance < bestDistance) {
      best = i;
      bestDistance = distance;
    }
  });
  return best;
}

function syncFrom(source, sourceIndex) {
  // Linked viewports follow the source by slice position: the same point in space when the frames
  // of reference are the same, or the same offset from where they were linked when parallel.
  if (!state.linked.has(source) || state.linked.size < 2) return;
  const srcPosition = slicePosition(state.viewports[source], sourceIndex);
  if (srcPosition === null) return;
  for (const [other, link] of state.linked) {
    if (other === source) continue;
    const wanted = srcPosition - state.linked.get(source).offset + link.offset;
    const index = nearestIndex(state.viewports[other], wanted);
    if (index >= 0) scrollTo(other, index, false);
  }
}

function linkAll() {
  // The "Sincronizza" button: every viewport with images on a plane parallel to the active one's
  // scrolls with it (link() decides: the same point in space in a shared frame of reference,
  // otherwise the offset between the slices shown now).
  state.linked.clear();
  const source = state.active;
  if (!state.viewports[source] || !state.viewports[source].imageIds) return false;
  state.viewports.forEach((vp, i) => {
    if (i !== source && vp && vp.imageIds) link(source, i);
  });
  if (state.linked.size < 2) {
    state.linked.clear();
    return false;
  }
  syncFrom(source, csViewport(source).getCurrentImageIdIndex()); // a shared frame: the same point at once
  return true;
}

function unlinkAll() {
  state.linked.clear();
  state.viewports.forEach((vp, i) => vp && vp.imageIds && updateOverlay(i));
  showLinked();
}

function showLinked() {
  const button = document.getElementById("v3d-link");
  if (button) button.setAttribute("aria-pressed", String(state.linked.size >= 2));
}

function frameOfReference(vp) {
  return first(vp.metas[0], "00200052");
}

function link(a, b) {
  // Linked when the image planes are parallel; the offset is 0 in a shared frame of reference,
  // otherwise the difference between the slices shown now (the user aligns, then links).
  const va = state.viewports[a];
  const vb = state.viewports[b];
  const na = normalOf(plane(va.imageIds[0]));
  const nb = normalOf(plane(vb.imageIds[0]));
  if (!na || !nb || Math.abs(dot(na, nb)) < 0.99) return false;
  const same = frameOfReference(va) && frameOfReference(va) === frameOfReference(vb);
  const pa = slicePosition(va, csViewport(a).getCurrentImageIdIndex());
  const pb = slicePosition(vb, csViewport(b).getCurrentImageIdIndex());
  if (!state.linked.has(a)) state.linked.set(a, { offset: 0, same: true });
  state.linked.set(b, {
    offset: same ? state.linked.get(a).offset : state.linked.get(a).offset + (pb - pa),
    same,
  });
  updateOverlay(a);
  updateOverlay(b);
  showLinked();
  return true;
}

// --- window, tools, cine ----------------------------------------------------------------------

function setWindow(index, center, width) {
  const viewport = csViewport(index);
  if (!viewport) return;
  const { lower, upper } = utilities.windowLevel.toLowHighRange(width, center);
  viewport.setProperties({ voiRange: { lower, upper } });
  viewport.render();
  updateOverlay(index);
}

function datasetWindow(index) {
  const viewport = csViewport(index);
  const vp = state.viewports[index];
  const meta = vp.metas[viewport.getCurrentImageIdIndex()];
  const center = first(meta, "00281050");
  const width = first(meta, "00281051");
  if (center !== undefined && width !== undefined) setWindow(index, Number(center), Number(width));
  else {
    viewport.resetProperties();
    viewport.render();
  }
}

function setTool(name) {
  const toolGroup = ToolGroupManager.getToolGroup(TOOLGROUP);
  const primary = [{ mouseButton: MouseBindings.Primary }];
  for (const tool of ["WindowLevel", "Pan", "Zoom", "Length", "Angle"]) {
    if (tool === name) continue;
    const builtin = tool === "Pan" || tool === "Zoom";
    if (builtin) {
      toolGroup.setToolActive(tool === "Pan" ? PanTool.toolName : ZoomTool.toolName, {
        bindings: [{ mouseButton: tool === "Pan" ? MouseBindings.Auxiliary : MouseBindings.Secondary }],
      });
    } else {
      toolGroup.setToolPassive(toolName(tool));
    }
  }
  toolGroup.setToolActive(toolName(name), { bindings: primary });
  state.tool = name;
  document.querySelectorAll("[data-tool]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.tool === name)));
}

function toolName(short) {
  return {
    WindowLevel: WindowLevelTool.toolName,
    Pan: PanTool.toolName,
    Zoom: ZoomTool.toolName,
    Length: LengthTool.toolName,
    Angle: AngleTool.toolName,
  }[short];
}

function cine(on) {
  if (state.cine) {
    clearInterval(state.cine);
    state.cine = null;
  }
  if (on) {
    const index = state.active;
    state.cine = setInterval(() => {
      const viewport = csViewport(index);
      if (!viewport) return;
      const n = state.viewports[index].imageIds.length;
      scrollTo(index, (viewport.getCurrentImageIdIndex() + 1) % n);
    }, 1000 / 15);
  }
  document.getElementById("v3d-cine").setAttribute("aria-pressed", String(Boolean(on)));
}

function reset(index) {
  const viewport = csViewport(index);
  if (!viewport) return;
  viewport.resetCamera();
  viewport.resetProperties();
  datasetWindow(index);
  document.getElementById("v3d-preset").value = "";
  viewport.render();
}

function measurementOf(item) {
  // Cornerstone recomputes a measurement's statistics when it draws it (cachedStats, per target).
  const stats = item && item.data && item.data.cachedStats;
  const values = stats && Object.values(stats)[0];
  if (!values) return null;
  const tool = item.metadata.toolName;
  const number = tool === AngleTool.toolName ? values.angle : values.length;
  if (number === undefined || number === null || Number.isNaN(number)) return null;
  return { tool, value: number, unit: tool === AngleTool.toolName ? "°" : values.unit };
}

function onMeasurement(event) {
  state.lastAnnotation = event.detail.annotation;
}

// --- the page ---------------------------------------------------------------------------------

function seriesList() {
  const list = document.getElementById("v3d-series");
  data.study.series.forEach((series) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${series.label} (${series.instances.length})`;
    button.addEventListener("click", () => showSeries(state.active, data.study, series).catch(fail));
    item.appendChild(button);
    list.appendChild(item);
  });
}

async function openPrior(priorIndex) {
  const prior = data.priors[priorIndex];
  if (!prior || !prior.series.length) {
    say(texts.noImages);
    return;
  }
  if (state.layout === "1x1") buildLayout("1x2");
  const target = state.active === 0 ? 1 : state.active;
  const current = state.viewports[0];
  // The prior's series most like the current one: same modality and as many images, else the first.
  const like =
    prior.series.find((s) => current.series && s.modality === current.series.modality && s.instances.length === current.imageIds.length) ||
    prior.series.find((s) => current.series && s.modality === current.series.modality) ||
    prior.series[0];
  await showSeries(target, prior, like);
  if (current.imageIds && link(0, target)) syncFrom(0, csViewport(0).getCurrentImageIdIndex());
  setActive(0);
}

function fail(error) {
  state.errors.push(String(error && error.message ? error.message : error));
  say(texts.error);
  // eslint-disable-next-line no-console
  console.error(error);
}

function onKey(event) {
  if (event.target.closest && event.target.closest("select, input, textarea")) return;
  if (event.key === " " && event.target.closest && event.target.closest("button, a")) return; // their own click
  const index = state.active;
  const viewport = csViewport(index);
  if (!viewport) return;
  const n = state.viewports[index].imageIds.length;
  const steps = {
    ArrowUp: -1,
    ArrowLeft: -1,
    ArrowDown: 1,
    ArrowRight: 1,
    PageUp: -10,
    PageDown: 10,
  };
  if (event.key in steps) scrollBy(index, steps[event.key]);
  else if (event.key === "Home") scrollTo(index, 0);
  else if (event.key === "End") scrollTo(index, n - 1);
  else if (event.key === " ") cine(!state.cine);
  else return;
  event.preventDefault();
}

function softwareWebGL() {
  try {
    const gl = document.createElement("canvas").getContext("webgl2");
    if (!gl) return true;
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const renderer = info ? String(gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) : "";
    gl.getExtension("WEBGL_lose_context")?.loseContext();
    return /swiftshader|llvmpipe|softpipe|software/i.test(renderer);
  } catch {
    return true;
  }
}

async function main() {
  const base = new URL(".", scriptUrl).href;
  // WebGL when the browser has a GPU; Cornerstone's CPU path when its WebGL is software (SwiftShader,
  // llvmpipe: a machine without a GPU, a headless browser), where the CPU path draws a slice
  // several times faster (bench/viewer). ?rendering=cpu or ?rendering=gpu chooses.
  const asked = new URLSearchParams(window.location.search).get("rendering");
  if (asked === "cpu" || (asked !== "gpu" && softwareWebGL())) setUseCPURendering(true);
  await coreInit();
  loaderInit({ maxWebWorkers: Math.max(1, Math.min(4, (navigator.hardwareConcurrency || 2) - 1)), wasmBasePath: `${base}wasm/` });
  toolsInit();
  for (const Tool of [WindowLevelTool, PanTool, ZoomTool, LengthTool, AngleTool]) addTool(Tool);
  const toolGroup = ToolGroupManager.createToolGroup(TOOLGROUP);
  for (const Tool of [WindowLevelTool, PanTool, ZoomTool, LengthTool, AngleTool]) toolGroup.addTool(Tool.toolName);
  engine = new RenderingEngine(ENGINE);
  buildLayout("1x1");
  setTool("WindowLevel");
  seriesList();
  eventTarget.addEventListener(ToolEnums.Events.ANNOTATION_COMPLETED, onMeasurement);
  eventTarget.addEventListener(ToolEnums.Events.ANNOTATION_MODIFIED, onMeasurement);

  document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  document.querySelectorAll("[data-layout]").forEach((b) => b.addEventListener("click", () => buildLayout(b.dataset.layout)));
  document.querySelectorAll("[data-prior]").forEach((b) =>
    b.addEventListener("click", () => openPrior(Number(b.dataset.prior)).catch(fail)),
  );
  document.getElementById("v3d-preset").addEventListener("change", (event) => {
    const v = event.target.value;
    if (!v) datasetWindow(state.active);
    else {
      const [center, width] = v.split(",").map(Number);
      setWindow(state.active, center, width);
    }
  });
  document.getElementById("v3d-cine").addEventListener("click", () => cine(!state.cine));
  document.getElementById("v3d-reset").addEventListener("click", () => reset(state.active));
  document.getElementById("v3d-link").addEventListener("click", () => {
    if (state.linked.size >= 2) unlinkAll();
    else if (!linkAll()) say(texts.cannotLink);
    else say("");
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => engine.resize(true, true));

  if (!data.study.series.length) {
    say(texts.noImages);
  } else {
    await showSeries(0, data.study, data.study.series[0]);
    state.viewports[0].element.focus();
  }
  state.ready = true;
}

// What tests (and a curious radiologist's console) read: the state of each viewport.
window.pacsViewer = {
  get ready() {
    return state.ready;
  },
  get errors() {
    return state.errors.slice();
  },
  get layout() {
    return state.layout;
  },
  get active() {
    return state.active;
  },
  get cpuRendering() {
    return getShouldUseCPURendering();
  },
  get tool() {
    return state.tool;
  },
  get lastMeasurement() {
    return measurementOf(state.lastAnnotation);
  },
  viewport(index = 0) {
    const vp = state.viewports[index];
    const viewport = csViewport(index);
    if (!vp || !viewport) return null;
    const image = viewport.getCurrentImageIdIndex();
    return {
      index: image,
      count: vp.imageIds.length,
      window: windowOf(index),
      studyUid: vp.study.uid,
      seriesUid: vp.series.uid,
      position: slicePosition(vp, image),
      linked: state.linked.has(index),
      zoom: viewport.getZoom ? viewport.getZoom() : null,
      cine: Boolean(state.cine),
      warning: vp.warning || "",
      rendered: Boolean(viewport.getImageData && viewport.getImageData()),
    };
  },
  // The page coordinates of an image pixel (column, row) in a viewport, through Cornerstone's
  // imageToWorldCoords and worldToCanvas: where a test puts the mouse to measure.
  pagePoint(index, column, row) {
    const vp = state.viewports[index];
    const viewport = csViewport(index);
    const world = utilities.imageToWorldCoords(vp.imageIds[viewport.getCurrentImageIdIndex()], [column, row]);
    const [x, y] = viewport.worldToCanvas(world);
    const rect = vp.element.getBoundingClientRect();
    return { x: rect.left + x, y: rect.top + y };
  },
  measurements() {
    return annotation.state.getAllAnnotations().map((a) => ({
      tool: a.metadata.toolName,
      stats: Object.values(a.data.cachedStats || {})[0] || null,
    }));
  },
  // How many images of a viewport's series are decoded in memory (the prefetch's progress).
  cached(index = 0) {
    const vp = state.viewports[index];
    return vp && vp.imageIds ? vp.imageIds.filter((id) => cache.getImage(id)).length : 0;
  },
  // Milliseconds to show n images one after the other (each drawn before the next): the benchmark's.
  async timeScroll(index, n) {
    const vp = state.viewports[index];
    const viewport = csViewport(index);
    const start = performance.now();
    for (let k = 1; k <= n; k++) {
      const target = k % vp.imageIds.length;
      const drawn = new Promise((resolve) => vp.element.addEventListener(Enums.Events.IMAGE_RENDERED, resolve, { once: true }));
      viewport.setImageIdIndex(target);
      await drawn;
    }
    return performance.now() - start;
  },
  scrollTo,
  setWindow,
  setTool,
  openPrior: (i) => openPrior(i),
  setActive,
  layout_: buildLayout,
};

main().catch(fail);
