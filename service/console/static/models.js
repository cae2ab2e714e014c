// The models list and one model's page (summary, metrics, plots, version picker).
import { api } from "./api.js";
import { setUpDrift } from "./calibration.js";
import { $, cell, enc, fillFacts, fillTable, guarded, link, number, reportText, when } from "./dom.js";
import { setUpSampling } from "./sampling.js";
import { setUpScoring } from "./scoring.js";
import { setUpTransport } from "./transport.js";

export async function modelsPage() {
  await guarded($("#models-error"), async () => {
    const { models } = await api("/v1/models");
    const rows = models.map((m) => [
      link(`/ui/models/${enc(m.name)}`, m.name),
      String(m.version),
      String(m.dim),
      number(m.metrics?.test_nll),
      when(m.created_at),
    ]);
    fillTable($("#models"), null, rows, "No models yet: start a training job on the Jobs page.");
  });
}

// ------------------------------------------------------------------ one model

export async function modelPage() {
  const { name, version } = document.body.dataset;
  const path = `/v1/models/${enc(name)}` + (version ? `/versions/${enc(version)}` : "");
  const model = await guarded($("#model-error"), () => api(path));
  if (!model) return;
  const base = `/v1/models/${enc(model.name)}/versions/${model.version}`;
  $("#model-title").textContent = `${model.name} · version ${model.version}`;
  document.title = `${model.name} v${model.version} · cpflow console`;
  showVersionPicker(model);
  const config = model.flow_config || {};
  const potential = config.potential || {};
  const columns = model.input_shape ? null : (model.columns || []).join(", ");
  const report = model.training?.data_report;
  fillFacts($("#model-summary"), [
    ["Dimension", model.input_shape ? `${model.dim} (image ${model.input_shape.join("×")})` : model.dim],
    ["Columns", columns],
    ["Data checks", report ? reportText(report) : null],
    ["Context dimension", model.context_dim],
    ["Created", when(model.created_at)],
    ["Library version", model.library_version],
    ["Potential", potential.kind],
    ["Blocks", config.blocks],
    ["Hidden units", potential.hidden],
    ["Depth", potential.depth],
    ["Standardization", config.standardization],
    ["Data type", config.dtype],
    ["Latest version", model.latest_version],
    ["Loaded in memory", model.loaded ? "yes" : "no"],
  ]);
  fillFacts($("#model-metrics"), metricFacts(model.metrics || {}));
  showPlaceholders(model);
  setUpScoring(model, base);
  setUpDrift(model, base);
  setUpSampling(model, base);
  setUpTransport(model, base);
  await showPlots(model);
}

// ------------------------------------------------------------------ metrics, named

const SPLITS = { train: "Train", val: "Validation", test: "Test" };
const METHODS = { exact: "exact log-det (Cholesky)", slq: "SLQ estimate of the log-det" };
const LOSSES = {
  exact: "the exact NLL",
  surrogate: "the surrogate loss (Algorithm 2; its gradient is the NLL's)",
};
const NAMED = {
  method: ["NLLs computed with", (v) => METHODS[v] || v],
  train_loss: ["Trained on", (v) => LOSSES[v] || v],
  best_iteration: ["Kept iteration (best validation NLL)", (v) => String(v)],
  world_size: ["Training processes", (v) => String(v)],
  global_batch_size: ["Batch size (all processes)", (v) => `${v} rows`],
};

// [name, value with unit] per metric: NLLs in nats per row with their standard error, bits
// per dimension, named settings; unknown ones under their own key.
export function metricFacts(metrics) {
  const facts = [];
  Object.entries(metrics).forEach(([key, value]) => {
    const nll = /^(train|val|test)_nll$/.exec(key);
    const bits = /^(train|val|test)_bits_per_dim$/.exec(key);
    if (/_stderr$/.test(key) || value === null || value === undefined) return;
    if (nll) {
      const err = metrics[`${key}_stderr`];
      const pm = typeof err === "number" ? ` ± ${number(err, 2)}` : "";
      facts.push([`${SPLITS[nll[1]]} NLL`, `${number(value, 6)}${pm} nats per row`]);
    } else if (bits) {
      facts.push([`${SPLITS[bits[1]]} bits per dimension`, `${number(value, 5)} bits`]);
    } else if (NAMED[key]) {
      facts.push([NAMED[key][0], NAMED[key][1](value)]);
    } else {
      facts.push([key.replaceAll("_", " "), typeof value === "number" ? number(value, 6) : JSON.stringify(value)]);
    }
  });
  return facts;
}

// Example rows in the model's own columns (a header of its names, then one row of zeros),
// not a 2-column placeholder for every model; a conditional model's context comes last.
function showPlaceholders(model) {
  if (model.input_shape) return;
  const names = [...(model.columns || [])];
  for (let j = 0; j < (model.context_dim || 0); j++) names.push(`c${j + 1}`);
  const example = `${names.join(",")}\n${names.map(() => "0.0").join(",")}`;
  $("#score-rows").placeholder = example;
  $("#transport-rows").placeholder = example;
}

function showVersionPicker(model) {
  const picker = $("#version-picker");
  picker.replaceChildren(
    ...[...model.versions].reverse().map((v) => {
      const option = cell("option", v === model.latest_version ? `${v} (latest)` : String(v));
      option.value = String(v);
      option.selected = v === model.version;
      return option;
    }),
  );
  // A plain GET form (?version=N): choosing with the arrow keys does not navigate by itself.
  picker.disabled = false;
  $("#version-form button").disabled = false;
}

// Plots sit behind the API's auth, so they are fetched with the key and shown as blobs.
async function showPlots(model) {
  const holder = $("#model-plots");
  // The diagnostics first, in PLOT_CAPTIONS' order, then the model's other figures.
  const rank = (file) => (file in PLOT_CAPTIONS ? Object.keys(PLOT_CAPTIONS).indexOf(file) : 99);
  const entries = Object.entries(model.plots || {}).sort(([a], [b]) => rank(a) - rank(b));
  if (!entries.length) {
    holder.replaceChildren(cell("p", "No plots stored with this version."));
    return;
  }
  // Fetched together.
  const figures = await Promise.all(entries.map(([file, url]) => plotFigure(model, file, url)));
  holder.replaceChildren(...figures);
}

async function plotFigure(model, file, url) {
  const figure = document.createElement("figure");
  try {
    const blob = await (await api(url, { raw: true })).blob();
    const img = document.createElement("img");
    img.src = URL.createObjectURL(blob);
    const what = file.replace(/\.png$/i, "").replaceAll("_", " ");
    img.alt = `${what} plot of ${model.name} version ${model.version}`;
    img.dataset.plot = file;
    figure.append(img);
  } catch (error) {
    figure.append(cell("p", `could not load ${file}: ${error.message}`));
  }
  figure.append(cell("figcaption", PLOT_CAPTIONS[file] ? `${PLOT_CAPTIONS[file]} (${file})` : file));
  return figure;
}

const PLOT_CAPTIONS = {
  "training_curve.png": "Train and validation NLL per iteration; the star marks the kept iteration",
  "corner.png": "Samples against held-out rows, column by column and in pairs",
  "calibration.png":
    "Calibration: |f(x)|² of held-out rows against chi-square quantiles (on the line: calibrated)",
  "score_histogram.png": "Log-density of held-out rows",
};
