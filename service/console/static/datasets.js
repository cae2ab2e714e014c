// The data sets page: upload, list, delete, "Train on it".
import { api } from "./api.js";
import { $, cell, enc, fillTable, guarded, handle, link, reportText, when } from "./dom.js";

export async function datasetsPage() {
  handle($("#dataset-form"), async () => {
    $("#dataset-done").textContent = "";
    await guarded($("#dataset-error"), async () => {
      const form = new FormData();
      form.append("file", $("#dataset-file").files[0]);
      const name = $("#dataset-name").value.trim();
      if (name) form.append("name", name);
      const drop = $("#dataset-drop").value.trim();
      if (drop) form.append("drop_columns", drop);
      if ($("#dataset-drop-flagged").checked) form.append("drop_flagged", "true");
      const d = await api("/v1/datasets", { method: "POST", body: form });
      $("#dataset-done").textContent =
        `Uploaded ${d.name}: ${d.rows} rows × ${d.dim} columns (${d.columns.join(", ")}; ` +
        `id ${d.id}). Data checks: ${reportText(d.report)}.`;
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
      const dim = `${d.dim}: ${d.columns.join(", ")}`;
      return [d.name, String(d.rows), dim, d.id.slice(0, 12), when(d.uploaded_at || d.created_at), actions];
    });
    fillTable($("#datasets"), null, rows, "No data sets uploaded yet.");
  });
}
