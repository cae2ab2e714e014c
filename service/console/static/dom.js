// DOM helpers shared by the pages: lookups, alerts, form handling, tables, number formats.

export const $ = (selector, root = document) => root.querySelector(selector);
export const enc = encodeURIComponent;

export function showAlert(element, text) {
  element.textContent = text;
  element.hidden = false;
}

// Submit buttons start disabled (no submission, not even by Enter, before the script handles
// it: a native GET would put the fields in the URL); this enables them once it does.
export function handle(form, onSubmit) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onSubmit(event);
  });
  form.querySelectorAll("button[type=submit]").forEach((b) => (b.disabled = false));
}

export function clearAlert(element) {
  element.textContent = "";
  element.hidden = true;
}

// Run an async handler, showing any failure in the given alert element; a failure hides the
// result element it replaces (an earlier result must not pass for this request's).
export async function guarded(alertElement, work, resultElement = null) {
  clearAlert(alertElement);
  try {
    return await work();
  } catch (error) {
    const where = error.status ? ` (${error.code}, HTTP ${error.status})` : ""; // an ApiError
    showAlert(alertElement, `${error.message}${where}`);
    if (resultElement) resultElement.hidden = true;
    return undefined;
  }
}

export function cell(tag, content) {
  const element = document.createElement(tag);
  if (content instanceof Node) element.append(content);
  else element.textContent = content ?? "";
  return element;
}

export function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

export function fillTable(table, header, rows, empty) {
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

export function fillFacts(dl, facts) {
  dl.replaceChildren();
  facts.forEach(([term, value]) => {
    if (value === undefined || value === null || value === "") return;
    dl.append(cell("dt", term), cell("dd", String(value)));
  });
  if (!dl.children.length) dl.append(cell("dd", "none recorded"));
}

export function number(value, digits = 4) {
  return typeof value === "number" ? Number(value.toPrecision(digits)).toString() : "";
}

export function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "";
}

export function duration(seconds) {
  if (typeof seconds !== "number") return "";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

// The data checks' warnings (refused data sets never reach a job), one line each.
export function reportText(report) {
  if (!report) return "not checked";
  const warnings = report.warnings || [];
  const dropped = report.dropped?.length ? `dropped ${report.dropped.join(", ")}; ` : "";
  if (!warnings.length) return `${dropped}no warnings`;
  return dropped + warnings.map((w) => w.message).join(" · ");
}
