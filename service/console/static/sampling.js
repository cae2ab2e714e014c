// The sampling form, with a scatter (over the density for 2-D models; two chosen columns of
// wider ones) on labelled axes, or image tiles.
import { api } from "./api.js";
import { frame, robustRange } from "./chart.js";
import { $, cell, fillTable, guarded, handle, number } from "./dom.js";

export function setUpSampling(model, base) {
  const columnName = (j) => (model.columns && model.columns[j]) || `x${j + 1}`;
  const conditional = model.context_dim !== null && model.context_dim !== undefined;
  const image = Array.isArray(model.input_shape);
  const wide = !image && model.dim > 2;
  $("#sample-context-field").hidden = !conditional;
  $("#sample-axes").hidden = !wide;
  if (wide) {
    [$("#sample-x"), $("#sample-y")].forEach((select, which) => {
      select.replaceChildren(
        ...Array.from({ length: model.dim }, (_, j) => {
          const option = cell("option", columnName(j));
          option.value = String(j);
          option.selected = j === which;
          return option;
        }),
      );
    });
  }
  let last = null; // the samples drawn, redrawn when other columns are chosen
  let downloadUrl = null;
  const draw = async () => {
    const canvas = $("#sample-plot");
    canvas.hidden = !image && model.dim < 2;
    if (image) drawImages(canvas, last.samples, model.input_shape);
    else if (model.dim === 2) {
      await drawScatter(canvas, last.samples, [0, 1], columnName, { base, context: last.context });
    } else if (wide) {
      const pair = [Number($("#sample-x").value), Number($("#sample-y").value)];
      await drawScatter(canvas, last.samples, pair, columnName);
    }
  };
  const redraw = () => last && guarded($("#sample-error"), draw);
  $("#sample-x").addEventListener("change", redraw);
  $("#sample-y").addEventListener("change", redraw);
  handle($("#sample-form"), async () => {
    await guarded(
      $("#sample-error"),
      async () => {
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
        const table = $("#sample-table");
        table.hidden = image; // image samples are drawn, not listed
        if (!image) {
          const header = result.columns || (samples.length ? samples[0].map((_, j) => columnName(j)) : []);
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
        last = { samples, context };
        await draw();
      },
      $("#sample-result"),
    );
  });
}

// Samples' columns [i, j] as a scatter on labelled axes over their robust range; for a 2-D
// model over its density exp(log p) on a grid (one exact log_prob request).
async function drawScatter(canvas, samples, [i, j], columnName, density = null) {
  const xs = samples.map((s) => s[i]);
  const ys = samples.map((s) => s[j]);
  const [x0, x1] = robustRange(xs);
  const [y0, y1] = robustRange(ys);
  const chart = frame(canvas, [x0, x1], [y0, y1], {
    xLabel: columnName(i),
    yLabel: columnName(j),
    title: density ? "samples over the model density" : `samples: ${columnName(j)} against ${columnName(i)}`,
  });
  chart.clear();
  const ctx = chart.ctx;
  if (density) await drawDensity(chart, density, [x0, x1], [y0, y1]);
  else chart.grid();
  ctx.fillStyle = density ? "rgba(255, 255, 255, 0.8)" : "rgba(31, 95, 174, 0.6)";
  let outside = 0;
  samples.forEach((s) => {
    const px = chart.x(s[i]);
    const py = chart.y(s[j]);
    if (chart.inside(px, py)) ctx.fillRect(px - 1.5, py - 1.5, 3, 3);
    else outside += 1;
  });
  chart.axes();
  const over = density ? " over the model density" : "";
  const beyond = outside ? `; ${outside} outside the view` : "";
  canvas.setAttribute(
    "aria-label",
    `Scatter of ${samples.length} samples${over}, ` +
      `${columnName(i)} from ${number(x0, 3)} to ${number(x1, 3)}, ` +
      `${columnName(j)} from ${number(y0, 3)} to ${number(y1, 3)}${beyond}`,
  );
  canvas.dataset.drawn = String(samples.length);
}

async function drawDensity(chart, { base, context }, [x0, x1], [y0, y1]) {
  const n = 60;
  const grid = [];
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      grid.push([x0 + ((c + 0.5) / n) * (x1 - x0), y1 - ((r + 0.5) / n) * (y1 - y0)]);
    }
  }
  const body = { inputs: grid, method: "exact" };
  if (context) body.context = context;
  const { log_prob: logp } = await api(`${base}/log_prob`, { method: "POST", json: body });
  const top = Math.max(...logp.filter((v) => v !== null));
  const { left, top: y, width, height } = chart.box;
  const cw = width / n;
  const ch = height / n;
  logp.forEach((v, k) => {
    const t = v === null ? 0 : Math.exp(v - top);
    const [r, g, b] = [20 + 235 * t, 30 + 190 * t, 90 + 20 * t].map(Math.round); // navy -> gold
    chart.ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    chart.ctx.fillRect(left + (k % n) * cw, y + Math.floor(k / n) * ch, cw + 0.5, ch + 0.5);
  });
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
