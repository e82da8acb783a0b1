// The dashboard overview: labels per day, stacked by kind and by project (Chart.js, vendored).
document.addEventListener("DOMContentLoaded", function () {
  var source = document.getElementById("overview-data");
  if (!source || typeof Chart === "undefined") return;
  var data = JSON.parse(source.textContent);
  function stacked(canvasId, series) {
    var canvas = document.getElementById(canvasId);
    if (!canvas) return;
    new Chart(canvas, {
      type: "bar",
      data: { labels: data.days, datasets: series.map(function (s) { return { label: s.name, data: s.counts }; }) },
      options: {
        animation: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
      },
    });
  }
  stacked("overview-kind-chart", data.by_kind);
  stacked("overview-project-chart", data.by_project);
});
