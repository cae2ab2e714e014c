"""The console's diagnostics in a real headless Chromium against a live service and worker: a
4-column model trained and published by the real pipeline shows its corner, calibration, score
histogram and training-curve plots (decoded by the browser, valid PNGs of a sensible size), its
metrics by name with units, and its samples on labelled axes; a failed score replaces the
result before it; a job's page draws the training curve live as validations arrive."""

from __future__ import annotations

import io
import re
import types

import matplotlib.image as mpimg
import numpy as np
import pytest

from tests.console.console_stack import wait_until

DIAGNOSTICS = ("corner.png", "calibration.png", "score_histogram.png", "training_curve.png")

DECODED = """async (file) => {
  const img = document.querySelector(`img[data-plot="${file}"]`);
  await img.decode();
  return [img.naturalWidth, img.naturalHeight];
}"""

# Dark (ink) pixels in the canvas's left margin and bottom margin: tick labels and axis titles.
MARGIN_INK = """() => { const c = document.querySelector('#sample-plot');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let left = 0, bottom = 0;
  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
    const i = 4 * (y * c.width + x);
    if (d[i] + d[i + 1] + d[i + 2] > 450) continue;
    if (x < 50) left++; else if (y > c.height - 40) bottom++;
  }
  return [left, bottom]; }"""


@pytest.fixture(scope="module")
def table4(stack) -> str:
    """'table4': a 4-column model trained briefly and published by the real pipeline."""
    from model_store import ModelStore
    from training.pipeline import train_and_publish

    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 4)) @ rng.normal(size=(4, 4)) + 1.0
    splits = types.SimpleNamespace(train=x[:600], val=x[600:750], test=x[750:], name="t4")
    train_and_publish(
        splits, "table4", ModelStore(stack.tmp / "store"),
        flow_config={"blocks": 1, "hidden": 8, "depth": 1},
        train_config={"iterations": 40, "batch_size": 64, "lr": 5e-3},
        export_onnx=False,
    )  # fmt: skip
    return "table4"


def test_diagnostics_of_a_4_column_model_are_shown(page, stack, table4, shots):
    page.goto(stack.url + f"/ui/models/{table4}")
    page.locator("#model-title", has_text="version 1").wait_for()
    for file in DIAGNOSTICS:
        page.locator(f'img[data-plot="{file}"]').wait_for()
        width, height = page.evaluate(DECODED, file)  # the browser decoded it
        assert width >= 300 and height >= 250, (file, width, height)
        png = stack.client.get(f"/v1/models/{table4}/versions/1/plots/{file}")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = mpimg.imread(io.BytesIO(png.content), format="png")
        assert pixels.shape[:2] == (height, width) and float(pixels[..., :3].std()) > 0.01
    captions = page.locator("#model-plots figcaption").all_inner_texts()
    assert captions[0].startswith("Train and validation NLL")  # the diagnostics come first
    assert any(c.startswith("Calibration") for c in captions)
    # Metrics by name, with units.
    facts = dict(
        zip(
            page.locator("#model-metrics dt").all_inner_texts(),
            page.locator("#model-metrics dd").all_inner_texts(),
            strict=True,
        )
    )
    assert re.fullmatch(r"-?\d+(\.\d+)? nats per row", facts["Test NLL"]), facts
    loss = stack.client.get(f"/v1/models/{table4}").json()["metrics"]["train_loss"]
    assert facts["Trained on"].startswith(
        {"exact": "the exact NLL", "surrogate": "the surr"}[loss]
    )
    assert facts["NLLs computed with"] == "exact log-det (Cholesky)"
    assert "test_nll" not in facts
    page.locator("#model-plots").screenshot(path=shots / "diagnostics.png")


