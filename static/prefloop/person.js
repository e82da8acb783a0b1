// A person's page: labels per day, and gold accuracy week by week (Chart.js, vendored).
document.addEventListener("DOMContentLoaded", function () {
  var source = document.getElementById("person-chart-data");
  if (!source || typeof Chart === "undefined") return;
  var data = JSON.parse(source.textContent);
  new Chart(document.getElementById("person-chart"), {
    type: "bar",
    data: { labels: data.days, datasets: [{ label: "labels", data: data.labels }] },
    options: { animation: false, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } },
  });
  var gold = document.getElementById("person-gold-chart");
  if (gold) {
    new Chart(gold, {
      type: "line",
      data: { labels: data.weeks, datasets: [{ label: "gold accuracy", data: data.gold }] },
      options: { animation: false, scales: { y: { min: 0, max: 1 } } },
    });
  }
});
