"""glibc malloc settings for a serving process: exact log_prob with and without them.

A service scores batch after batch; each exact log_prob allocates (n, d, d) Hessians of a few MB.
With glibc's defaults such blocks are mmap-ed and unmapped again (or the heap top is trimmed)
on every call, so every call pays fresh page faults. MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_
THRESHOLD_ keep them in the heap (the process keeps its high-water mark instead of giving it
back). The Dockerfiles and scripts/up.sh set the values printed here as ``tuned``.

Each way runs in its own process (glibc reads these variables at start), alternating a, b,
a, b; prints one JSON object with the median seconds per call and the ratio.

    .venv/bin/python bench/malloc_tuning.py [--rounds 3] [--calls 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

TUNED = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}
_GLIBC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_CHILD = """
import json, statistics, sys, time
import torch
sys.path.insert(0, {bench!r})
from core_bench import make_model
torch.set_num_threads({threads})
flow, x = make_model(43, "cpu")
times = []
with torch.no_grad():
    flow.log_prob(x, "exact")
    for _ in range({calls}):
        t0 = time.perf_counter()
        flow.log_prob(x, "exact")
        times.append(time.perf_counter() - t0)
print(json.dumps(statistics.median(times)))
"""


def _run(env_extra: dict[str, str], calls: int, threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in _GLIBC_VARS}
    env.update(env_extra)
    code = _CHILD.format(bench=str(Path(__file__).resolve().parent), calls=calls, threads=threads)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    default, tuned = [], []
    for _ in range(args.rounds):
        default.append(_run({}, args.calls, args.threads))
        tuned.append(_run(TUNED, args.calls, args.threads))
    d, t = statistics.median(default), statistics.median(tuned)
    print(
        json.dumps(
            {
                "bench": "malloc_tuning",
                "workload": "exact log_prob, d=43, batch 1024, 5 blocks, ICNN 3 x 64",
                "threads": args.threads,
                "tuned_env": TUNED,
                "default_s": d,
                "tuned_s": t,
                "speedup": d / t,
                "default_runs_s": default,
                "tuned_runs_s": tuned,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
