// The jobs page (form, self-refreshing list) and one job's page, followed live.
import { api } from "./api.js";
import { frame, quantile } from "./chart.js";
import { $, cell, duration, enc, fillTable, guarded, handle, link, number, reportText, when } from "./dom.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export async function jobsPage() {
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
      // Blank fields are left out: the auto recipe chooses them from the data.
      const given = (fields) =>
        Object.fromEntries(
          Object.entries(fields)
            .filter(([, id]) => value(id).trim() !== "")
            .map(([name, id]) => [name, Number(value(id))]),
        );
      const [kind, ref] = value("#job-dataset").split(/:(.*)/s);
      const spec = {
        model_name: value("#job-model-name").trim(),
        dataset: kind === "id" ? { id: ref } : { builtin: ref },
        model: given({ blocks: "#job-blocks", hidden: "#job-hidden", depth: "#job-depth" }),
        training: {
          iterations: Number(value("#job-iterations")),
          batch_size: Number(value("#job-batch")),
          ...given({ lr: "#job-lr", val_every: "#job-val-every" }),
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
  if (dataset.builtin) return dataset.builtin;
  return dataset.name || `uploaded ${String(dataset.id).slice(0, 8)}`;
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

// What the job trains with once its data is loaded: preset, model and training settings, and
// each choice of the auto recipe with its reason.
function resolvedText(job) {
  const r = job.resolved;
  if (!r) return "once the data is loaded";
  const pairs = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  const keep = ["iterations", "batch_size", "lr", "schedule", "loss", "val_every"];
  const training = Object.fromEntries(keep.filter((k) => k in r.training).map((k) => [k, r.training[k]]));
  const lines = [`preset ${r.preset}`, `model: ${pairs(r.model)}`, `training: ${pairs(training)}`];
  const choices = (r.auto && r.auto.choices) || {};
  for (const [name, choice] of Object.entries(choices)) {
    if (choice && choice.why) lines.push(`${name} = ${choice.value}: ${choice.why}`);
  }
  return lines.join("\n");
}

function showJob(job) {
  const p = job.progress || {};
  const cancelling = job.cancel_requested && !TERMINAL.has(job.status);
  $("#job-status").textContent = job.status + (cancelling ? " (cancelling)" : "");
  $("#job-model").textContent = job.model_name || "";
  $("#job-dataset").textContent = datasetText(job.dataset);
  $("#job-data-report").textContent = job.dataset?.builtin ? "built-in" : reportText(job.data_report);
  $("#job-phase").textContent = TERMINAL.has(job.status) ? "ended" : job.phase || "waiting for a worker";
  $("#job-resolved").textContent = resolvedText(job);
  $("#job-iteration").textContent = progressText(job) || "not started";
  $("#job-val-nll").textContent = number(p.val_nll, 5) || "not yet";
  $("#job-eta").textContent = TERMINAL.has(job.status) ? "done" : duration(p.eta_s) || "estimating";
  const bar = $("#job-progress");
  bar.max = p.total || 1;
  bar.value = job.status === "succeeded" ? bar.max : p.iteration || 0;
  const result = $("#job-result");
  if (job.result) {
    const r = job.result;
    const nll = r.test_nll != null ? `, test NLL ${number(r.test_nll, 5)}` : "";
    const text = `${r.model} version ${r.version}${nll}`;
    result.replaceChildren(link(`/ui/models/${enc(r.model)}?version=${r.version}`, text));
  } else {
    result.textContent = job.error ? `error: ${job.error}` : "not yet";
  }
  $("#job-cancel").disabled = TERMINAL.has(job.status) || job.cancel_requested;
  if (p.curve) {
    p.curve.forEach(([iteration, train, val]) => curvePoints.set(iteration, [train, val]));
    drawCurve($("#job-curve"), p.loss);
  }
}

// ------------------------------------------------------------------ the live training curve

// iteration -> [train NLL, validation NLL]: every point any event brought (an event carries
// the curve so far, thinned to 200 points for long runs).
const curvePoints = new Map();
const LOSS_TITLES = { exact: "trained on the exact NLL", surrogate: "trained on the surrogate loss" };

function drawCurve(canvas, loss) {
  const its = [...curvePoints.keys()].sort((a, b) => a - b);
  const val = its.map((i) => curvePoints.get(i)[1]);
  const train = its.map((i) => curvePoints.get(i)[0]);
  const values = [...val, ...train].filter(Number.isFinite);
  if (!values.length) return;
  const lo = Math.min(...values);
  // A first, far higher point (the untrained model) must not flatten the rest of the curve.
  const q90 = quantile(values, 0.9);
  const hi = values.length >= 10 ? Math.min(Math.max(...values), q90 + 0.5 * (q90 - lo)) : Math.max(...values);
  const pad = 0.05 * (hi - lo || 1);
  const chart = frame(canvas, [0, Math.max(its[its.length - 1], 1)], [lo - pad, hi + pad], {
    xLabel: "iteration",
    yLabel: "NLL (nats per row)",
    title: `training curve: ${LOSS_TITLES[loss] || "training loss not reported"}`,
  });
  chart.clear();
  chart.grid();
  const { ctx } = chart;
  const series = (ys, colour, label, row) => {
    ctx.save();
    ctx.beginPath();
    ctx.rect(chart.box.left, chart.box.top, chart.box.width, chart.box.height);
    ctx.clip();
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    its.forEach((it, k) => {
      if (!Number.isFinite(ys[k])) return;
      if (started) ctx.lineTo(chart.x(it), chart.y(ys[k]));
      else ctx.moveTo(chart.x(it), chart.y(ys[k]));
      started = true;
    });
    ctx.stroke();
    its.forEach((it, k) => Number.isFinite(ys[k]) && ctx.fillRect(chart.x(it) - 2, chart.y(ys[k]) - 2, 4, 4));
    ctx.restore();
    ctx.fillStyle = colour;
    ctx.fillRect(chart.box.left + chart.box.width - 150, chart.box.top + 8 + 16 * row, 12, 3);
    ctx.fillStyle = "#1d232b";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(label, chart.box.left + chart.box.width - 133, chart.box.top + 10 + 16 * row);
  };
  series(val, "#1f77b4", "validation NLL", 0);
  if (train.some(Number.isFinite)) series(train, "#ff7f0e", "train NLL", 1);
  const finite = val.map((v, k) => [v, its[k]]).filter(([v]) => Number.isFinite(v));
  const [best, bestIt] = finite.reduce((a, b) => (b[0] < a[0] ? b : a));
  ctx.fillStyle = "#2ca02c";
  ctx.font = "18px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText("★", chart.x(bestIt), chart.y(best));
  chart.axes();
  canvas.dataset.points = String(finite.length);
  canvas.setAttribute(
    "aria-label",
    `Training curve, ${LOSS_TITLES[loss] || "training loss not reported"}: ${finite.length} ` +
      `validations up to iteration ${its[its.length - 1]}; lowest validation NLL ` +
      `${number(best, 5)} at iteration ${bestIt}`,
  );
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

export async function jobPage() {
  const id = document.body.dataset.job;
  $("#job-cancel").addEventListener("click", async () => {
    await guarded($("#job-error"), async () => {
      showJob(await api(`/v1/jobs/${enc(id)}`, { method: "DELETE" }));
    });
  });
  await guarded($("#job-error"), () => followJob(id));
}
