// The sampling form, with a scatter over the density (2-D models) or image tiles.
import { api } from "./api.js";
import { $, fillTable, guarded, handle, number } from "./dom.js";

export function setUpSampling(model, base) {
  const conditional = model.context_dim !== null && model.context_dim !== undefined;
  $("#sample-context-field").hidden = !conditional;
  let downloadUrl = null;
  handle($("#sample-form"), async () => {
    await guarded($("#sample-error"), async () => {
      const body = { num_samples: Number($("#sample-n").value) };
      if ($("#sample-seed").value !== "") body.seed = Number($("#sample-seed").value);
      if ($("#sample-tolerance").value !== "") body.tolerance = Number($("#sample-tolerance").value);
      let context = null;
      if (conditional) {
        context = [$("#sample-context").value.split(",").map(Number)];
        body.context = context;
      }
      const result = await api(`${base}/sample`, { method: "POST", json: body });
      const samples = result.samples;
      const converged = result.converged ? "all converged" : "NOT all converged";
      $("#sample-summary").textContent =
        `${samples.length} samples; largest inversion residual ` +
        `${number(result.max_residual, 3)} (${converged}); seed ${result.seed}.`;
      const image = Array.isArray(model.input_shape);
      const table = $("#sample-table");
      table.hidden = image; // image samples are drawn, not listed
      if (!image) {
        const header = result.columns || (samples.length ? samples[0].map((_, j) => `x${j + 1}`) : []);
        fillTable(table, header, samples.slice(0, 20).map((r) => r.map((v) => number(v, 6))), "no samples");
      }
      // The same draw (same seed) as a CSV file from sample.csv, every digit, named columns.
      const csv = await api(`${base}/sample.csv`, {
        method: "POST",
        json: { ...body, seed: result.seed },
        raw: true,
      });
      if (downloadUrl) URL.revokeObjectURL(downloadUrl);
      downloadUrl = URL.createObjectURL(await csv.blob());
      const download = $("#sample-download");
      download.href = downloadUrl;
      download.download = `${model.name}-v${model.version}-samples.csv`;
      $("#sample-result").hidden = false;
      const canvas = $("#sample-plot");
      canvas.hidden = !image && model.dim !== 2;
      if (image) drawImages(canvas, samples, model.input_shape);
      else if (model.dim === 2) await drawScatter(canvas, base, samples, context, result.columns);
    });
  });
}

// The model's density exp(log p) on a grid (one exact log_prob request) as a heat map, with
// the samples drawn over it.
async function drawScatter(canvas, base, samples, context, names) {
  const [xName, yName] = names || ["x", "y"];
  const xs = samples.map((s) => s[0]);
  const ys = samples.map((s) => s[1]);
  const pad = (lo, hi) => [lo - 0.1 * (hi - lo || 1), hi + 0.1 * (hi - lo || 1)];
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
  const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const n = 60;
  const grid = [];
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      grid.push([x0 + ((j + 0.5) / n) * (x1 - x0), y1 - ((i + 0.5) / n) * (y1 - y0)]);
    }
  }
  const body = { inputs: grid, method: "exact" };
  if (context) body.context = context;
  const { log_prob: logp } = await api(`${base}/log_prob`, { method: "POST", json: body });
  const top = Math.max(...logp.filter((v) => v !== null));
  const ctx = canvas.getContext("2d");
  const cw = canvas.width / n;
  const ch = canvas.height / n;
  logp.forEach((v, k) => {
    const t = v === null ? 0 : Math.exp(v - top);
    const [r, g, b] = [20 + 235 * t, 30 + 190 * t, 90 + 20 * t].map(Math.round); // navy -> gold
    ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect((k % n) * cw, Math.floor(k / n) * ch, cw + 1, ch + 1);
  });
  ctx.fillStyle = "rgba(255, 255, 255, 0.8)";
  samples.forEach(([x, y]) => {
    const px = ((x - x0) / (x1 - x0)) * canvas.width;
    const py = ((y1 - y) / (y1 - y0)) * canvas.height;
    ctx.fillRect(px - 1.5, py - 1.5, 3, 3);
  });
  canvas.setAttribute(
    "aria-label",
    `Scatter of ${samples.length} samples over the model density, ` +
      `${xName} from ${number(x0, 3)} to ${number(x1, 3)}, ` +
      `${yName} from ${number(y0, 3)} to ${number(y1, 3)}`,
  );
  canvas.dataset.drawn = String(samples.length);
}

// Up to 16 image samples ([C, H, W] each) as tiles, grey (1 channel) or colour (3), scaled
// together from the smallest to the largest value shown.
function drawImages(canvas, samples, [c, h, w]) {
  const shown = samples.slice(0, 16);
  const values = shown.flat(3);
  const lo = Math.min(...values);
  const span = Math.max(...values) - lo || 1;
  const cols = Math.ceil(Math.sqrt(shown.length));
  const cell = Math.floor(canvas.width / cols);
  const px = Math.max(1, Math.floor((cell - 4) / Math.max(h, w)));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const level = (v) => Math.round((255 * (v - lo)) / span);
  shown.forEach((img, k) => {
    const x0 = (k % cols) * cell + 2;
    const y0 = Math.floor(k / cols) * cell + 2;
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        const channels = c === 3 ? [0, 1, 2] : [0, 0, 0];
        const [r, g, b] = channels.map((ch) => level(img[ch][i][j]));
        ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
        ctx.fillRect(x0 + j * px, y0 + i * px, px, px);
      }
    }
  });
  const range = `scaled from ${number(lo, 3)} to ${number(lo + span, 3)}`;
  canvas.setAttribute("aria-label", `${shown.length} image samples (${c}×${h}×${w}), ${range}`);
  canvas.dataset.drawn = String(shown.length);
}
