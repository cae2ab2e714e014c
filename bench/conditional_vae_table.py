"""Collect conditional_vae_*.json runs (bench/conditional_vae.py) into one table.

Per run (file name less its ``_s<seed>``) and seed: negative ELBO on each evaluated split, and
for a CP-Flow posterior its PAIRED margin over the Gaussian-posterior run of the same setting
and seed (negative = CP-Flow better): the mean over images of the per-image difference of the
two negative ELBOs, with its standard error over images. Both runs evaluate the same images
with the same draws, so the paired error is far smaller than either mean's. Over seeds: the
mean margin, its image-level error sqrt(sum se^2) / k and the sd of the per-seed margins.

Usage: python bench/conditional_vae_table.py [--dir bench/results] [--split test]
       [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean, stderr) over images of a_i - b_i."""
    if len(a) != len(b):
        raise ValueError("runs evaluated different images")
    d = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


def load(directory: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(directory.glob("conditional_vae_*.json")):
        d = json.loads(path.read_text())
        if "seed" not in d or "posterior" not in d:
            continue  # e.g. a table written next to the runs
        name = re.sub(r"_s\d+$", "", path.stem).removeprefix("conditional_vae_")
        runs.setdefault(name, {})[d["seed"]] = d
    return runs


def build(runs: dict[str, dict[int, dict]], split: str) -> dict:
    gauss: dict[tuple[str, int], dict] = {}
    for by_seed in runs.values():
        for seed, d in by_seed.items():
            if d["posterior"].startswith("gaussian") and split in d:
                gauss.setdefault((d.get("setting", ""), seed), d)
    table = {}
    for name, by_seed in sorted(runs.items()):
        rows = {}
        for seed, d in sorted(by_seed.items()):
            if split not in d:
                continue
            r = d[split]
            row = {"neg_elbo": round(r["neg_elbo"], 3), "stderr": round(r["neg_elbo_stderr"], 3)}
            if "iwae_nll" in r:
                row["iwae_nll"] = round(r["iwae_nll"], 3)
            ref = gauss.get((d.get("setting", ""), seed))
            if not d["posterior"].startswith("gaussian") and ref is not None:
                if "per_image_neg_elbo" in r:
                    m, se = paired(r["per_image_neg_elbo"], ref[split]["per_image_neg_elbo"])
                    row["margin"], row["margin_stderr"] = round(m, 4), round(se, 4)
                else:
                    row["margin"] = round(r["neg_elbo"] - ref[split]["neg_elbo"], 4)
                row["gaussian_neg_elbo"] = round(ref[split]["neg_elbo"], 3)
            rows[seed] = row
        if not rows:
            continue
        any_run = next(iter(by_seed.values()))
        entry = {
            "posterior": any_run["posterior"],
            "setting": any_run.get("setting"),
            "flow": any_run.get("flow"),
            "per_seed": rows,
            "neg_elbo_mean": round(statistics.fmean(r["neg_elbo"] for r in rows.values()), 3),
        }
        margins = [r["margin"] for r in rows.values() if "margin" in r]
        if margins:
            entry["margin_mean"] = round(statistics.fmean(margins), 4)
            ses = [r["margin_stderr"] for r in rows.values() if "margin_stderr" in r]
            if len(ses) == len(margins):
                entry["margin_mean_stderr"] = round(
                    math.sqrt(sum(s * s for s in ses)) / len(ses), 4
                )
            if len(margins) > 1:
                entry["margin_sd_over_seeds"] = round(statistics.stdev(margins), 4)
        table[name] = entry
    return table


def markdown(table: dict, split: str) -> str:
    lines = [
        f"| run | seed | {split} -ELBO | IWAE | margin vs Gaussian (paired, +- se) |",
        "|---|---|---|---|---|",
    ]
    for name, e in table.items():
        for seed, r in e["per_seed"].items():
            margin = ""
            if "margin" in r:
                margin = f"{r['margin']:+.3f}"
                if "margin_stderr" in r:
                    margin += f" +- {r['margin_stderr']:.3f}"
            lines.append(
                f"| {name} | {seed} | {r['neg_elbo']:.3f} +- {r['stderr']:.3f} |"
                f" {r.get('iwae_nll', '')} | {margin} |"
            )
        if "margin_mean" in e:
            s = f"{e['margin_mean']:+.3f}"
            if "margin_mean_stderr" in e:
                s += f" +- {e['margin_mean_stderr']:.3f}"
            if "margin_sd_over_seeds" in e:
                s += f" (sd over seeds {e['margin_sd_over_seeds']:.3f})"
            lines.append(f"| {name} | mean | {e['neg_elbo_mean']:.3f} | | {s} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, default=RESULTS)
    p.add_argument("--split", default="test")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    table = build(load(args.dir), args.split)
    text = json.dumps(table, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(table, args.split))
    print(text)


if __name__ == "__main__":
    main()
