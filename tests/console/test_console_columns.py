"""Column names in the console (#28), in a real headless Chromium against a live service and
worker: a 4-column CSV with a header is uploaded on the data sets page, trained on by a job
(whose page names the data set and its data checks), and the model page then shows the names:
in its summary, its example rows, the scored CSV (table and download) and the samples (table
and their download from sample.csv)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from tests.console.console_stack import wait_until

NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _iris_like(path: Path, n: int = 150) -> Path:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 4)) * [0.8, 0.4, 1.7, 0.7] + [5.8, 3.0, 3.7, 1.2]
    path.write_text(
        ",".join(NAMES) + "\n" + "".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in x)
    )
    return path


def _download(page, selector: str) -> list[list[str]]:
    with page.expect_download() as info:
        page.click(selector)
    return list(csv.reader(io.StringIO(Path(info.value.path()).read_text())))


def _header(page, table: str) -> list[str]:
    return page.locator(f"{table} thead th").all_inner_texts()


def test_column_names_from_upload_to_model_page(page, stack, tmp_path, shots):
    page.goto(stack.url + "/ui/datasets")
    page.set_input_files("#dataset-file", str(_iris_like(tmp_path / "iris4.csv")))
    page.fill("#dataset-name", "console-iris")
    page.click("#dataset-form button[type=submit]")
    page.locator("#dataset-done", has_text=", ".join(NAMES)).wait_for()
    page.locator("#datasets tbody tr", has_text="console-iris").wait_for()

    spec = {
        "model_name": "console-iris",
        "dataset": {"id": "console-iris"},  # by name: the latest upload under it
        "model": {"blocks": 1, "hidden": 8, "depth": 1},
        "training": {"iterations": 20, "batch_size": 32, "val_every": 10},
        "plots": False,
    }
    job = stack.client.post("/v1/jobs", json=spec)
    assert job.status_code == 202, job.text
    page.goto(stack.url + f"/ui/jobs/{job.json()['id']}")
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=180_000)
    assert page.locator("#job-dataset").inner_text() == "console-iris"
    assert page.locator("#job-data-report").inner_text() == "no warnings"
    page.goto(stack.url + "/ui/jobs")
    page.locator("#jobs tbody tr", has_text="console-iris").first.wait_for()
    assert "uploaded " not in page.locator("#jobs tbody").inner_text()

    page.goto(stack.url + "/ui/models/console-iris")
    summary = page.locator("#model-summary")
    summary.locator("dd", has_text="sepal_length, sepal_width").wait_for()
    assert ", ".join(NAMES) in summary.inner_text()
    # The example rows are the model's 4 columns, not a 2-column "x,y" placeholder.
    placeholder = page.locator("#score-rows").get_attribute("placeholder") or ""
    assert placeholder.splitlines() == [",".join(NAMES), "0.0,0.0,0.0,0.0"]

    # Rows pasted without a header come back under the model's names, on screen and on disk.
    page.wait_for_selector("#score-form button[type=submit]:enabled")
    page.fill("#score-rows", "5.1,3.5,1.4,0.2\n6.2,2.9,4.3,1.3")
    page.click("#score-form button[type=submit]")
    page.locator("#score-result").wait_for()
    assert _header(page, "#score-table") == [*NAMES, "log_prob"]
    scored = _download(page, "#score-download")
    assert scored[0] == [*NAMES, "log_prob"] and len(scored) == 3

    page.fill("#sample-n", "25")
    page.fill("#sample-seed", "4")
    page.click("#sample-form button[type=submit]")
    page.locator("#sample-result").wait_for()
    assert _header(page, "#sample-table") == NAMES
    wait_until(page, "() => document.querySelector('#sample-download').href.startsWith('blob:')")
    samples = _download(page, "#sample-download")
    assert samples[0] == NAMES and len(samples) == 26
    # The download is the same draw as the table (same seed): its first row, as shown.
    shown = page.locator("#sample-table tbody tr").first.locator("td").all_inner_texts()
    assert [float(v) for v in shown] == [float(f"{float(v):.6g}") for v in samples[1]]
    page.screenshot(path=shots / "model-columns.png", full_page=True)
