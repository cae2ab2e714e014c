"""What the web console's scoring form leans on: POST .../log_prob.csv on a large file.

python -m bench run csv_scoring [--set rows=1000000 blocks=5 hidden=32]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.registry import Option, benchmark
from bench.suites.service import served_bench2d


def _peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@benchmark(
    "csv_scoring",
    "POST .../log_prob.csv on a large CSV: rows/s, first byte, server peak memory (real uvicorn)",
    options=[
        Option("rows", "int", 1_000_000, "rows in the CSV (d=2)"),
        Option("blocks", "int", 5, "blocks of the served d=2 model"),
        Option("hidden", "int", 32, "hidden units of the served model"),
        Option("port", "int", 8766, "port of the server"),
        Option("json_batch", "int", 10_000, "rows per JSON log_prob request of the reference run"),
    ],
)
def csv_scoring(opts, ctx) -> dict:
    """Starts a real uvicorn process on a temporary store holding one d=2 CP-Flow, sends it a
    CSV of ``rows`` random rows (exact log_prob) and streams the scored CSV back; reports the
    time to the first byte of the answer (the whole file is parsed and checked first), the total
    time, rows/s, and the server's peak resident memory before and after. The reference is the
    same rows sent as JSON log_prob requests of ``json_batch`` rows, one after another. A few
    rows of the CSV answer are checked against the JSON answer."""
    import httpx

    base = f"http://127.0.0.1:{opts.port}"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(opts.rows, 2)) * np.array([2.0, 0.5]) + 1.0
    path = f"{base}/v1/models/bench2d/log_prob"
    with (
        tempfile.TemporaryDirectory() as tmp,
        served_bench2d(opts.port, opts.blocks, opts.hidden) as server,
    ):
        csv_path = Path(tmp) / "rows.csv"
        np.savetxt(csv_path, x, delimiter=",", header="x,y", comments="", fmt="%.17g")
        rss_before = _peak_rss_mib(server.pid)

        body = csv_path.read_bytes()
        start = time.perf_counter()
        first_byte = None
        chunks = []
        headers = {"Content-Type": "text/csv"}
        with httpx.stream(
            "POST", path + ".csv", content=body, headers=headers, params={"method": "exact"},
            timeout=3600,
        ) as r:  # fmt: skip
            r.raise_for_status()
            for chunk in r.iter_bytes():
                if first_byte is None:
                    first_byte = time.perf_counter() - start
                chunks.append(chunk)
        csv_seconds = time.perf_counter() - start
        rss_after = _peak_rss_mib(server.pid)
        answer = b"".join(chunks).decode().splitlines()

        start = time.perf_counter()
        json_lp = []
        with httpx.Client(timeout=600) as client:
            for s in range(0, opts.rows, opts.json_batch):
                rows = x[s : s + opts.json_batch].tolist()
                resp = client.post(path, json={"inputs": rows, "method": "exact"})
                resp.raise_for_status()
                json_lp.extend(resp.json()["log_prob"])
        json_seconds = time.perf_counter() - start

    picks = np.linspace(0, opts.rows - 1, 50).astype(int)
    csv_lp = np.array([float(answer[1 + i].rsplit(",", 1)[1]) for i in picks])
    max_rel = float(np.max(np.abs(csv_lp - np.array(json_lp)[picks]) / np.abs(csv_lp)))
    return {
        "model": {"dim": 2, "blocks": opts.blocks, "hidden": opts.hidden, "depth": 3},
        "rows": opts.rows,
        "csv_in_mib": round(len(body) / 2**20, 1),
        "csv_out_mib": round(sum(len(c) for c in chunks) / 2**20, 1),
        "csv_first_byte_s": round(first_byte or 0.0, 2),
        "csv_total_s": round(csv_seconds, 2),
        "csv_rows_per_s": round(opts.rows / csv_seconds),
        "json_total_s": round(json_seconds, 2),
        "json_rows_per_s": round(opts.rows / json_seconds),
        "json_batch": opts.json_batch,
        "server_peak_rss_mib_before": rss_before,
        "server_peak_rss_mib_after": rss_after,
        "answer_rows": len(answer) - 1,
        "max_rel_diff_csv_vs_json_50_rows": max_rel,
        "loadavg_1m": os.getloadavg()[0],
    }
