"""Collect bench/results/conditional_vae_*.json into one table: test -ELBO per posterior and
seed, and the per-seed margin of each CP-Flow posterior over the Gaussian one (negative =
CP-Flow better). Usage: python bench/conditional_vae_table.py. Prints JSON."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(RESULTS.glob("conditional_vae_*.json")):
        d = json.loads(path.read_text())
        runs.setdefault(d["posterior"], {})[d["seed"]] = d["test"]
    table = {}
    for post, by_seed in sorted(runs.items()):
        latent = post[post.rindex("_z") :] if "_z" in post else ""
        gauss = runs.get("gaussian" + latent, {})
        vals = [r["neg_elbo"] for r in by_seed.values()]
        row = {
            "seeds": sorted(by_seed),
            "neg_elbo": {s: round(r["neg_elbo"], 3) for s, r in sorted(by_seed.items())},
            "iwae_nll": {s: round(r["iwae_nll"], 3) for s, r in sorted(by_seed.items())},
            "neg_elbo_mean": statistics.fmean(vals),
            "neg_elbo_sd_over_seeds": statistics.stdev(vals) if len(vals) > 1 else None,
        }
        if not post.startswith("gaussian"):
            margins = {
                s: round(r["neg_elbo"] - gauss[s]["neg_elbo"], 3)
                for s, r in sorted(by_seed.items())
                if s in gauss
            }
            row["margin_vs_gaussian_same_seed"] = margins
            if margins:
                row["margin_mean"] = statistics.fmean(margins.values())
        table[post] = row
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
