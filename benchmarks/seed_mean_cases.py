"""Per-patient metrics averaged over training seeds, as a ``cases.csv`` that
``benchmarks/paired_from_cases.py`` pairs like any grid's.

A cross-validated grid row is ONE trained network per fold; a seed effect shared by a fold's test
patients looks like a method effect in the patient bootstrap. With a second seed of two rows
(``benchmarks/rerun_seeds.py`` writes ``SEED_CHECK/ROW/seedS/foldF/eval/evaluation/<modality>/
metrics.csv``), comparing the rows on each patient's mean over both seeds halves that noise.

    python benchmarks/seed_mean_cases.py cases.csv --seed-check seed-check \
        --rows semicml-prel+aug,cps+aug --out cases-seed-mean.csv
    python benchmarks/paired_from_cases.py cases-seed-mean.csv --reference "semicml-prel+aug (seeds 0+1)" \
        --others "cps+aug (seeds 0+1)"

Rows without a second seed for every fold are refused (a mean over unequal seed sets would not pair).
``--seed-check`` may be given several times (a variant's runs kept apart from the grid's seed
check); ``--seeds 0,1`` averages only those seeds, so two rows compare on the same seeds.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

METRICS = ("dice", "jaccard", "hd95", "asd", "precision", "sensitivity", "components", "pred_voxels", "ref_voxels")


def seed_rows(seed_check: Path, row: str) -> list[dict[str, str]]:
    """The per-patient rows of every retrained seed of ``row``: method, modality, seed, fold, case, metrics."""
    out = []
    for metrics in sorted((seed_check / row).glob("seed*/fold*/eval/evaluation/*/metrics.csv")):
        modality, fold, seed = metrics.parent.name, metrics.parents[3].name, metrics.parents[4].name
        for r in csv.DictReader(metrics.open()):
            out.append({"method": row, "modality": modality, "seed": seed[4:], "fold": fold[4:], **r})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", type=Path, help="the grid's cases.csv (seed 0 of every row)")
    ap.add_argument("--seed-check", type=Path, action="append", required=True,
                    help="a folder of retrained seeds (ROW/seedS/foldF/...); repeat to read several")
    ap.add_argument("--rows", required=True, help="comma-separated grid rows")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds to average (default: every seed found)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = args.rows.split(",")
    wanted = None if args.seeds is None else set(args.seeds.split(","))
    grid = [r for r in csv.DictReader(args.cases.open()) if r["method"] in rows]
    retrained = [r for folder in args.seed_check for row in rows for r in seed_rows(folder, row)]
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for r in grid + retrained:
        if wanted is None or r["seed"] in wanted:
            groups[(r["method"], r["modality"], r["case"])].append(r)
    seeds = {row: sorted({r["seed"] for (m, _, _), rs in groups.items() if m == row for r in rs}) for row in rows}
    out = []
    for (method, modality, case), members in sorted(groups.items()):
        if sorted(r["seed"] for r in members) != seeds[method]:
            raise SystemExit(f"{method} {modality} {case}: seeds {sorted(r['seed'] for r in members)}, "
                             f"the row has {seeds[method]}; every patient needs every seed")
        label = f"{method} (seeds {'+'.join(seeds[method])})"
        mean = {k: sum(float(r[k]) for r in members) / len(members) for k in METRICS}
        out.append({"method": label, "modality": modality, "seed": 0, "fold": members[0]["fold"], "case": case,
                    **mean})
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "modality", "seed", "fold", "case", *METRICS])
        w.writeheader()
        w.writerows(out)
    print(f"{len(out)} rows; seeds per row: {seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
