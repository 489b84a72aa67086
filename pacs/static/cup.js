/* The CUP desk's pages, progressive enhancement only: every rule is checked again by the server.
   - The patient form: birth date, sex and place of birth filled in from the codice fiscale
     (decoded by the server, which knows the places), when the fields are empty or were filled so.
   - The delivery choice: the online consent box can be ticked only with online delivery. */
(function () {
  "use strict";

  function csrfToken(form) {
    var input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  var patientForm = document.querySelector("form[data-cf-decode]");
  if (patientForm) {
    var code = patientForm.elements.namedItem("codice_fiscale");
    var status = document.getElementById("cf-status");
    var targets = ["birth_date", "sex", "birth_place"].map(function (name) {
      return patientForm.elements.namedItem(name);
    }).filter(Boolean);
    var asked = "";
    targets.forEach(function (field) {
      // What the operator types is theirs: the code no longer overwrites it.
      field.addEventListener("input", function () { delete field.dataset.fromCf; });
    });
    var fill = function (data) {
      targets.forEach(function (field) {
        var value = data[field.name];
        if (value && (!field.value || field.dataset.fromCf === "1")) {
          field.value = value;
          field.dataset.fromCf = "1";
        }
      });
    };
    var decode = function () {
      var value = (code.value || "").replace(/\s+/g, "").toUpperCase();
      if (value.length !== 16) {
        if (value.length === 0 && status) { status.textContent = ""; }
        asked = "";
        return;
      }
      if (value === asked) { return; }
      asked = value;
      var body = new FormData();
      body.append("codice_fiscale", value);
      fetch(patientForm.dataset.cfDecode, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(patientForm), Accept: "application/json" }
      })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          if (value !== asked) { return; } // the code changed meanwhile
          if (data.valid) { fill(data); }
          if (status) { status.textContent = data.valid ? data.summary : data.error; }
        })
        .catch(function () { asked = ""; });
    };
    code.addEventListener("input", decode);
    code.addEventListener("change", decode);
    decode();
  }

  Array.prototype.forEach.call(document.querySelectorAll("input[data-online-only]"), function (box) {
    var form = box.form;
    if (!form) { return; }
    var radios = form.querySelectorAll("input[name=delivery]");
    var update = function () {
      var online = form.querySelector("input[name=delivery][value=online]");
      var on = Boolean(online && online.checked);
      box.disabled = !on;
      if (!on) { box.checked = false; }
    };
    Array.prototype.forEach.call(radios, function (radio) { radio.addEventListener("change", update); });
    update();
  });
})();
