/* The citizen portal: follow a package's preparation (the image viewer is viewer.js, the report report-viewer.js). No library. */
(function () {
  "use strict";
  var box = document.getElementById("package");
  if (box && box.dataset.status !== "ready" && box.dataset.status !== "failed") {
    var bar = document.getElementById("package-progress");
    var percent = document.getElementById("package-percent");
    var state = document.getElementById("package-state");
    var ready = document.getElementById("package-ready");
    var link = document.getElementById("package-link");
    var poll = function () {
      fetch(box.dataset.statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          bar.value = data.percent; percent.textContent = data.percent + "%";
          if (data.status === "ready" && data.download_url) {
            link.href = data.download_url; ready.hidden = false;
            state.textContent = state.dataset.ready;
            return;
          }
          if (data.status === "failed") { state.textContent = state.dataset.failed; return; }
          setTimeout(poll, 1500);
        })
        .catch(function () { setTimeout(poll, 5000); });
    };
    setTimeout(poll, 1000);
  }
})();
