// cpflow web console: fills the server-rendered pages from the /v1 API.
// The API key is entered once, kept in this tab's sessionStorage and sent as
// "Authorization: Bearer <key>"; it never goes into a URL or a cookie.
"use strict";

const KEY_STORAGE = "cpflow-api-key";
const $ = (selector, root = document) => root.querySelector(selector);
const enc = encodeURIComponent;

// ------------------------------------------------------------------ API access

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// fetch a /v1 path with the key; JSON out unless raw; ApiError (the envelope) on 4xx/5xx.
async function api(path, { method = "GET", json, body, type, raw = false } = {}) {
  const headers = {};
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (type) {
    headers["Content-Type"] = type;
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) throw await apiError(response);
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

async function apiError(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "request failed";
  try {
    const error = (await response.json()).error;
    code = error.code;
    message = error.message;
  } catch {
    // not the envelope (a proxy's page): keep the status text
  }
  if (response.status === 401) {
    showAlert($("#auth-alert"), `The API refused the key: ${message}. Enter a valid key above.`);
    $("#api-key").setAttribute("aria-invalid", "true");
  }
  return new ApiError(response.status, code, message);
}

function showAlert(element, text) {
  element.textContent = text;
  element.hidden = false;
}

// Submit buttons start disabled (no submission, not even by Enter, before the script handles
// it: a native GET would put the fields in the URL); this enables them once it does.
function handle(form, onSubmit) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onSubmit(event);
  });
  form.querySelectorAll("button[type=submit]").forEach((b) => (b.disabled = false));
}

function clearAlert(element) {
  element.textContent = "";
  element.hidden = true;
}

// Run an async handler, showing any failure in the given alert element.
async function guarded(alertElement, work) {
  clearAlert(alertElement);
  try {
    return await work();
  } catch (error) {
    const where = error instanceof ApiError ? ` (${error.code}, HTTP ${error.status})` : "";
    showAlert(alertElement, `${error.message}${where}`);
    return undefined;
  }
}

// ------------------------------------------------------------------ small DOM helpers

