/* The image viewer of the radiologist's study page (templates/archive/reporting/study.html)
 * and of the citizen's exam (templates/portal/viewer.html): one script, one behaviour.
 *
 * Moves through a series' JPEG previews with a swipe (Pointer Events: a finger,
 * a pen or the mouse dragged left or right), the slider, the previous/next
 * buttons, the mouse wheel, the arrow keys, Page Up/Down, Home/End; zooms with
 * two fingers (pinch), the buttons and the + - 0 keys; a double tap zooms in
 * where it falls, or back to the whole image. Zoomed in, one finger moves the
 * image. The radiologist's page also has window presets, sent as the WADO-RS
 * "window" parameter.
 *
 * Without this script the page still works: the thumbnails and the previous/
 * next links are plain links, and the slider (and the preset buttons) submit a
 * GET form that the server answers with the chosen image. The script only
 * takes those over, and keeps the address in step (history.replaceState) so
 * that a reload shows the same image. The series' numbers, labels and image
 * addresses come from the server (#viewer-data, archive/series_numbers.py).
 */
(function () {
  "use strict";

  var ZOOM_LEVELS = [0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8];
  var MIN_SCALE = 0.5;
  var MAX_SCALE = 8;
  var WHEEL_STEP = 60; // pixels of wheel travel per image (a mouse notch is ~100, a touchpad sends many small ones)
  var SWIPE_MIN = 30; // pixels a finger travels sideways for a swipe (less is a tap)
  var TAP_SLOP = 12; // pixels a tap may wander
  var DOUBLE_TAP_MS = 350;

  function format(text, values) {
    return text.replace(/%\((\w+)\)s/g, function (_m, key) {
      return String(values[key]);
    });
  }

  function clamp(value, low, high) {
    return Math.max(low, Math.min(high, value));
  }

  function init() {
    var dataElement = document.getElementById("viewer-data");
    var viewer = document.getElementById("viewer");
    var img = document.getElementById("viewer-image");
    if (!dataElement || !viewer || !img) {
      return;
    }
    var data = JSON.parse(dataElement.textContent);
    var seriesList = data.series;
    if (!seriesList.length) {
      return;
    }
    var texts = data.texts || {};
    var state = {
      series: data.state.series,
      image: data.state.image,
      preset: data.state.preset,
      scale: 1 // 1: the whole image fits the viewport
    };
    var viewport = document.getElementById("viewer-viewport");
    var form = document.getElementById("viewer-form");
    var slider = document.getElementById("viewer-slider");
    var position = document.getElementById("viewer-position");
    var presetsBox = document.getElementById("viewer-presets");
    var zoomBox = document.getElementById("viewer-zoom");
    var zoomLevel = document.getElementById("viewer-zoom-level");
    var seriesInput = form.querySelector("input[type=hidden][name=serie]");
    var presetInput = form.querySelector("input[type=hidden][name=finestra]");
    var thumbs = Array.prototype.slice.call(viewer.querySelectorAll("a[data-series]"));
    var steppers = Array.prototype.slice.call(viewer.querySelectorAll("button[data-step]"));
    var seriesTitle = document.getElementById("viewer-series-title");
    var preloaded = {};
    var wheelTravel = 0;

    Array.prototype.forEach.call(viewer.querySelectorAll("[data-nojs]"), function (element) {
      element.hidden = true;
    });
    Array.prototype.forEach.call(viewer.querySelectorAll("[data-js]"), function (element) {
      element.hidden = false;
    });
    if (zoomBox) {
      zoomBox.hidden = false;
    }

    function current() {
      return seriesList[state.series];
    }

    function imageUrl(series, index, preset) {
      var chosen = series.presets[preset];
      var url = series.images[index];
      return chosen && chosen.window ? url + "?window=" + encodeURIComponent(chosen.window) : url;
    }

    function preload(index) {
      var series = current();
      if (index < 0 || index >= series.images.length) {
        return;
      }
      var url = imageUrl(series, index, state.preset);
      if (!preloaded[url]) {
        var image = new Image();
        image.src = url;
        preloaded[url] = image;
      }
    }

    // Lay the image out at state.scale, keeping the viewport point (fx, fy) (its
    // centre by default) over the same point of the image.
    function layout(fx, fy) {
      if (!img.naturalWidth || !viewport.clientWidth) {
        return;
      }
      var vw = viewport.clientWidth;
      var vh = viewport.clientHeight;
      fx = fx === undefined ? vw / 2 : fx;
      fy = fy === undefined ? vh / 2 : fy;
      var fit = Math.min(vw / img.naturalWidth, vh / img.naturalHeight);
      var before = img.getBoundingClientRect();
      var box = viewport.getBoundingClientRect();
      // Where the focus point falls in the image, as a fraction of its size.
      var rx = before.width ? (box.left + fx - before.left) / before.width : 0.5;
      var ry = before.height ? (box.top + fy - before.top) / before.height : 0.5;
      var width = Math.max(1, Math.round(img.naturalWidth * fit * state.scale));
      var height = Math.max(1, Math.round(img.naturalHeight * fit * state.scale));
      viewport.classList.add("zoomed");
      viewport.classList.toggle("magnified", state.scale > 1.001);
      img.style.width = width + "px";
      img.style.height = height + "px";
      var after = img.getBoundingClientRect();
      viewport.scrollLeft += after.left + clamp(rx, 0, 1) * width - (box.left + fx);
      viewport.scrollTop += after.top + clamp(ry, 0, 1) * height - (box.top + fy);
      if (zoomLevel) {
        zoomLevel.textContent = Math.round(state.scale * 100) + "%";
      }
    }

    function zoomTo(scale, fx, fy) {
      var next = clamp(scale, MIN_SCALE, MAX_SCALE);
      if (Math.abs(next - state.scale) > 0.0001) {
        state.scale = next;
        layout(fx, fy);
      }
    }

    // A button or key: the next zoom level up or down, or back to the whole image.
    function zoom(step) {
      if (step === 0) {
        zoomTo(1);
        return;
      }
      var levels = step > 0 ? ZOOM_LEVELS : ZOOM_LEVELS.slice().reverse();
      for (var i = 0; i < levels.length; i++) {
        if (step > 0 ? levels[i] > state.scale + 0.001 : levels[i] < state.scale - 0.001) {
          zoomTo(levels[i]);
          return;
        }
      }
    }

    function renderPresets() {
      if (!presetsBox) {
        return;
      }
      presetsBox.textContent = "";
      current().presets.forEach(function (preset, index) {
        var button = document.createElement("button");
        button.type = "submit";
        button.name = "finestra";
        button.value = String(index);
        button.className = "secondary";
        button.textContent = preset.label;
        presetsBox.appendChild(button);
      });
    }

    function show() {
      var series = current();
      var total = series.images.length;
      var url = imageUrl(series, state.image, state.preset);
      if (img.getAttribute("src") !== url) {
        viewport.setAttribute("aria-busy", "true");
        img.src = url;
      }
      var where = format(texts.image || "%(n)s / %(total)s", { n: state.image + 1, total: total });
      var preset = series.presets[state.preset];
      img.alt = series.label + ", " + where + (preset ? ", " + preset.label : "");
      slider.max = String(total);
      slider.value = String(state.image + 1);
      slider.setAttribute("aria-valuetext", where);
      position.textContent = state.image + 1 + " / " + total;
      if (seriesTitle) {
        seriesTitle.textContent = series.label;
      }
      if (presetsBox) {
        Array.prototype.forEach.call(presetsBox.querySelectorAll("button"), function (button) {
          button.setAttribute("aria-pressed", Number(button.value) === state.preset ? "true" : "false");
        });
      }
      thumbs.forEach(function (link) {
        if (Number(link.getAttribute("data-series")) === state.series) {
          link.setAttribute("aria-current", "true");
        } else {
          link.removeAttribute("aria-current");
        }
      });
      steppers.forEach(function (button) {
        var step = Number(button.getAttribute("data-step"));
        button.disabled = step < 0 ? state.image === 0 : state.image === total - 1;
      });
      seriesInput.value = String(series.id);
      if (presetInput) {
        presetInput.value = String(state.preset);
      }
      if (window.history && window.history.replaceState) {
        var query = "?serie=" + series.id + "&immagine=" + (state.image + 1);
        if (presetInput) {
          query += "&finestra=" + state.preset;
        }
        window.history.replaceState(null, "", query + "#viewer");
      }
      preload(state.image + 1);
      preload(state.image - 1);
    }

    // The current series' thumbnail in sight, scrolling the strip of thumbnails only (never the page).
    function thumbInSight() {
      thumbs.forEach(function (link) {
        if (Number(link.getAttribute("data-series")) !== state.series) {
          return;
        }
        var strip = link.closest("ul");
        if (!strip || strip.scrollWidth <= strip.clientWidth) {
          return;
        }
        var inner = link.getBoundingClientRect();
        var outer = strip.getBoundingClientRect();
        if (inner.left < outer.left || inner.right > outer.right) {
          strip.scrollLeft += inner.left - outer.left - (outer.width - inner.width) / 2;
        }
      });
    }

    function go(index) {
      var last = current().images.length - 1;
      var next = clamp(index, 0, last);
      if (next !== state.image) {
        state.image = next;
        show();
      }
    }

    img.addEventListener("load", function () {
      viewport.removeAttribute("aria-busy");
      layout();
    });
    img.addEventListener("error", function () {
      viewport.removeAttribute("aria-busy");
    });
    window.addEventListener("resize", function () {
      layout();
    });

    thumbs.forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        state.series = Number(link.getAttribute("data-series"));
        state.image = 0;
        state.preset = 0;
        state.scale = 1;
        renderPresets();
        show();
        thumbInSight();
        viewport.focus({ preventScroll: true });
      });
    });

    steppers.forEach(function (button) {
      button.addEventListener("click", function () {
        go(state.image + Number(button.getAttribute("data-step")));
      });
    });

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = event.submitter;
      if (button && button.name === "finestra") {
        state.preset = Number(button.value);
        show();
      }
    });

    slider.addEventListener("input", function () {
      go(Number(slider.value) - 1);
    });

    if (zoomBox) {
      zoomBox.addEventListener("click", function (event) {
        var button = event.target.closest("button[data-zoom]");
        if (!button) {
          return;
        }
        var what = button.getAttribute("data-zoom");
        zoom(what === "in" ? 1 : what === "out" ? -1 : 0);
      });
    }

    // The citizen's page is the viewer alone: its keys work anywhere on it (data-keys="page").
    var keyScope = viewer.getAttribute("data-keys") === "page" ? document : viewer;
    keyScope.addEventListener("keydown", function (event) {
      var target = event.target;
      if (event.altKey || event.ctrlKey || event.metaKey || target === slider) {
        return; // the slider moves itself with the arrow keys
      }
      if (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT") {
        return;
      }
      var handled = true;
      switch (event.key) {
        case "ArrowDown":
        case "ArrowRight":
          go(state.image + 1);
          break;
        case "ArrowUp":
        case "ArrowLeft":
          go(state.image - 1);
          break;
        case "PageDown":
          go(state.image + 10);
          break;
        case "PageUp":
          go(state.image - 10);
          break;
        case "Home":
          go(0);
          break;
        case "End":
          go(current().images.length - 1);
          break;
        case "+":
        case "=":
          zoom(1);
          break;
        case "-":
          zoom(-1);
          break;
        case "0":
          zoom(0);
          break;
        default:
          handled = false;
      }
      if (handled) {
        event.preventDefault();
      }
    });

    viewport.addEventListener(
      "wheel",
      function (event) {
        event.preventDefault();
        // deltaMode 1 is lines, 2 pages: count either as a full step.
        wheelTravel += event.deltaMode === 0 ? event.deltaY : Math.sign(event.deltaY) * WHEEL_STEP;
        while (Math.abs(wheelTravel) >= WHEEL_STEP) {
          var step = wheelTravel > 0 ? 1 : -1;
          wheelTravel -= step * WHEEL_STEP;
          go(state.image + step);
        }
      },
      { passive: false }
    );

    // --- touch, pen and mouse: swipe, pinch, pan, double tap (Pointer Events) -------------
    // The viewport has touch-action: none (its stylesheet): the browser leaves these
    // gestures to this script instead of scrolling or zooming the page.
    var pointers = {}; // pointerId -> {x, y}
    var gesture = null;
    var lastTap = null; // {t, x, y}

    function local(event) {
      var box = viewport.getBoundingClientRect();
      return { x: event.clientX - box.left, y: event.clientY - box.top };
    }

    function pair() {
      var ids = Object.keys(pointers);
      var a = pointers[ids[0]];
      var b = pointers[ids[1]];
      return {
        distance: Math.max(1, Math.hypot(a.x - b.x, a.y - b.y)),
        x: (a.x + b.x) / 2,
        y: (a.y + b.y) / 2
      };
    }

    function start() {
      var ids = Object.keys(pointers);
      if (ids.length >= 2) {
        var p = pair();
        gesture = { kind: "pinch", distance: p.distance, scale: state.scale, x: p.x, y: p.y };
      } else if (ids.length === 1) {
        var only = pointers[ids[0]];
        gesture = {
          kind: state.scale > 1.001 ? "pan" : "swipe",
          x0: only.x,
          y0: only.y,
          x: only.x,
          y: only.y,
          t0: Date.now(),
          moved: false
        };
      } else {
        gesture = null;
      }
    }

    viewport.addEventListener("pointerdown", function (event) {
      if (event.pointerType === "mouse" && event.button !== 0) {
        return;
      }
      pointers[event.pointerId] = local(event);
      if (viewport.setPointerCapture) {
        try {
          viewport.setPointerCapture(event.pointerId);
        } catch (_e) {
          // an already-released pointer: nothing to capture
        }
      }
      if (event.pointerType === "mouse") {
        event.preventDefault(); // no image drag-and-drop
      }
      start();
    });

    viewport.addEventListener("pointermove", function (event) {
      if (!pointers[event.pointerId] || !gesture) {
        return;
      }
      pointers[event.pointerId] = local(event);
      if (gesture.kind === "pinch" && Object.keys(pointers).length >= 2) {
        var p = pair();
        zoomTo((gesture.scale * p.distance) / gesture.distance, p.x, p.y);
        // Two fingers moving together move the image too.
        viewport.scrollLeft -= p.x - gesture.x;
        viewport.scrollTop -= p.y - gesture.y;
        gesture.x = p.x;
        gesture.y = p.y;
        return;
      }
      var point = pointers[event.pointerId];
      if (Math.hypot(point.x - gesture.x0, point.y - gesture.y0) > TAP_SLOP) {
        gesture.moved = true;
      }
      if (gesture.kind === "pan") {
        viewport.scrollLeft -= point.x - gesture.x;
        viewport.scrollTop -= point.y - gesture.y;
      }
      gesture.x = point.x;
      gesture.y = point.y;
    });

    function end(event) {
      if (!pointers[event.pointerId]) {
        return;
      }
      var finished = gesture;
      delete pointers[event.pointerId];
      if (Object.keys(pointers).length) {
        // A finger of a pinch lifted: what is left goes on as a pan, without a swipe or a tap.
        start();
        if (gesture) {
          gesture.moved = true;
        }
        return;
      }
      gesture = null;
      if (!finished || finished.kind === "pinch" || event.type === "pointercancel") {
        return;
      }
      var dx = finished.x - finished.x0;
      var dy = finished.y - finished.y0;
      if (finished.kind === "swipe" && Math.abs(dx) >= SWIPE_MIN && Math.abs(dx) > Math.abs(dy)) {
        go(state.image + (dx < 0 ? 1 : -1)); // the finger moves left: the next image comes in
        lastTap = null;
        return;
      }
      if (finished.moved || Date.now() - finished.t0 > 500) {
        lastTap = null;
        return;
      }
      var now = Date.now();
      if (
        lastTap &&
        now - lastTap.t < DOUBLE_TAP_MS &&
        Math.hypot(finished.x - lastTap.x, finished.y - lastTap.y) < 3 * TAP_SLOP
      ) {
        lastTap = null;
        if (state.scale > 1.001) {
          zoomTo(1);
        } else {
          zoomTo(2, finished.x, finished.y);
        }
        return;
      }
      lastTap = { t: now, x: finished.x, y: finished.y };
    }

    viewport.addEventListener("pointerup", end);
    viewport.addEventListener("pointercancel", end);
    viewport.addEventListener("dragstart", function (event) {
      event.preventDefault();
    });

    if (img.complete) {
      layout();
    }
    show();
    thumbInSight();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
