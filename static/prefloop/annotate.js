// Prefloop annotation pages: keyboard shortcuts, drag-and-drop ranking, and the rewrite diff.
// htmx submits each judgment and swaps in the next task; this file only prepares the forms.
(function () {
  "use strict";

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
      (target.tagName === "INPUT" && target.type !== "radio" && target.type !== "checkbox"));
  }

  // A task swapped in a few milliseconds ago may not be wired by htmx yet; a quick key press
  // would then submit the form natively (a full page load). Wire it first: htmx.process is
  // idempotent, and a listener it adds now still receives the event being dispatched.
  function ready(form) {
    if (form && window.htmx) htmx.process(form);
    return form;
  }
  document.addEventListener("submit", function (event) {
    if (event.target.matches && event.target.matches("form[hx-post]")) ready(event.target);
  }, true);

  // --- keyboard ------------------------------------------------------------------------------
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey && event.key === "Enter") {
      var form = ready(document.querySelector("#task-area form.judge"));
      if (form) { syncRanking(); form.requestSubmit(); }
      return;
    }
    if (typing(event.target) || event.altKey || event.ctrlKey || event.metaKey) return;
    var task = document.querySelector("#task-area .task");
    if (!task) return;
    ready(task.querySelector("form.judge"));
    if (task.dataset.kind === "pairwise") {
      var button = task.querySelector('button[data-key="' + event.key + '"]');
      if (button) { event.preventDefault(); button.click(); }
    } else if (task.dataset.kind === "rating") {
      var radio = task.querySelector('input[name="rating"][data-key="' + event.key + '"]');
      if (radio) { event.preventDefault(); radio.checked = true; task.querySelector("form.judge").requestSubmit(); }
    }
  });

  // --- ranking -------------------------------------------------------------------------------
  function syncRanking() {
    var list = document.getElementById("ranking-list");
    var out = document.getElementById("ranking-value");
    if (!list || !out) return;
    var groups = [];
    list.querySelectorAll(".rank-item").forEach(function (item) {
      var unranked = item.querySelector(".leave-unranked");
      if (unranked && unranked.checked) return;
      var id = parseInt(item.dataset.id, 10);
      var tied = item.querySelector(".tie-above").checked;
      if (tied && groups.length) groups[groups.length - 1].push(id);
      else groups.push([id]);
    });
    out.value = JSON.stringify(groups);
  }

  function initRanking(root) {
    var list = (root || document).querySelector("#ranking-list");
    if (!list || list.dataset.ready) return;
    list.dataset.ready = "1";
    if (window.Sortable) {
      Sortable.create(list, { animation: 120, onEnd: syncRanking });
    }
    list.addEventListener("change", syncRanking);
    list.addEventListener("keydown", function (event) {
      var item = event.target.closest(".rank-item");
      if (!item || !event.altKey) return;
      if (event.key === "ArrowUp" && item.previousElementSibling) {
        list.insertBefore(item, item.previousElementSibling);
      } else if (event.key === "ArrowDown" && item.nextElementSibling) {
        list.insertBefore(item.nextElementSibling, item);
      } else {
        return;
      }
      event.preventDefault();
      item.focus();
      syncRanking();
    });
    syncRanking();
  }

  // --- critique: show the rewrite as a word diff against the original ------------------------
  function renderDiff() {
    var original = document.getElementById("original-text");
    var rewrite = document.getElementById("rewrite");
    var out = document.getElementById("rewrite-diff");
    if (!original || !rewrite || !out || !window.Diff) return;
    out.textContent = "";
    Diff.diffWords(original.textContent, rewrite.value).forEach(function (part) {
      var el = document.createElement(part.added ? "ins" : part.removed ? "del" : "span");
      el.textContent = part.value;
      out.appendChild(el);
    });
  }

  function init(root) {
    initRanking(root);
    var rewrite = document.getElementById("rewrite");
    if (rewrite && !rewrite.dataset.ready) {
      rewrite.dataset.ready = "1";
      rewrite.addEventListener("input", renderDiff);
      renderDiff();
    }
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:afterSettle", function (event) { init(event.detail.elt); });
  document.addEventListener("htmx:configRequest", function () { syncRanking(); });
  document.addEventListener("htmx:responseError", function (event) {
    var box = document.querySelector("#task-area .form-error");
    if (box) box.textContent = event.detail.xhr.responseText || "The judgment could not be saved.";
  });
})();
