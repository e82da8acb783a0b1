// Prefloop chat: streams the policy's answer into the page as it is written.
// htmx does the rest (sending turns, comparing, labelling); this file only reads the token stream.
(function () {
  "use strict";

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  function scrollToEnd() {
    var box = document.getElementById("messages");
    if (box) box.scrollTop = box.scrollHeight;
    window.scrollTo(0, document.body.scrollHeight);
  }

  async function stream(el) {
    var url = el.getAttribute("data-stream-url");
    var doneUrl = el.getAttribute("data-done-url");
    var messageEl = el.closest("[data-message-id]");
    el.removeAttribute("data-stream-url");
    el.classList.add("streaming");
    try {
      var response = await fetch(url, { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
      if (!response.ok || !response.body) {
        el.textContent = "The answer could not be streamed (" + response.status + ").";
      } else {
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        for (;;) {
          var part = await reader.read();
          if (part.done) break;
          el.textContent += decoder.decode(part.value, { stream: true });
          scrollToEnd();
        }
      }
    } catch (err) {
      el.textContent += " [connection lost]";
    }
    el.classList.remove("streaming");
    // the finished turn as the page renders it: Markdown, siblings, buttons (and data-done)
    if (doneUrl && messageEl && window.htmx) {
      await htmx.ajax("GET", doneUrl, { target: "#message-" + messageEl.getAttribute("data-message-id"), swap: "outerHTML" });
    } else if (messageEl) {
      messageEl.setAttribute("data-done", "1");
    }
  }

  function startStreams(root) {
    (root || document).querySelectorAll("[data-stream-url]").forEach(stream);
  }

  // Sibling answers are ranked by dragging them into order (best on top); each one's place select
  // follows its position, and stays there to set a tie or to rank from the keyboard.
  function renumber(list) {
    list.querySelectorAll(":scope > li select").forEach(function (select, i) {
      select.value = String(i + 1);
    });
  }

  function sortableRankings(root) {
    if (!window.Sortable) return;
    (root || document).querySelectorAll(".rank-list:not([data-sortable])").forEach(function (list) {
      list.setAttribute("data-sortable", "1");
      Sortable.create(list, { animation: 120, filter: "select", preventOnFilter: false, onEnd: function () { renumber(list); } });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    startStreams(document);
    sortableRankings(document);
    scrollToEnd();
    var composer = document.getElementById("composer");
    if (composer) {
      composer.querySelector("textarea").addEventListener("keydown", function (event) {
        if (event.key === "Enter" && !event.shiftKey) {
          event.preventDefault();
          if (window.htmx) htmx.trigger(composer, "submit");
          else composer.submit();
        }
      });
    }
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    startStreams(event.detail.elt);
    sortableRankings(event.detail.elt);
  });
  document.addEventListener("htmx:responseError", function (event) {
    var box = document.getElementById("chat-error");
    if (box) box.textContent = event.detail.xhr.responseText || "Request failed.";
  });
})();