function cell(tag, content) {
  const element = document.createElement(tag);
  if (content instanceof Node) element.append(content);
  else element.textContent = content ?? "";
  return element;
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

function fillTable(table, header, rows, empty) {
  const thead = $("thead", table);
  if (header) {
    const tr = document.createElement("tr");
    header.forEach((name) => {
      const th = cell("th", name);
      th.scope = "col";
      tr.append(th);
    });
    thead.replaceChildren(tr);
  }
  const tbody = $("tbody", table);
  tbody.replaceChildren();
  if (!rows.length) {
    const td = cell("td", empty);
    td.colSpan = $("tr", thead)?.children.length || 1;
    tbody.append(cell("tr", td));
    return;
  }
  rows.forEach((row) => {
    const tr = document.createElement("tr");
    row.forEach((value) => tr.append(cell("td", value)));
    tbody.append(tr);
  });
}

function fillFacts(dl, facts) {
  dl.replaceChildren();
  facts.forEach(([term, value]) => {
    if (value === undefined || value === null || value === "") return;
    dl.append(cell("dt", term), cell("dd", String(value)));
  });
  if (!dl.children.length) dl.append(cell("dd", "none recorded"));
}

function number(value, digits = 4) {
  return typeof value === "number" ? Number(value.toPrecision(digits)).toString() : "";
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "";
}

function duration(seconds) {
  if (typeof seconds !== "number") return "";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

// ------------------------------------------------------------------ API key form

function setUpKeyForm() {
  const form = $("#key-form");
  const state = $("#key-state");
  state.textContent = apiKey() ? "key set for this tab" : "no key set";
  handle(form, () => {
    const key = $("#api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    window.location.reload();
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    window.location.reload();
  });
}

// ------------------------------------------------------------------ models list

async function modelsPage() {
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

async function modelPage() {
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
  fillFacts($("#model-summary"), [
    ["Dimension", model.input_shape ? `${model.dim} (image ${model.input_shape.join("×")})` : model.dim],
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
  const metrics = Object.entries(model.metrics || {}).map(([k, v]) => [
    k,
    typeof v === "number" ? number(v, 6) : JSON.stringify(v),
  ]);
  fillFacts($("#model-metrics"), metrics);
  setUpScoring(model, base);
  setUpSampling(model, base);
  await showPlots(model);
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
  const entries = Object.entries(model.plots || {});
  if (!entries.length) {
    holder.replaceChildren(cell("p", "No plots stored with this version."));
    return;
  }
  // Fetched together, shown in the manifest's order.
  const figures = await Promise.all(entries.map(([file, url]) => plotFigure(model, file, url)));
  holder.replaceChildren(...figures);
}

async function plotFigure(model, file, url) {
  const figure = document.createElement("figure");
  try {
    const blob = await (await api(url, { raw: true })).blob();
    const img = document.createElement("img");
    img.src = URL.createObjectURL(blob);
    img.alt = `${file.replace(/\.png$/i, "").replaceAll("_", " ")} plot of ${model.name} version ${model.version}`;
    figure.append(img);
  } catch (error) {
    figure.append(cell("p", `could not load ${file}: ${error.message}`));
  }
  figure.append(cell("figcaption", file));
  return figure;
}

// ------------------------------------------------------------------ scoring

function parseCsvLine(line) {
  return line.split(",").map((c) => c.trim().replace(/^"(.*)"$/, "$1"));
}

function setUpScoring(model, base) {
  const form = $("#score-form");
  let downloadUrl = null;
  handle(form, async () => {
    await guarded($("#score-error"), async () => {
      const file = $("#score-file").files[0];
      const pasted = $("#score-rows").value.trim();
      if (!file && !pasted) throw new Error("Paste rows or choose a CSV file to score.");
      const params = new URLSearchParams({ method: $("#score-method").value });
      const seed = $("#score-seed").value;
      if (seed !== "") params.set("seed", seed);
      const response = await api(`${base}/log_prob.csv?${params}`, {
        method: "POST",
        body: file || `${pasted}\n`,
        type: "text/csv",
        raw: true,
      });
      const text = await response.text();
      const lines = text.trimEnd().split("\n");
      const header = parseCsvLine(lines[0]);
      // The table rounds for reading; the download keeps every digit.
      const rows = lines.slice(1, 101).map((line) => parseCsvLine(line).map((v) => number(Number(v), 7)));
      fillTable($("#score-table"), header, rows, "no rows");
      const count = lines.length - 1;
      const method = response.headers.get("X-Cpflow-Method");
      const shown = count > rows.length ? `; the first ${rows.length} are shown` : "";
      $("#score-summary").textContent = `${count} rows scored with method ${method}${shown}.`;
      if (downloadUrl) URL.revokeObjectURL(downloadUrl);
      downloadUrl = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
      const download = $("#score-download");
      download.href = downloadUrl;
      download.download = `${model.name}-v${model.version}-scored.csv`;
      $("#score-result").hidden = false;
    });
  });
}

// ------------------------------------------------------------------ sampling

function setUpSampling(model, base) {
  const conditional = model.context_dim !== null && model.context_dim !== undefined;
  $("#sample-context-field").hidden = !conditional;
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
        `${samples.length} samples; largest inversion residual ${number(result.max_residual, 3)} (${converged}); seed ${result.seed}.`;
      const image = Array.isArray(model.input_shape);
      const table = $("#sample-table");
      table.hidden = image; // image samples are drawn, not listed
      if (!image) {
        const header = samples.length ? samples[0].map((_, j) => `x${j + 1}`) : [];
        fillTable(table, header, samples.slice(0, 20).map((r) => r.map((v) => number(v, 6))), "no samples");
      }
      $("#sample-result").hidden = false;
      const canvas = $("#sample-plot");
      canvas.hidden = !image && model.dim !== 2;
      if (image) drawImages(canvas, samples, model.input_shape);
      else if (model.dim === 2) await drawScatter(canvas, base, samples, context);
    });
  });
}

// The model's density exp(log p) on a grid (one exact log_prob request) as a heat map, with
// the samples drawn over it.
async function drawScatter(canvas, base, samples, context) {
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
    ctx.fillStyle = `rgb(${Math.round(20 + 235 * t)}, ${Math.round(30 + 190 * t)}, ${Math.round(90 + 20 * t)})`;
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
    `Scatter of ${samples.length} samples over the model density, x from ${number(x0, 3)} to ${number(x1, 3)}, y from ${number(y0, 3)} to ${number(y1, 3)}`,
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
        const [r, g, b] = c === 3 ? [0, 1, 2].map((ch) => level(img[ch][i][j])) : Array(3).fill(level(img[0][i][j]));
        ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
        ctx.fillRect(x0 + j * px, y0 + i * px, px, px);
      }
    }
  });
  canvas.setAttribute("aria-label", `${shown.length} image samples (${c}×${h}×${w}), scaled from ${number(lo, 3)} to ${number(lo + span, 3)}`);
  canvas.dataset.drawn = String(shown.length);
}

