/* The research export's page: follow its preparation (as portal.js follows a citizen's zip). No library. */
(function () {
  "use strict";
  var box = document.getElementById("export");
  if (!box || box.dataset.status === "ready" || box.dataset.status === "failed") { return; }
  var bar = document.getElementById("export-progress");
  var percent = document.getElementById("export-percent");
  var state = document.getElementById("export-state");
  var ready = document.getElementById("export-ready");
  var link = document.getElementById("export-link");
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
})();
