"""Calibrated scores in the console (real headless Chromium, live service): percentiles and
outlier flags in the scoring table, sorted least likely first, the scored rows drawn against the
held-out score histogram; the drift section; a version without held-out scores says so."""

from __future__ import annotations

import numpy as np

from tests.console.console_stack import assert_labelled


def test_scoring_table_sorted_by_percentile_with_histogram(page, stack, shots):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 2)) + 1.0  # the demo's data: N(1, I)
    x[[20, 90]] = [[9.0, -8.0], [12.0, 12.0]]  # two rows far from it
    page.goto(stack.url + "/ui/models/demo")
    page.locator("#model-title", has_text="version 2").wait_for()
    page.check("#score-percentile")
    page.fill("#score-level", "0.02")
    page.fill("#score-rows", "x,y\n" + "\n".join(f"{a!r},{b!r}" for a, b in x.tolist()))
    page.click("#score-form button[type=submit]")
    summary = page.locator("#score-summary")
    summary.wait_for()
    header = page.locator("#score-table thead th").all_inner_texts()
    assert header == ["x", "y", "log_prob", "percentile", "outlier"]
    api = stack.client.post(
        "/v1/models/demo/versions/2/log_prob",
        json={"inputs": x.tolist(), "method": "auto", "outlier_level": 0.02},
    ).json()
    flagged = sum(api["outlier"])
    assert f"{flagged} flagged as outliers (percentile under 0.02)" in summary.inner_text()
    page.select_option("#score-sort", "percentile")
    first = page.locator("#score-table tbody tr").first.locator("td").all_inner_texts()
    got = [
        float(v) for v in page.locator("#score-table tbody tr td:nth-child(4)").all_inner_texts()
    ]
    assert got == sorted(got) and len(got) == 100
    assert float(first[0]) in (9.0, 12.0) and float(first[3]) == 0.0 and first[4] == "1"
    np.testing.assert_allclose(got, sorted(api["percentile"])[:100], rtol=1e-6, atol=1e-7)
    page.wait_for_selector("#score-hist[data-drawn='30']")
    assert "150 scored rows" in page.locator("#score-hist").get_attribute("aria-label")
    assert_labelled(page)
    page.locator("#score-h").scroll_into_view_if_needed()
    page.screenshot(path=shots / "scoring_percentiles.png")

    # The drift section follows the version's window (this page's rows included).
    page.click("#drift-refresh")
    page.wait_for_selector("#drift-hist[data-drawn='30']")
    facts = page.locator("#drift-facts").inner_text()
    assert "shared by every replica" in facts and "KS statistic" in facts
    drift = stack.client.get("/v1/models/demo/versions/2/drift").json()
    assert drift["window"]["rows"] >= 150
    page.locator("#drift-h").scroll_into_view_if_needed()
    page.screenshot(path=shots / "drift.png")


def test_version_without_held_out_scores(page, stack):
    page.goto(stack.url + "/ui/models/demo?version=1")
    page.locator("#model-title", has_text="version 1").wait_for()
    page.locator("#drift-facts", has_text="published without held-out scores").wait_for()
    assert page.locator("#score-calibration").is_hidden()
    assert page.locator("#drift-refresh").is_hidden()
