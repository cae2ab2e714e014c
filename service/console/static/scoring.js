// The scoring form: pasted rows or a CSV file -> POST .../log_prob.csv -> table + download;
// with held-out scores, percentiles (sortable) and the rows against their histogram.
import { api } from "./api.js";
import { drawHistogram, edgesOver, fractions, heldoutFractions } from "./calibration.js";
import { $, fillTable, guarded, handle, number } from "./dom.js";

const SHOWN = 100;

function parseCsvLine(line) {
  return line.split(",").map((c) => c.trim().replace(/^"(.*)"$/, "$1"));
}

// The query: method and seed, and percentiles (with an outlier level) when asked.
function scoringParams(calibration) {
  const params = new URLSearchParams({ method: $("#score-method").value });
  const seed = $("#score-seed").value;
  if (seed !== "") params.set("seed", seed);
  if (calibration && $("#score-percentile").checked) {
    const level = $("#score-level").value;
    if (level !== "") params.set("outlier_level", level);
    else params.set("percentile", "true");
  }
  return params;
}

// The first rows in the order chosen (file order, or least likely first).
function showRows(header, rows) {
  const column = header.indexOf("percentile");
  const byPercentile = column >= 0 && $("#score-sort").value === "percentile";
  const ordered = byPercentile ? [...rows].sort((a, b) => Number(a[column]) - Number(b[column])) : rows;
  // The table rounds for reading; the download keeps every digit.
  const shown = ordered.slice(0, SHOWN).map((row) => row.map((v) => number(Number(v), 7)));
  fillTable($("#score-table"), header, shown, "no rows");
  return shown.length;
}

function summary(header, rows, method, shown) {
  const count = rows.length;
  const more = count > shown ? `; the first ${shown} are shown` : "";
  let text = `${count} rows scored with method ${method}${more}.`;
  const flag = header.indexOf("outlier");
  if (flag >= 0) {
    const flagged = rows.filter((row) => Number(row[flag]) === 1).length;
    text += ` ${flagged} flagged as outliers (percentile under ${$("#score-level").value}).`;
  }
  return text;
}

export function setUpScoring(model, base) {
  const form = $("#score-form");
  const calibration = model.training?.calibration;
  $("#score-calibration").hidden = !calibration;
  let downloadUrl = null;
  let shownTable = null;
  $("#score-sort").addEventListener("change", () => shownTable && showRows(...shownTable));
  handle(form, async () => {
    await guarded($("#score-error"), async () => {
      const file = $("#score-file").files[0];
      const pasted = $("#score-rows").value.trim();
      if (!file && !pasted) throw new Error("Paste rows or choose a CSV file to score.");
      const response = await api(`${base}/log_prob.csv?${scoringParams(calibration)}`, {
        method: "POST",
        body: file || `${pasted}\n`,
        type: "text/csv",
        raw: true,
      });
      const text = await response.text();
      const lines = text.trimEnd().split("\n");
      const header = parseCsvLine(lines[0]);
      const rows = lines.slice(1).map(parseCsvLine);
      shownTable = [header, rows];
      $("#score-sort-field").hidden = !header.includes("percentile");
      const shown = showRows(header, rows);
      const method = response.headers.get("X-Cpflow-Method");
      $("#score-summary").textContent = summary(header, rows, method, shown);
      if (calibration) {
        const edges = edgesOver(calibration.quantiles);
        const lp = header.indexOf("log_prob");
        const scored = fractions(rows.map((row) => Number(row[lp])), edges);
        const label = `Histogram of the ${rows.length} scored rows' log-density`;
        const heldout = heldoutFractions(calibration.quantiles, edges);
        drawHistogram($("#score-hist"), edges, heldout, scored, label, "these rows");
      }
      if (downloadUrl) URL.revokeObjectURL(downloadUrl);
      downloadUrl = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
      const download = $("#score-download");
      download.href = downloadUrl;
      download.download = `${model.name}-v${model.version}-scored.csv`;
      $("#score-result").hidden = false;
    }, $("#score-result"));
  });
}
