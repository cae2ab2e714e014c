"""The roofline benchmark's FLOP count: FlopCounterMode's, with the in-place products added."""

from __future__ import annotations

import torch

from bench.suites.core import count_flops, time_both_clocks


def test_count_flops_adds_the_in_place_matrix_products_flop_counter_mode_skips():
    a, b = torch.randn(5, 3), torch.randn(3, 4)
    A, B = torch.randn(2, 5, 3), torch.randn(2, 3, 4)

    def work():
        torch.zeros(5, 4).addmm_(a, b)  # skipped by FlopCounterMode
        torch.zeros(2, 5, 4).baddbmm_(A, B)  # skipped by FlopCounterMode
        torch.mm(a, b)  # counted by it

    got = count_flops(work)
    mm = 2 * 5 * 3 * 4
    assert got["counted"] == mm
    assert got["flops"] == mm + mm + 2 * mm


def test_time_both_clocks_reports_medians_of_each_way():
    calls = {"a": 0, "b": 0}

    def way(name):
        def run():
            calls[name] += 1

        return run

    timed = time_both_clocks({"a": way("a"), "b": way("b")}, 3)
    assert calls == {"a": 4, "b": 4}  # one warm-up call each, then the repeats
    assert set(timed) == {"a", "b"}
    assert all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in timed.values())
