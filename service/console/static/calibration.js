// Calibrated scores on a model's page: rows drawn against the held-out score histogram
// (scoring), and the drift of live traffic (GET .../drift).
import { api } from "./api.js";
import { $, cell, fillFacts, guarded, number } from "./dom.js";

const BINS = 30;

// Bin edges over the held-out scores' range (the stored quantiles' first and last).
export function edgesOver(quantiles, bins = BINS) {
  const lo = quantiles[0];
  const hi = quantiles[quantiles.length - 1];
  return Array.from({ length: bins + 1 }, (_, i) => lo + ((hi - lo) * i) / bins);
}

// The held-out CDF at x: linear between the stored quantiles (as the API ranks rows).
function heldoutCdf(quantiles, x) {
  const m = quantiles.length;
  if (x <= quantiles[0]) return 0;
  if (x >= quantiles[m - 1]) return 1;
  let lo = 0;
  let hi = m - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (quantiles[mid] <= x) lo = mid;
    else hi = mid;
  }
  const span = quantiles[hi] - quantiles[lo];
  return (lo + (span > 0 ? (x - quantiles[lo]) / span : 0)) / (m - 1);
}

export function heldoutFractions(quantiles, edges) {
  return edges.slice(1).map((e, i) => heldoutCdf(quantiles, e) - heldoutCdf(quantiles, edges[i]));
}

// Fraction of the values per bin; values outside the range count in the end bins.
export function fractions(values, edges) {
  const bins = edges.length - 1;
  const width = (edges[bins] - edges[0]) / bins;
  const counts = new Array(bins).fill(0);
  let n = 0;
  for (const v of values) {
    if (!Number.isFinite(v)) continue;
    counts[Math.min(bins - 1, Math.max(0, Math.floor((v - edges[0]) / width)))] += 1;
    n += 1;
  }
  return counts.map((c) => c / (n || 1));
}

// Held-out fractions as grey bars, the other rows' (``legend``) as a blue outline over them.
export function drawHistogram(canvas, edges, heldout, other, label, legend) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const top = Math.max(...heldout, ...other, 1e-9) * 1.25; // room for the legend
  const bar = width / heldout.length;
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#c9d1da";
  heldout.forEach((f, i) => ctx.fillRect(i * bar, height - (f / top) * height, bar - 1, (f / top) * height));
  ctx.strokeStyle = "#1f5fae";
  ctx.lineWidth = 2;
  ctx.beginPath();
  other.forEach((f, i) => {
    const y = height - (f / top) * height;
    if (i === 0) ctx.moveTo(0, y);
    else ctx.lineTo(i * bar, y);
    ctx.lineTo((i + 1) * bar, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#1d232b";
  ctx.font = "12px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.fillText(`grey: held-out rows · blue: ${legend}`, 6, 14);
  ctx.fillText(`log p ${number(edges[0], 3)}`, 6, height - 6);
  ctx.textAlign = "right";
  ctx.fillText(number(edges[edges.length - 1], 3), width - 6, height - 6);
  const range = `log p from ${number(edges[0])} to ${number(edges[edges.length - 1])}`;
  canvas.setAttribute("aria-label", `${label} (blue) against the held-out rows' (grey), ${range}`);
  canvas.dataset.drawn = String(heldout.length);
  canvas.hidden = false;
}

function driftStatus(d) {
  if (d.statistic === null) return `waiting: ${d.window.rows} rows scored so far`;
  return d.drifted ? `drifted (p-value under ${d.alpha})` : `no drift detected (p-value ${d.alpha} or more)`;
}

export function setUpDrift(model, base) {
  if (!model.training?.calibration) {
    $("#drift-facts").replaceChildren(
      cell("dd", "This version was published without held-out scores: retrain it to follow drift."),
    );
    return;
  }
  const refresh = () =>
    guarded($("#drift-error"), async () => {
      const d = await api(`${base}/drift`);
      const scope = d.window.scope === "shared" ? "shared by every replica" : "this server process";
      fillFacts($("#drift-facts"), [
        ["Status", driftStatus(d)],
        ["KS statistic", number(d.statistic)],
        ["p-value", number(d.p_value)],
        ["Mean shift of log p", number(d.mean_shift)],
        ["Window", `${d.window.rows} of ${d.window.capacity} rows, ${scope}`],
        ["Held-out rows", d.heldout_rows],
      ]);
      const h = d.histogram;
      const label = `Histogram of the last ${d.window.rows} scored rows' log-density`;
      if (h) drawHistogram($("#drift-hist"), h.edges, h.heldout, h.window, label, "recent rows");
    });
  const button = $("#drift-refresh");
  button.hidden = false;
  button.addEventListener("click", refresh);
  return refresh();
}
