// The console's file upload with a progress bar: the form works without this script
// (a plain multipart post); with it, the bytes sent are shown while the file streams.
(function () {
  function size(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || form.id !== "upload-form") return;
    ev.preventDefault();
    const bar = form.querySelector(".upload-progress");
    const status = form.querySelector(".upload-status");
    const button = form.querySelector("button[type=submit]");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      bar.max = e.total;
      bar.value = e.loaded;
      status.textContent = size(e.loaded) + " of " + size(e.total) + " sent";
    });
    xhr.upload.addEventListener("load", function () {
      status.textContent = "Sent; checking and storing…";
    });
    xhr.addEventListener("load", function () {
      let body = {};
      try { body = JSON.parse(xhr.responseText || "{}"); } catch (_) { /* not JSON */ }
      if (xhr.status === 201 && body.version) {
        location.assign("/topics/" + encodeURIComponent(body.topic) + "?notice=" +
          encodeURIComponent("Published v" + body.version) + "#v" + body.version);
        return;
      }
      status.classList.add("error");
      status.setAttribute("role", "alert");
      status.textContent = (body.error && body.error.message) || ("The upload failed (HTTP " + xhr.status + ")");
      button.disabled = false;
      bar.hidden = true;
    });
    xhr.addEventListener("error", function () {
      status.classList.add("error");
      status.textContent = "The connection broke off; nothing was published.";
      button.disabled = false;
      bar.hidden = true;
    });
    status.classList.remove("error");
    status.textContent = "Starting…";
    bar.hidden = false;
    button.disabled = true;
    xhr.send(new FormData(form));
  }, true);
})();