// ------------------------------------------------------------------ jobs

async function jobsPage() {
  const uploaded = await guarded($("#jobs-error"), () => api("/v1/datasets"));
  const wanted = new URLSearchParams(window.location.search).get("dataset");
  const group = $("#job-uploaded");
  (uploaded || []).forEach((d) => {
    const option = cell("option", `${d.name} (${d.rows} rows, ${d.dim}-D, ${d.id.slice(0, 8)})`);
    option.value = `id:${d.id}`;
    option.selected = d.id === wanted;
    group.append(option);
  });
  handle($("#job-form"), async () => {
    await guarded($("#job-form-error"), async () => {
      const value = (id) => $(id).value;
      const [kind, ref] = value("#job-dataset").split(/:(.*)/s);
      const spec = {
        model_name: value("#job-model-name").trim(),
        dataset: kind === "id" ? { id: ref } : { builtin: ref },
        model: {
          blocks: Number(value("#job-blocks")),
          hidden: Number(value("#job-hidden")),
          depth: Number(value("#job-depth")),
        },
        training: {
          iterations: Number(value("#job-iterations")),
          batch_size: Number(value("#job-batch")),
          lr: Number(value("#job-lr")),
          val_every: Number(value("#job-val-every")),
        },
        plots: $("#job-plots").checked,
      };
      const { id } = await api("/v1/jobs", { method: "POST", json: spec });
      window.location.href = `/ui/jobs/${enc(id)}`;
    });
  });
  $("#jobs-refresh").addEventListener("click", listJobs);
  await listJobs();
}

function progressText(job) {
  const p = job.progress;
  if (!p) return "";
  return p.total ? `${p.iteration} / ${p.total}` : String(p.iteration);
}

function datasetText(dataset) {
  if (!dataset) return "";
  return dataset.builtin ? dataset.builtin : `uploaded ${String(dataset.id).slice(0, 8)}`;
}

// The list refreshes itself every 2 s while a job is queued or running.
let jobsTimer = null;

async function listJobs() {
  clearTimeout(jobsTimer);
  await guarded($("#jobs-error"), async () => {
    const jobs = await api("/v1/jobs");
    if (jobs.some((job) => !TERMINAL.has(job.status))) jobsTimer = setTimeout(listJobs, 2000);
    const rows = jobs.map((job) => [
      link(`/ui/jobs/${enc(job.id)}`, job.id.slice(0, 12)),
      job.model_name,
      datasetText(job.dataset),
      job.status,
      progressText(job),
      when(job.created_at),
    ]);
    fillTable($("#jobs"), null, rows, "No jobs yet.");
  });
}

