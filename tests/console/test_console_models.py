"""The console's model pages in a real headless Chromium against a live service (auth on):
the key entered once, the models list, a model page with its plots and version picker,
scoring a CSV (downloaded values equal the API's log_prob), sampling, transport (forward and
back), errors shown."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest

from tests.console.console_stack import API_KEY, assert_labelled, wait_until

COLOURS = """() => { const c = document.querySelector('#sample-plot').getContext('2d');
    const d = c.getImageData(0, 0, 480, 480).data; const seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
    return seen.size; }"""


def test_key_entered_once_opens_models_and_plots(bare_page, stack, page_log, shots):
    page = bare_page
    page_log.allow(401)  # the first visit, before the key is entered, is refused by the API
    page.goto(stack.url + "/ui")
    alert = page.locator("#auth-alert")
    alert.wait_for()
    assert "missing Authorization header" in alert.inner_text()
    # Keyboard only: focus the key field, type, Enter submits the form.
    page.wait_for_selector("#key-form button[type=submit]:enabled")
    page.focus("#api-key")
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    row = page.locator("#models tbody tr", has_text="demo")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[:4] == ["demo", "2", "2", "2.71"]  # name, latest version, dim, test NLL
    assert page.locator("#key-state").inner_text() == "key set for this tab"
    assert page.locator("#auth-alert").is_hidden()
    assert_labelled(page)
    page.screenshot(path=shots / "models.png", full_page=True)

    row.get_by_role("link", name="demo").click()
    page.wait_for_url("**/ui/models/demo")
    plot = page.get_by_role("img", name="density plot of demo version 2")
    plot.wait_for()
    wait_until(page, "img => img.complete && img.naturalWidth > 0", plot.element_handle())
    assert page.locator("#model-title").inner_text() == "demo · version 2"
    metrics = page.locator("#model-metrics").inner_text()
    assert "Test NLL\n2.71 nats per row" in metrics  # named, with units
    assert "Dimension" in page.locator("#model-summary").inner_text()
    assert_labelled(page)
    page.screenshot(path=shots / "model.png", full_page=True)

    # The version picker loads version 1 (its own metrics, no plots); the key stays out of URLs.
    page.select_option("#version-picker", "1")
    page.get_by_role("button", name="Open version").click()
    page.wait_for_url("**/ui/models/demo?version=1")
    wait_until(page, "() => document.querySelector('#model-title').textContent.endsWith(' 1')")
    assert page.locator("#model-title").inner_text() == "demo · version 1"
    page.get_by_text("No plots stored with this version.").wait_for()
    assert "2.9" in page.locator("#model-metrics").inner_text()


def test_wrong_key_is_refused(bare_page, stack, page_log):
    page = bare_page
    page_log.allow(401)
    page.goto(stack.url + "/ui")
    page.fill("#api-key", "not-the-key")
    page.click("text=Use key")
    page.wait_for_load_state()
    alert = page.locator("#auth-alert")
    alert.wait_for()
    assert "The API refused the key: invalid API key" in alert.inner_text()
    assert page.locator("#api-key").get_attribute("aria-invalid") == "true"
    assert page.locator("#models tbody").inner_text() == "Loading…"  # no data shown
    # Forgetting the key returns to the no-key state.
    page.click("#key-forget")
    page.wait_for_load_state()
    page.locator("#key-state", has_text="no key set").wait_for()


def _rows_csv(x: np.ndarray) -> str:
    return "x,y\n" + "".join(f"{a!r},{b!r}\n" for a, b in x.tolist())


def test_scored_csv_download_equals_api(page, stack, tmp_path, shots):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1000, 2)) * 1.5 + 1.0
    upload = tmp_path / "points.csv"
    upload.write_text(_rows_csv(x))
    page.goto(stack.url + "/ui/models/demo")
    page.locator("#model-title", has_text="version 2").wait_for()
    page.set_input_files("#score-file", str(upload))
    page.select_option("#score-method", "exact")
    page.click("#score-form button[type=submit]")
    summary = page.locator("#score-summary")
    summary.wait_for()
    assert summary.inner_text() == ("1000 rows scored with method exact; the first 100 are shown.")
    assert page.locator("#score-table tbody tr").count() == 100
    page.locator("#score-h").scroll_into_view_if_needed()
    page.screenshot(path=shots / "scoring.png")
    with page.expect_download() as info:
        page.click("#score-download")
    download = info.value
    assert download.suggested_filename == "demo-v2-scored.csv"
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text())))
    assert rows[0] == ["x", "y", "log_prob"]
    got = np.array(rows[1:], dtype=np.float64)
    assert got.shape == (1000, 3)
    np.testing.assert_array_equal(got[:, :2], x)
    api = stack.client.post(
        "/v1/models/demo/versions/2/log_prob", json={"inputs": x.tolist(), "method": "exact"}
    )
    assert api.status_code == 200, api.text
    # Same model, same rows; the two routes may batch rows differently, and float32 round-off
    # between batch compositions stays well under 1e-5 relative.
    np.testing.assert_allclose(got[:, 2], api.json()["log_prob"], rtol=1e-5, atol=1e-5)


def test_pasted_rows_are_scored_with_slq_stderr(page, stack):
    page.goto(stack.url + "/ui/models/demo")
    page.locator("#model-title", has_text="version 2").wait_for()
    page.fill("#score-rows", "0.5,0.5\n1.0,-1.0\n2.0,2.0")
    page.select_option("#score-method", "slq")
    page.fill("#score-seed", "3")
    page.click("#score-form button[type=submit]")
    page.locator("#score-summary", has_text="3 rows scored with method slq").wait_for()
    header = page.locator("#score-table thead th").all_inner_texts()
    assert header == ["x1", "x2", "log_prob", "stderr"]
    assert page.locator("#score-table tbody tr").count() == 3


def test_bad_csv_shows_the_error(page, stack, page_log):
    page_log.allow(422)
    page.goto(stack.url + "/ui/models/demo")
    page.locator("#model-title", has_text="version 2").wait_for()
    page.fill("#score-rows", "x,y\n1,2\n3,oops")
    page.click("#score-form button[type=submit]")
    error = page.locator("#score-error")
    error.wait_for()
    text = error.inner_text()
    assert (
        "data row 2, column 2 ('y') has a non-numeric value 'oops'" in text
        and "invalid_csv" in text
    )
    assert page.locator("#score-result").is_hidden()
    # Nothing to score: said before any request.
    page.fill("#score-rows", "")
    page.click("#score-form button[type=submit]")
    page.locator("#score-error", has_text="Paste rows or choose a CSV file").wait_for()


def test_samples_shown_with_scatter_over_density(page, stack, shots):
    page.goto(stack.url + "/ui/models/demo")
    page.locator("#model-title", has_text="version 2").wait_for()
    page.fill("#sample-n", "300")
    page.fill("#sample-seed", "11")
    page.wait_for_selector("#sample-form button[type=submit]:enabled")
    page.focus("#sample-n")
    page.keyboard.press("Enter")  # submits the sampling form from the keyboard
    page.wait_for_selector("#sample-plot[data-drawn='300']")
    summary = page.locator("#sample-summary").inner_text()
    assert summary.startswith("300 samples;") and "seed 11" in summary
    first = [
        float(v)
        for v in page.locator("#sample-table tbody tr").first.locator("td").all_inner_texts()
    ]
    api = stack.client.post(
        "/v1/models/demo/versions/2/sample", json={"num_samples": 300, "seed": 11}
    )
    assert api.status_code == 200, api.text
    # The table shows 6 significant digits of the same seeded samples.
    np.testing.assert_allclose(first, api.json()["samples"][0], rtol=1e-5, atol=1e-6)
    label = page.locator("#sample-plot").get_attribute("aria-label")
    assert label.startswith("Scatter of 300 samples over the model density")
    # The canvas holds a picture: density colours differ across it.
    colours = page.evaluate(COLOURS)
    assert colours > 20
    page.locator("section", has=page.locator("#sample-form")).screenshot(
        path=shots / "samples.png"
    )


def _table(page, selector: str) -> np.ndarray:
    rows = page.locator(f"{selector} tbody tr").all()
    return np.array([[float(v) for v in r.locator("td").all_inner_texts()] for r in rows])


def test_rows_transported_forward_and_back(page, stack, shots):
    page.goto(stack.url + "/ui/models/demo")
    page.locator("#model-title", has_text="version 2").wait_for()
    rows = [[0.5, 0.5], [1.0, -1.0], [2.0, 2.0]]
    # A row that is not numbers is named before any request.
    page.fill("#transport-rows", "x,y\n1,2\n3,oops")
    page.click("#transport-form button[type=submit]")
    page.locator("#transport-error", has_text="Row 2 has a non-numeric value 'oops'").wait_for()
    assert page.locator("#transport-tolerance").is_disabled()  # forward: no tolerance

    page.fill("#transport-rows", "x,y\n" + "\n".join(f"{a},{b}" for a, b in rows))
    page.click("#transport-form button[type=submit]")
    page.locator("#transport-summary", has_text="3 rows mapped forward (x to z).").wait_for()
    assert page.locator("#transport-error").is_hidden()
    header = page.locator("#transport-table thead th").all_inner_texts()
    assert header == ["x1", "x2", "z1", "z2"]
    shown = _table(page, "#transport-table")
    api = stack.client.post("/v1/models/demo/versions/2/transport", json={"inputs": rows})
    assert api.status_code == 200, api.text
    z = api.json()["outputs"]
    # The table shows 7 significant digits of the API's numbers.
    np.testing.assert_allclose(shown[:, :2], rows)
    np.testing.assert_allclose(shown[:, 2:], z, rtol=1e-6, atol=1e-7)

    # Inverse of those z (all their digits pasted) comes back to the rows: an independent
    # check of the round trip, to the solver's tolerance (float32 model: atol 1e-4).
    page.fill("#transport-rows", "\n".join(",".join(repr(v) for v in row) for row in z))
    page.select_option("#transport-direction", "inverse")
    page.fill("#transport-tolerance", "1e-5")
    page.click("#transport-form button[type=submit]")
    summary = page.locator("#transport-summary", has_text="mapped inverse")
    summary.wait_for()
    text = summary.inner_text()
    assert text.startswith("3 rows mapped inverse (z to x); largest residual max|f(x) - z| ")
    assert "(all converged)" in text
    back = _table(page, "#transport-table")
    np.testing.assert_allclose(back[:, 2:], rows, atol=1e-4)
    inverse = stack.client.post(
        "/v1/models/demo/versions/2/transport",
        json={"inputs": z, "direction": "inverse", "tolerance": 1e-5},
    ).json()
    assert inverse["converged"] and inverse["max_residual"] <= 1e-5
    residual = float(re.search(r"max\|f\(x\) - z\| (\S+) ", text).group(1))
    assert residual == pytest.approx(inverse["max_residual"], rel=5e-3)  # 3 digits shown
    assert_labelled(page)
    page.locator("section", has=page.locator("#transport-form")).screenshot(
        path=shots / "transport.png"
    )


def test_conditional_rows_take_their_context_from_the_last_column(page, stack):
    page.goto(stack.url + "/ui/models/cond")
    page.locator("#model-title", has_text="cond · version 1").wait_for()
    page.fill("#transport-rows", "0.5,0.5")
    page.click("#transport-form button[type=submit]")
    message = "Row 1 has 2 values; this model takes 3 (2 inputs, then 1 context values)."
    page.locator("#transport-error", has_text=message).wait_for()
    rows = [[0.5, 0.5, -0.5], [0.5, 0.5, 0.5], [1.0, -1.0, 0.0]]
    page.fill("#transport-rows", "\n".join(",".join(map(str, r)) for r in rows))
    page.click("#transport-form button[type=submit]")
    page.locator("#transport-summary", has_text="3 rows mapped forward").wait_for()
    shown = _table(page, "#transport-table")
    body = {"inputs": [r[:2] for r in rows], "context": [r[2:] for r in rows]}
    api = stack.client.post("/v1/models/cond/versions/1/transport", json=body)
    assert api.status_code == 200, api.text
    z = np.array(api.json()["outputs"])
    np.testing.assert_allclose(shown[:, 2:], z, rtol=1e-6, atol=1e-7)
    assert not np.allclose(z[0], z[1], atol=1e-3)  # same x, other context: another z


def test_image_samples_are_drawn_as_tiles(page, stack):
    page.goto(stack.url + "/ui/models/tiles")
    page.locator("#model-title", has_text="tiles · version 1").wait_for()
    assert "(image 1×4×4)" in page.locator("#model-summary").inner_text()
    page.fill("#sample-n", "8")
    page.click("#sample-form button[type=submit]")
    page.wait_for_selector("#sample-plot[data-drawn='8']")
    label = page.locator("#sample-plot").get_attribute("aria-label")
    assert label.startswith("8 image samples (1×4×4), scaled from")
    assert page.locator("#sample-table").is_hidden()
    assert page.evaluate(COLOURS) > 5  # grey levels of 8 x 16 pixels, not a blank canvas
    assert page.locator("#sample-summary").inner_text().startswith("8 samples;")


def test_model_page_is_readable_400px_wide(narrow_page, stack, shots):
    page = narrow_page
    page.goto(stack.url + "/ui/models/demo")
    page.locator("#model-title", has_text="version 2").wait_for()
    page.get_by_role("img", name="density plot of demo version 2").wait_for()
    # Keyboard: the first Tab reaches the skip link, Enter moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # Nothing wider than the screen: no sideways scrolling of the page itself.
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    page.screenshot(path=shots / "model-400px.png", full_page=True)