def test_wide_samples_are_drawn_on_labelled_axes(page, stack, table4, shots):
    page.goto(stack.url + f"/ui/models/{table4}")
    page.locator("#model-title", has_text="version 1").wait_for()
    assert page.locator("#sample-axes").is_visible()
    page.fill("#sample-n", "200")
    page.click("#sample-form button[type=submit]")
    page.wait_for_selector("#sample-plot[data-drawn='200']")
    plot = page.locator("#sample-plot")
    assert (plot.get_attribute("data-x-label"), plot.get_attribute("data-y-label")) == (
        "x1",
        "x2",
    )
    assert len(plot.get_attribute("data-x-ticks").split()) >= 3
    assert len(plot.get_attribute("data-y-ticks").split()) >= 3
    page.locator("#sample-plot").screenshot(path=shots / "samples-4d-canvas.png")
    left, bottom = page.evaluate(MARGIN_INK)
    assert left > 40 and bottom > 40, (left, bottom)  # tick labels and axis titles drawn
    # The view is the samples' robust range, inside their full range.
    samples = stack.client.post(
        f"/v1/models/{table4}/versions/1/sample", json={"num_samples": 200, "seed": 0}
    ).json()["samples"]
    label = plot.get_attribute("aria-label")
    lo, hi = (float(v) for v in re.search(r"x1 from (\S+) to (\S+?),", label).groups())
    column = np.array(samples)[:, 0]
    assert column.min() - 0.2 * np.ptp(column) < lo < np.quantile(column, 0.01)
    assert np.quantile(column, 0.99) < hi < column.max() + 0.2 * np.ptp(column)
    # Other columns on demand, without a new request for samples.
    page.select_option("#sample-y", "3")
    wait_until(page, "() => document.querySelector('#sample-plot').dataset.yLabel === 'x4'")
    assert plot.get_attribute("aria-label").startswith("Scatter of 200 samples, x1 from")
    page.locator("section", has=page.locator("#sample-form")).screenshot(
        path=shots / "samples-4d.png"
    )


def test_a_failed_score_replaces_the_previous_result(page, stack, table4, page_log):
    page_log.allow(422)
    page.goto(stack.url + f"/ui/models/{table4}")
    page.locator("#model-title", has_text="version 1").wait_for()
    page.fill("#score-rows", "a,b,c,d\n1,2,3,4\n0,0,0,0")
    page.click("#score-form button[type=submit]")
    page.locator("#score-summary", has_text="2 rows scored").wait_for()
    assert page.locator("#score-result").is_visible()
    page.fill("#score-rows", "a,b,c,d\n1,2,3,oops")
    page.click("#score-form button[type=submit]")
    page.locator("#score-error", has_text="non-numeric").wait_for()
    assert page.locator("#score-result").is_hidden()


def test_job_page_draws_the_training_curve_live(page, stack, shots):
    spec = {
        "model_name": "console-curve",
        "dataset": {"builtin": "two_moons"},
        "model": {"blocks": 1, "hidden": 8, "depth": 1},
        # val_every left out: a twentieth of the run, 250 iterations
        "training": {"iterations": 5000, "batch_size": 32},
        "plots": False,
    }
    submitted = stack.client.post("/v1/jobs", json=spec)
    assert submitted.status_code in (200, 201, 202), submitted.text
    job_id = submitted.json()["id"]
    try:
        page.goto(stack.url + f"/ui/jobs/{job_id}")
        points = "() => Number(document.querySelector('#job-curve').dataset.points || 0)"
        wait_until(page, f"() => ({points})() >= 2", timeout=120)
        first = page.evaluate(points)
        wait_until(page, f"() => ({points})() > {first}", timeout=120)
        assert page.locator("#job-status").inner_text() == "running"
        curve = page.locator("#job-curve")
        assert curve.get_attribute("data-x-label") == "iteration"
        assert curve.get_attribute("data-y-label") == "NLL (nats per row)"
        assert "trained on the exact NLL" in curve.get_attribute("aria-label")  # 2-D: exact
        page.locator("#job-curve").screenshot(path=shots / "job-curve.png")
    finally:
        stack.client.delete(f"/v1/jobs/{job_id}")
