"""Aggregate ``resample_brats.py`` results of the low-resolution comparison over seeds (issue 10).

Reads ``results.json`` files named on the command line as ``P:SEED=PATH`` and prints, per
setting P, the test Dice of each modality's network on each grid as mean and spread over
seeds, and the change against the original grid per seed; writes the table as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(spec: str) -> tuple[str, int, dict]:
    key, path = spec.split("=", 1)
    p, seed = key.split(":")
    return p, int(seed), json.loads(Path(path).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="P:SEED=path/to/results.json")
    ap.add_argument("--out", type=Path, required=True, help="JSON table to write")
    args = ap.parse_args()
    dice: dict = defaultdict(dict)  # (P, modality, grid) -> seed -> mean Dice over the test cases
    for spec in args.results:
        p, seed, res = load(spec)
        for row in res["rows"]:
            if row["mode"] == "resampled":
                dice[(p, row["modality"], row["grid"])][seed] = row["dice_mean"]
    table = []
    for (p, mod, grid), per_seed in sorted(dice.items()):
        base = dice.get((p, mod, "original"), {})
        deltas = [per_seed[s] - base[s] for s in per_seed if s in base]
        table.append({"p": p, "modality": mod, "grid": grid, "seeds": sorted(per_seed),
                      "dice_per_seed": per_seed, "dice_mean": round(statistics.mean(per_seed.values()), 4),
                      "dice_sd": round(statistics.stdev(per_seed.values()), 4) if len(per_seed) > 1 else None,
                      "change_vs_original_per_seed": [round(d, 4) for d in deltas],
                      "worst_change": round(min(deltas), 4) if deltas else None})
    print(f"{'P':>5} {'mod':>5} {'grid':>9} {'Dice mean':>9} {'sd':>6}  per seed / change vs original")
    for r in table:
        sd = "" if r["dice_sd"] is None else f"{r['dice_sd']:.3f}"
        seeds = " ".join(f"{r['dice_per_seed'][s]:.3f}" for s in r["seeds"])
        ch = " ".join(f"{d:+.3f}" for d in r["change_vs_original_per_seed"]) if r["grid"] != "original" else ""
        print(f"{r['p']:>5} {r['modality']:>5} {r['grid']:>9} {r['dice_mean']:9.3f} {sd:>6}  {seeds}  {ch}")
    args.out.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
