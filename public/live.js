// Live console pages: one EventSource on /console/events for the topics the page shows;
// each change is passed on as a window event the page's code reloads its data on.
// Loaded before hydration (not deferred), so the page's code can call it at once.
(function () {
  let source = null;
  let current = "";
  function watch(topics) {
    if (topics === current) return;
    current = topics;
    if (source) { source.close(); source = null; }
    delete document.documentElement.dataset.live;
    if (!topics || typeof EventSource === "undefined") return;
    source = new EventSource("/console/events?topics=" + encodeURIComponent(topics));
    source.addEventListener("ready", function () { document.documentElement.dataset.live = "on"; });
    source.addEventListener("change", function (e) {
      window.dispatchEvent(new CustomEvent("imprint-change", { detail: e.data }));
    });
    source.onerror = function () { document.documentElement.dataset.live = "reconnecting"; };
  }
  window.imprintLive = { watch: watch };
})();
