/* Follow a long preparation on its page: the citizen's package (portal/package.html) and the
   research export (research/export.html). The box is the element with data-progress; its
   parts are named by its id: <id>-progress, -percent, -state (data-ready, data-failed),
   -ready and -link. The status URL answers {status, percent, download_url}. No library. */
(function () {
  "use strict";
  var box = document.querySelector("[data-progress]");
  if (!box || box.dataset.status === "ready" || box.dataset.status === "failed") { return; }
  var part = function (name) { return document.getElementById(box.id + "-" + name); };
  var bar = part("progress");
  var percent = part("percent");
  var state = part("state");
  var ready = part("ready");
  var link = part("link");
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
