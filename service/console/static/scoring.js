// The scoring form: pasted rows or a CSV file -> POST .../log_prob.csv -> table + download.
import { api } from "./api.js";
import { $, fillTable, guarded, handle, number } from "./dom.js";

function parseCsvLine(line) {
  return line.split(",").map((c) => c.trim().replace(/^"(.*)"$/, "$1"));
}

export function setUpScoring(model, base) {
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
    }, $("#score-result"));
  });
}
