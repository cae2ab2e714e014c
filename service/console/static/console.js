// cpflow web console: fills the server-rendered pages from the /v1 API.
// The API key is entered once, kept in this tab's sessionStorage and sent as
// "Authorization: Bearer <key>"; it never goes into a URL or a cookie.
// One ES module per part (no build step): this entry picks the page's code.
import { datasetsPage } from "./datasets.js";
import { jobPage, jobsPage } from "./jobs.js";
import { setUpKeyForm } from "./key.js";
import { modelPage, modelsPage } from "./models.js";

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