// ------------------------------------------------------------------ one job, live

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function showJob(job) {
  const p = job.progress || {};
  $("#job-status").textContent = job.status + (job.cancel_requested && !TERMINAL.has(job.status) ? " (cancelling)" : "");
  $("#job-model").textContent = job.model_name || "";
  $("#job-iteration").textContent = progressText(job) || "not started";
  $("#job-val-nll").textContent = number(p.val_nll, 5) || "not yet";
  $("#job-eta").textContent = TERMINAL.has(job.status) ? "done" : duration(p.eta_s) || "estimating";
  const bar = $("#job-progress");
  bar.max = p.total || 1;
  bar.value = job.status === "succeeded" ? bar.max : p.iteration || 0;
  const result = $("#job-result");
  if (job.result) {
    const r = job.result;
    const text = `${r.model} version ${r.version}` + (r.test_nll != null ? `, test NLL ${number(r.test_nll, 5)}` : "");
    result.replaceChildren(link(`/ui/models/${enc(r.model)}?version=${r.version}`, text));
  } else {
    result.textContent = job.error ? `error: ${job.error}` : "not yet";
  }
  $("#job-cancel").disabled = TERMINAL.has(job.status) || job.cancel_requested;
}

// Follow the API's server-sent events. EventSource cannot send the Authorization header, so
// the stream is read with fetch and split into events here.
async function followJob(id) {
  const live = $("#job-live");
  let last = null;
  while (!last || !TERMINAL.has(last.status)) {
    live.textContent = "following live";
    const response = await api(`/v1/jobs/${enc(id)}/events?interval_s=0.5`, { raw: true });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const kind = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (kind === "job" && data) {
          last = JSON.parse(data);
          showJob(last);
        } else if (kind === "error" && data) {
          throw new Error(JSON.parse(data).message);
        }
      }
    }
    if (!last || !TERMINAL.has(last.status)) await new Promise((r) => setTimeout(r, 1000));
  }
  live.textContent = `finished: ${last.status}`;
}

async function jobPage() {
  const id = document.body.dataset.job;
  $("#job-cancel").addEventListener("click", async () => {
    await guarded($("#job-error"), async () => {
      showJob(await api(`/v1/jobs/${enc(id)}`, { method: "DELETE" }));
    });
  });
  await guarded($("#job-error"), () => followJob(id));
}

// ------------------------------------------------------------------ data sets

async function datasetsPage() {
  handle($("#dataset-form"), async () => {
    $("#dataset-done").textContent = "";
    await guarded($("#dataset-error"), async () => {
      const form = new FormData();
      form.append("file", $("#dataset-file").files[0]);
      const name = $("#dataset-name").value.trim();
      if (name) form.append("name", name);
      const d = await api("/v1/datasets", { method: "POST", body: form });
      $("#dataset-done").textContent = `Uploaded ${d.name}: ${d.rows} rows × ${d.dim} columns (id ${d.id}).`;
      $("#dataset-form").reset();
      await listDatasets();
    });
  });
  await listDatasets();
}

async function listDatasets() {
  await guarded($("#datasets-error"), async () => {
    const datasets = await api("/v1/datasets");
    const rows = datasets.map((d) => {
      const actions = document.createElement("span");
      actions.className = "actions";
      actions.append(link(`/ui/jobs?dataset=${enc(d.id)}`, "Train on it"));
      const remove = cell("button", "Delete");
      remove.type = "button";
      remove.setAttribute("aria-label", `Delete data set ${d.name}`);
      remove.addEventListener("click", async () => {
        await guarded($("#datasets-error"), async () => {
          await api(`/v1/datasets/${enc(d.id)}`, { method: "DELETE" });
          $("#dataset-done").textContent = `Deleted ${d.name}.`;
          await listDatasets();
        });
      });
      actions.append(remove);
      return [d.name, String(d.rows), String(d.dim), d.id.slice(0, 12), when(d.created_at), actions];
    });
    fillTable($("#datasets"), null, rows, "No data sets uploaded yet.");
  });
}

// ------------------------------------------------------------------ start

const PAGES = {
  models: modelsPage,
  model: modelPage,
  jobs: jobsPage,
  job: jobPage,
  datasets: datasetsPage,
};

document.addEventListener("DOMContentLoaded", () => {
  setUpKeyForm();
  PAGES[document.body.dataset.page]?.();
});
