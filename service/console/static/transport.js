// The transport form: pasted rows -> POST .../transport, forward (data x -> base z) or inverse
// (base z -> data x, solved to a tolerance, with its residual) -> table of the mapped rows.
import { api } from "./api.js";
import { $, fillTable, guarded, handle, number } from "./dom.js";

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

// Numeric rows of pasted CSV (blank lines skipped, one optional header line), each as wide as
// the model's inputs plus its context columns; an Error naming the row otherwise.
function parseRows(text, dim, contextDim) {
  const rows = text
    .split(/\r?\n/)
    .filter((line) => line.trim() !== "")
    .map((line) => line.split(",").map((c) => c.trim().replace(/^"(.*)"$/, "$1")));
  if (rows.length && !rows[0].every((c) => NUMBER.test(c))) rows.shift(); // the header
  if (!rows.length) throw new Error("Paste at least one row of numbers to map.");
  const width = dim + contextDim;
  const columns = contextDim ? ` (${dim} inputs, then ${contextDim} context values)` : "";
  return rows.map((row, i) => {
    const bad = row.find((c) => !NUMBER.test(c));
    if (bad !== undefined) throw new Error(`Row ${i + 1} has a non-numeric value '${bad}'.`);
    if (row.length !== width) {
      throw new Error(`Row ${i + 1} has ${row.length} values; this model takes ${width}${columns}.`);
    }
    return row.map(Number);
  });
}

export function setUpTransport(model, base) {
  const contextDim = model.context_dim ?? 0;
  const direction = $("#transport-direction");
  const tolerance = $("#transport-tolerance");
  direction.addEventListener("change", () => (tolerance.disabled = direction.value !== "inverse"));
  handle($("#transport-form"), async () => {
    await guarded($("#transport-error"), async () => {
      const rows = parseRows($("#transport-rows").value, model.dim, contextDim);
      const body = { inputs: rows.map((r) => r.slice(0, model.dim)), direction: direction.value };
      if (contextDim) body.context = rows.map((r) => r.slice(model.dim));
      const inverse = direction.value === "inverse";
      if (inverse && tolerance.value !== "") body.tolerance = Number(tolerance.value);
      const result = await api(`${base}/transport`, { method: "POST", json: body });
      const [from, to] = inverse ? ["z", "x"] : ["x", "z"];
      const names = (letter) => body.inputs[0].map((_, j) => `${letter}${j + 1}`);
      // Each pasted row beside its image, rounded for reading.
      const shown = body.inputs.slice(0, 100).map((row, i) => [
        ...row.map((v) => number(v, 7)),
        ...result.outputs[i].map((v) => number(v, 7)),
      ]);
      fillTable($("#transport-table"), [...names(from), ...names(to)], shown, "no rows");
      const more = rows.length > shown.length ? `; the first ${shown.length} are shown` : "";
      const solved = inverse
        ? `; largest residual max|f(x) - z| ${number(result.max_residual, 3)} ` +
          `(${result.converged ? "all converged" : "NOT all converged"})`
        : "";
      $("#transport-summary").textContent =
        `${rows.length} rows mapped ${direction.value} (${from} to ${to})${solved}${more}.`;
      $("#transport-result").hidden = false;
    }, $("#transport-result"));
  });
}
