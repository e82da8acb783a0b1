// Prefloop run page: draws the logged training curves and redraws them when htmx refreshes the run.
(function () {
  "use strict";
  var chart = null;
  var colours = ["#3b5bdb", "#2b8a3e", "#e8590c", "#862e9c"];

  function draw() {
    var canvas = document.getElementById("run-chart");
    var source = document.getElementById("run-chart-data");
    if (!canvas || !source || !window.Chart) return;
    var data = JSON.parse(source.textContent);
    var datasets = Object.keys(data.series).map(function (key, i) {
      return { label: key, data: data.series[key], borderColor: colours[i % colours.length], pointRadius: 0, tension: 0.2 };
    });
    if (chart) {
      chart.data.labels = data.steps;
      chart.data.datasets = datasets;
      chart.update("none");
      return;
    }
    chart = new Chart(canvas, {
      type: "line",
      data: { labels: data.steps, datasets: datasets },
      options: { animation: false, scales: { x: { title: { display: true, text: "step" } } } },
    });
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
