/* The CUP's CD page: the progress of the discs being prepared, followed without reloading;
   once one is ready (or failed) the page reloads to offer its actions. Progressive
   enhancement only: without it the page's own link reloads it. No library. */
(function () {
  "use strict";
  var table = document.querySelector("table[data-cd-status-url]");
  if (!table) { return; }
  var preparing = table.querySelectorAll("tr[data-cd-status=preparing]");
  if (!preparing.length) { return; }
  var poll = function () {
    fetch(table.dataset.cdStatusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var changed = false;
        data.media.forEach(function (m) {
          var row = table.querySelector("tr[data-cd-id='" + m.id + "']");
          if (!row) { return; }
          if (m.status !== row.dataset.cdStatus) { changed = true; return; }
          var bar = row.querySelector("progress");
          var label = row.querySelector("[data-cd-percent]");
          if (bar) { bar.value = m.percent; }
          if (label) { label.textContent = label.dataset.cdPercent.replace("__P__", m.percent); }
        });
        if (changed) { window.location.reload(); return; }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  };
  setTimeout(poll, 1000);
})();
