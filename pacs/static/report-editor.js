// The report editor's templates and standard phrases (progressive enhancement).
// Without this script the template's button saves the draft with the template
// in the empty sections (the server does it), and the phrases are not offered.
// With it: the template fills the empty sections in the page, asking before it
// replaces text already written; a phrase goes in at the cursor of the section
// last focused. No inline script (the CSP): the data is the page's
// #editor-data JSON.
(function () {
  "use strict";
  var SECTIONS = ["clinical_question", "technique", "findings", "conclusion"];

  function init() {
    var dataNode = document.getElementById("editor-data");
    var form = document.getElementById("report-form");
    if (!dataNode || !form) return;
    var data = JSON.parse(dataNode.textContent);
    var status = document.getElementById("editor-status");
    var fields = {};
    SECTIONS.forEach(function (name) {
      fields[name] = form.elements.namedItem(name);
    });
    // The section the user was writing in: typed, clicked or moved the caret
    // there. Tabbing through a section on the way to the phrase list does not
    // count (the keyup of a Tab lands on the field it arrives at).
    var lastFocused = fields.findings;
    SECTIONS.forEach(function (name) {
      var field = fields[name];
      if (!field) return;
      function mark() {
        lastFocused = field;
      }
      field.addEventListener("input", mark);
      field.addEventListener("mouseup", mark);
      field.addEventListener("keyup", function (event) {
        if (event.key !== "Tab" && event.key !== "Shift") mark();
      });
    });

    function say(text) {
      if (status) status.textContent = text;
    }

    function labelOf(field) {
      var label = field.labels && field.labels[0];
      return label ? label.textContent.trim().replace(/\s*:$/, "") : field.name;
    }

    var templateButton = document.getElementById("template-insert");
    var templateChoice = document.getElementById("template-choice");
    if (templateButton && templateChoice) {
      templateButton.addEventListener("click", function (event) {
        event.preventDefault();
        var chosen = null;
        data.templates.forEach(function (t) {
          if (String(t.id) === templateChoice.value) chosen = t;
        });
        if (!chosen) return;
        var empty = [];
        var written = [];
        SECTIONS.forEach(function (name) {
          var field = fields[name];
          var text = chosen.sections[name] || "";
          if (!field || !text.trim()) return;
          (field.value.trim() ? written : empty).push(field);
        });
        var targets = empty;
        if (written.length) {
          var names = written.map(labelOf).join("», «");
          if (window.confirm(data.texts.replace.replace("%(sections)s", names))) {
            targets = empty.concat(written);
          }
        }
        targets.forEach(function (field) {
          field.value = chosen.sections[field.name];
          field.dispatchEvent(new Event("input", { bubbles: true }));
        });
        if (targets.length) {
          say(data.texts.inserted.replace("%(name)s", chosen.name));
          targets[0].focus();
        } else {
          say(data.texts.nothing);
        }
      });
    }

    var phraseTool = document.getElementById("phrase-tool");
    var phraseButton = document.getElementById("phrase-insert");
    var phraseChoice = document.getElementById("phrase-choice");
    if (phraseTool) phraseTool.hidden = false;
    if (phraseButton && phraseChoice) {
      phraseButton.addEventListener("click", function () {
        var text = data.phrases[phraseChoice.value];
        var field = lastFocused;
        if (!text || !field) return;
        var start = field.selectionStart;
        var end = field.selectionEnd;
        if (typeof start !== "number") {
          start = end = field.value.length;
        }
        var before = field.value.slice(0, start);
        var after = field.value.slice(end);
        // A space between words, none at a line's start.
        var glue = before && !/\s$/.test(before) ? " " : "";
        field.value = before + glue + text + after;
        var caret = before.length + glue.length + text.length;
        field.focus();
        field.setSelectionRange(caret, caret);
        field.dispatchEvent(new Event("input", { bubbles: true }));
        say(data.texts.phrase.replace("%(section)s", labelOf(field)));
      });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
