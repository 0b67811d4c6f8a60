// The dashboard's only script: the auto-refresh toggle and "check every row".
// Loaded from the app's own origin (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";
  var KEY = "jobrunner-auto-refresh";
  var timer = null;

  function busy() {
    // Never reload under the operator's hands: a checked row or a field being edited.
    var active = document.activeElement;
    if (active && (active.tagName === "INPUT" || active.tagName === "TEXTAREA") &&
        active.type !== "checkbox") {
      return true;
    }
    return document.querySelector("#bulk input[name=id]:checked") !== null;
  }

  function schedule(seconds) {
    clearTimeout(timer);
    timer = setTimeout(function () {
      if (busy()) { schedule(seconds); } else { window.location.reload(); }
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var seconds = parseInt(document.body.getAttribute("data-refresh"), 10) || 5;
    var toggle = document.getElementById("auto-refresh");
    if (toggle) {
      var on = false;
      try { on = window.localStorage.getItem(KEY) === "on"; } catch (e) { on = false; }
      toggle.checked = on;
      if (on) { schedule(seconds); }
      toggle.addEventListener("change", function () {
        try { window.localStorage.setItem(KEY, toggle.checked ? "on" : "off"); } catch (e) {}
        if (toggle.checked) { schedule(seconds); } else { clearTimeout(timer); }
      });
    }
    var all = document.getElementById("check-all");
    if (all) {
      all.addEventListener("change", function () {
        var boxes = document.querySelectorAll("#bulk input[name=id]");
        for (var i = 0; i < boxes.length; i++) { boxes[i].checked = all.checked; }
      });
    }
  });
})();
