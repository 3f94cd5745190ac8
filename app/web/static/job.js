// The job page follows its job: polls /jobs/<id>/status every second and updates the status, the
// progress bar and the message; once the job has finished, the page is reloaded to show its result.
// Without JavaScript the page's <noscript> meta refresh does the same, more coarsely.
(function () {
  "use strict";
  var box = document.getElementById("job");
  if (!box || box.dataset.active !== "true") { return; }
  var id = box.dataset.job;
  var FINAL = ["succeeded", "failed", "canceled"];

  function show(job) {
    var status = document.getElementById("job-status");
    status.textContent = job.status;  // textContent, never innerHTML: messages are user-influenced
    status.className = "status-" + job.status;
    var progress = Number(job.progress) || 0;
    document.getElementById("job-progress").value = progress;
    document.getElementById("job-progress-text").textContent = Math.round(progress * 100) + " %";
    document.getElementById("job-message").textContent = job.message || "—";
  }

  function poll() {
    fetch("/jobs/" + encodeURIComponent(id) + "/status", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
      .then(function (job) {
        show(job);
        if (FINAL.indexOf(job.status) >= 0) { window.location.reload(); } else { window.setTimeout(poll, 1000); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });  // a restart or a network blip: slower retries
  }
  window.setTimeout(poll, 500);
}());
