/* The study page's image viewer (templates/archive/reporting/study.html).
 *
 * Scrolls through a series' JPEG previews (WADO-RS rendered frames) with the
 * mouse wheel, the arrow keys, Page Up/Down, Home/End and the slider; applies
 * the window presets (the data set's own, then the usual CT ones) as the
 * WADO-RS "window" parameter; zooms with the buttons and the + - 0 keys.
 *
 * Without this script the page still works: the thumbnails and the previous/
 * next links are plain links, and the preset buttons and the slider submit a
 * GET form that the server answers with the chosen image. The script only
 * takes those over, and keeps the address in step (history.replaceState) so
 * that a reload shows the same image.
 */
(function () {
  "use strict";

  var ZOOM_LEVELS = [0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8];
  var FIT = 2; // index of 1 in ZOOM_LEVELS: the image fills the viewport
  var WHEEL_STEP = 60; // pixels of wheel travel per image (a mouse notch is ~100, a touchpad sends many small ones)

  function format(text, values) {
    return text.replace(/%\((\w+)\)s/g, function (_m, key) {
      return String(values[key]);
    });
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
      zoom: FIT
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
    var preloaded = {};
    var wheelTravel = 0;

    Array.prototype.forEach.call(viewer.querySelectorAll("[data-nojs]"), function (element) {
      element.hidden = true;
    });
    zoomBox.hidden = false;

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

    function layout() {
      if (!img.naturalWidth || !viewport.clientWidth) {
        return;
      }
      var fit = Math.min(viewport.clientWidth / img.naturalWidth, viewport.clientHeight / img.naturalHeight);
      var width = Math.max(1, Math.round(img.naturalWidth * fit * ZOOM_LEVELS[state.zoom]));
      // Keep the point at the viewport's centre where it was.
      var cx = (viewport.scrollLeft + viewport.clientWidth / 2) / Math.max(1, viewport.scrollWidth);
      var cy = (viewport.scrollTop + viewport.clientHeight / 2) / Math.max(1, viewport.scrollHeight);
      viewport.classList.add("zoomed");
      img.style.width = width + "px";
      img.style.height = "auto";
      viewport.scrollLeft = cx * viewport.scrollWidth - viewport.clientWidth / 2;
      viewport.scrollTop = cy * viewport.scrollHeight - viewport.clientHeight / 2;
      zoomLevel.textContent = Math.round(ZOOM_LEVELS[state.zoom] * 100) + "%";
    }

    function renderPresets() {
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
      position.textContent = state.image + 1 + " / " + total;
      Array.prototype.forEach.call(presetsBox.querySelectorAll("button"), function (button) {
        button.setAttribute("aria-pressed", Number(button.value) === state.preset ? "true" : "false");
      });
      thumbs.forEach(function (link) {
        if (Number(link.getAttribute("data-series")) === state.series) {
          link.setAttribute("aria-current", "true");
        } else {
          link.removeAttribute("aria-current");
        }
      });
      seriesInput.value = String(series.id);
      presetInput.value = String(state.preset);
      if (window.history && window.history.replaceState) {
        var query = "?serie=" + series.id + "&immagine=" + (state.image + 1) + "&finestra=" + state.preset;
        window.history.replaceState(null, "", query + "#viewer");
      }
      preload(state.image + 1);
      preload(state.image - 1);
    }

    function go(index) {
      var last = current().images.length - 1;
      var next = Math.max(0, Math.min(last, index));
      if (next !== state.image) {
        state.image = next;
        show();
      }
    }

    function zoom(step) {
      var next = step === 0 ? FIT : Math.max(0, Math.min(ZOOM_LEVELS.length - 1, state.zoom + step));
      if (next !== state.zoom) {
        state.zoom = next;
        layout();
      }
    }

    img.addEventListener("load", function () {
      viewport.removeAttribute("aria-busy");
      layout();
    });
    img.addEventListener("error", function () {
      viewport.removeAttribute("aria-busy");
    });
    window.addEventListener("resize", layout);

    thumbs.forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        state.series = Number(link.getAttribute("data-series"));
        state.image = 0;
        state.preset = 0;
        renderPresets();
        show();
        viewport.focus();
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

    zoomBox.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-zoom]");
      if (!button) {
        return;
      }
      var what = button.getAttribute("data-zoom");
      zoom(what === "in" ? 1 : what === "out" ? -1 : 0);
    });

    viewer.addEventListener("keydown", function (event) {
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

    if (img.complete) {
      layout();
    }
    show();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
