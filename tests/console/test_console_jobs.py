"""The console's data-set and job pages in a real headless Chromium against a live service and
worker: upload (a bad file shows its error), list, delete; start a job on an uploaded data set
and watch it finish without reloading the page; follow a long job's progress live and cancel it.

Jobs use a tiny model and few iterations; timeouts only bound a hang."""

from __future__ import annotations

import json
import re

import numpy as np
import redis

from service.queue import record_key
from tests.console.console_stack import assert_labelled, wait_until
from tests.helpers.procs import REDIS_URL

WATCH = """() => {
  window.__sameDocument = true;  // gone if the page reloads
  window.__seen = [];
  const note = () => window.__seen.push([
    document.querySelector('#job-status').textContent,
    document.querySelector('#job-iteration').textContent]);
  note();
  new MutationObserver(note).observe(document.querySelector('main'),
    {subtree: true, childList: true, characterData: true});
}"""


def _blobs_csv(path, n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) * 0.5
    x[: n // 2] += 2.0
    path.write_text("x,y\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in x))
    return path


def _iteration(page) -> int:
    match = re.match(r"(\d+) / \d+", page.locator("#job-iteration").inner_text())
    return int(match.group(1)) if match else -1


def test_datasets_upload_list_delete_and_bad_file(page, stack, page_log, tmp_path, shots):
    page_log.allow(422)
    page.goto(stack.url + "/ui/datasets")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3\n")
    page.set_input_files("#dataset-file", str(bad))
    page.click("#dataset-form button[type=submit]")
    error = page.locator("#dataset-error")
    error.wait_for()
    assert "ragged rows: data row 2 has 1 columns" in error.inner_text()
    assert "invalid_dataset" in error.inner_text()

    page.set_input_files("#dataset-file", str(_blobs_csv(tmp_path / "blobs.csv", seed=1)))
    page.fill("#dataset-name", "console-keep")
    page.click("#dataset-form button[type=submit]")
    page.locator(
        "#dataset-done", has_text="Uploaded console-keep: 240 rows × 2 columns"
    ).wait_for()
    assert error.is_hidden()
    page.set_input_files("#dataset-file", str(_blobs_csv(tmp_path / "other.csv", n=50, seed=2)))
    page.fill("#dataset-name", "console-drop")
    page.click("#dataset-form button[type=submit]")
    drop = page.locator("#datasets tbody tr", has_text="console-drop")
    drop.wait_for()
    assert drop.locator("td").nth(1).inner_text() == "50"
    assert_labelled(page)
    page.screenshot(path=shots / "datasets.png", full_page=True)

    page.get_by_role("button", name="Delete data set console-drop").click()
    page.locator("#dataset-done", has_text="Deleted console-drop.").wait_for()
    drop.wait_for(state="detached")
    names = {d["name"] for d in stack.client.get("/v1/datasets").json()}
    assert "console-keep" in names and "console-drop" not in names


def test_job_on_uploaded_data_finishes_live_and_model_appears(page, stack, tmp_path, shots):
    upload = stack.client.post(
        "/v1/datasets",
        files={"file": ("blobs.csv", _blobs_csv(tmp_path / "blobs.csv").read_bytes())},
        data={"name": "console-blobs"},
    )
    assert upload.status_code in (200, 201), upload.text
    dataset_id = upload.json()["id"]
    page.goto(stack.url + "/ui/datasets")
    row = page.locator("#datasets tbody tr", has_text="console-blobs")
    row.get_by_role("link", name="Train on it").click()
    page.wait_for_url(f"**/ui/jobs?dataset={dataset_id}")
    page.wait_for_selector("#job-form button[type=submit]:enabled")
    assert page.locator("#job-dataset").input_value() == f"id:{dataset_id}"
    for field, value in {
        "#job-model-name": "console-trained", "#job-blocks": "1", "#job-hidden": "8",
        "#job-depth": "1", "#job-iterations": "300", "#job-batch": "32", "#job-lr": "0.005",
        "#job-val-every": "20",
    }.items():  # fmt: skip
        page.fill(field, value)
    page.uncheck("#job-plots")  # plots cost seconds; the model pages test them
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/jobs/[^/?]+$"))
    page.evaluate(WATCH)
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=180_000)
    assert page.evaluate("window.__sameDocument") is True  # followed live, no reload
    statuses = [s for s, _ in page.evaluate("window.__seen")]
    assert statuses[-1] == "succeeded" and len(set(statuses)) >= 2, statuses
    assert page.locator("#job-iteration").inner_text() == "300 / 300"
    assert page.locator("#job-live").inner_text() == "finished: succeeded"
    assert page.locator("#job-cancel").is_disabled()
    page.screenshot(path=shots / "job-finished.png", full_page=True)

    page.locator("#job-result a").click()
    page.wait_for_url("**/ui/models/console-trained?version=1")
    page.locator("#model-title", has_text="console-trained · version 1").wait_for()
    page.goto(stack.url + "/ui")
    page.locator("#models tbody tr", has_text="console-trained").wait_for()


def test_long_job_progress_updates_live_and_cancel(page, stack, shots):
    page.goto(stack.url + "/ui/jobs")
    page.wait_for_selector("#job-form button[type=submit]:enabled")
    page.fill("#job-model-name", "console-long")
    page.select_option("#job-dataset", "builtin:two_moons")
    for field, value in {
        "#job-blocks": "1", "#job-hidden": "8", "#job-depth": "1",
        "#job-iterations": "1000000", "#job-batch": "32", "#job-val-every": "50",
    }.items():  # fmt: skip
        page.fill(field, value)
    page.uncheck("#job-plots")
    assert_labelled(page)
    page.screenshot(path=shots / "jobs.png", full_page=True)
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/jobs/[^/?]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate(WATCH)
    wait_until(
        page,
        "() => /^[1-9]\\d* \\/ 1000000$/.test(document.querySelector('#job-iteration').textContent)",
        timeout=120,
    )
    first = _iteration(page)
    # The worker writes progress about once a second; the page shows it without a reload.
    wait_until(
        page,
        f"() => parseInt(document.querySelector('#job-iteration').textContent) > {first}",
        timeout=120,
    )
    assert _iteration(page) > first
    assert page.locator("#job-status").inner_text() == "running"
    assert page.locator("#job-phase").inner_text() == "training"
    settings = page.locator("#job-resolved").inner_text()  # what the job resolved, and why
    assert "preset auto" in settings and "blocks 1" in settings, settings
    assert page.locator("#job-val-nll").inner_text() != "not yet" or _iteration(page) < 50
    assert page.locator("#job-eta").inner_text() != ""
    page.screenshot(path=shots / "job-running.png", full_page=True)

    # The job list follows running jobs too.
    page.goto(stack.url + "/ui/jobs")
    cell = page.locator("#jobs tbody tr", has_text="console-long").locator("td").nth(4)
    cell.wait_for()
    listed = int(cell.inner_text().split(" / ")[0])
    page.evaluate("window.__sameDocument = true")
    wait_until(
        page,
        f"""() => [...document.querySelectorAll('#jobs tbody tr')].some((tr) =>
            tr.textContent.includes('console-long')
            && parseInt(tr.children[4].textContent) > {listed})""",
        timeout=120,
    )
    assert page.evaluate("window.__sameDocument") is True

    page.go_back()
    page.wait_for_selector("#job-cancel:enabled")
    page.evaluate(WATCH)
    page.click("#job-cancel")
    page.locator("#job-status", has_text="cancelled").wait_for(timeout=120_000)
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#job-cancel").is_disabled()
    job = stack.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    # Fields left blank on the form (lr) are left out of the spec: the auto recipe chooses them.
    record = redis.Redis.from_url(REDIS_URL).hget(record_key(stack.queue_name, job_id), "spec")
    spec = json.loads(record)
    assert (spec["model"]["blocks"], spec["model"]["hidden"], spec["model"]["depth"]) == (1, 8, 1)
    assert spec["training"]["val_every"] == 50 and spec["training"].get("lr") is None

    page.goto(stack.url + "/ui/jobs")
    row = page.locator("#jobs tbody tr", has_text="console-long")
    row.wait_for()
    assert "cancelled" in row.inner_text()
