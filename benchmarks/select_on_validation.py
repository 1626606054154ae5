"""Can a cross-validation's validation patients choose the recipe? A check on finished grid runs.

Every per-run choice semicml makes at training end (the checkpoint, the PReL teacher, the
post-processing, the fused prediction's networks) is made on the run's validation patients, 2 per
fold in the committed CV grids. This asks whether those patients can also rank whole recipes: per
fold and modality, the row with the best validation Dice (``run.json`` ``best_val``, the score
that selected the checkpoint) is "chosen", and its test patients' 3D Dice is what a user who
chose on validation would get. Reported per modality:

* the validation-chosen mean test Dice against every fixed row and the fold oracle (the row
  best on the test patients, i.e. an upper bound nobody can reach honestly);
* Spearman's rank correlation between validation and test Dice over the rows within each fold
  (mean over folds): near 1 means validation ranks recipes as the test does, near 0 means it
  cannot tell them apart.

    python benchmarks/select_on_validation.py benchmarks/results/brats18-cv-2mm \\
        --out select-on-validation.json --md select-on-validation.md [--seed 0] [--rows a,b,...]

Reads run.json and eval/evaluation/<modality>/metrics.csv of RESULTS/runs/<row>/seed<S>/fold<K>;
trains and predicts nothing. Rows at another labelled fraction than most (the 100% upper bound)
are left out unless named in --rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def read_runs(results: Path, seed: int, rows: list[str] | None) -> dict[str, dict[int, dict]]:
    """row -> fold -> {"fraction", "val": {modality: dice}, "test": {modality: [per-case Dice]}}."""
    runs: dict[str, dict[int, dict]] = {}
    base = results / "runs" if (results / "runs").is_dir() else results  # a grid, or a rerun_seeds.py folder
    for fold_dir in sorted(base.glob(f"*/seed{seed}/fold*")):
        row = fold_dir.parent.parent.name
        if rows is not None and row not in rows:
            continue
        info_path = fold_dir / "run.json"
        if not info_path.is_file():
            continue
        info = json.loads(info_path.read_text())
        test = {}
        for modality in info["modalities"]:
            metrics = fold_dir / "eval" / "evaluation" / modality / "metrics.csv"
            if metrics.is_file():
                with open(metrics, newline="") as fh:
                    test[modality] = [float(r["dice"]) for r in csv.DictReader(fh)]
        val = {m: float(v["dice"]) for m, v in (info.get("best_val") or {}).items() if m in test}
        runs.setdefault(row, {})[int(fold_dir.name.removeprefix("fold"))] = {
            "fraction": float(info["labeled"]["fraction"]), "val": val, "test": test}
    return runs


def spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3:
        return None
    rho = spearmanr(xs, ys).statistic
    return None if rho != rho else float(rho)  # NaN when a column is constant


def analyse(runs: dict[str, dict[int, dict]]) -> dict:
    folds = sorted(set.union(*(set(f) for f in runs.values())))
    runs = {r: f for r, f in runs.items() if set(f) == set(folds)}  # rows missing a fold cannot be pooled
    modalities = sorted(set.intersection(*(set(runs[r][f]["test"]) for r in runs for f in folds)))
    out: dict = {"rows": sorted(runs), "folds": folds, "modalities": {}}
    for modality in modalities:
        fixed = {r: [d for f in folds for d in runs[r][f]["test"][modality]] for r in runs}
        chosen, oracle, picks, rhos = [], [], [], []
        for f in folds:
            val = {r: runs[r][f]["val"][modality] for r in runs}
            test = {r: statistics.mean(runs[r][f]["test"][modality]) for r in runs}
            pick = max(runs, key=lambda r: (val[r], r))
            best = max(runs, key=lambda r: (test[r], r))
            chosen += runs[pick][f]["test"][modality]
            oracle += runs[best][f]["test"][modality]
            rank = spearman([val[r] for r in runs], [test[r] for r in runs])
            rhos.append(rank)
            picks.append({"fold": f, "chosen": pick, "val_dice": val[pick], "test_dice": test[pick],
                          "test_best": best, "test_best_dice": test[best], "spearman": rank})
        means = {r: statistics.mean(v) for r, v in fixed.items()}
        out["modalities"][modality] = {
            "validation_chosen": statistics.mean(chosen), "fold_oracle": statistics.mean(oracle),
            "fixed": dict(sorted(means.items(), key=lambda kv: -kv[1])),
            "rank_of_validation_chosen": 1 + sum(v > statistics.mean(chosen) for v in means.values()),
            "spearman_mean": (statistics.mean([r for r in rhos if r is not None])
                              if any(r is not None for r in rhos) else None),
            "per_fold": picks}
    return out


def markdown(result: dict, results: Path, seed: int) -> str:
    n_rows = len(result["rows"])
    lines = [f"# Choosing the recipe on the validation patients ({results.name}, seed {seed})", "",
             f"{n_rows} rows x folds {result['folds']}; per fold and modality the row with the best validation "
             "Dice (`run.json` `best_val`) is chosen; test: 3D Dice on the fold's test patients, pooled over "
             "the folds. Fold oracle: the row best on each fold's test patients (not reachable honestly). "
             "Spearman: rank correlation of validation and test Dice over the rows within a fold, mean "
             "over folds. The validation Dice is the best of the run's validations (the one that selected "
             "its checkpoint), so it flatters noisy rows.", ""]
    for modality, r in result["modalities"].items():
        rho = "n/a" if r["spearman_mean"] is None else f"{r['spearman_mean']:+.2f}"
        lines += [f"## {modality}", "",
                  f"Validation-chosen: **{r['validation_chosen']:.4f}** (rank {r['rank_of_validation_chosen']} "
                  f"of {n_rows + 1} among the fixed rows and itself); fold oracle {r['fold_oracle']:.4f}; "
                  f"Spearman {rho}.", "",
                  "| fold | chosen on validation | val Dice | test Dice | best on test | its test Dice | Spearman |",
                  "|---:|---|---:|---:|---|---:|---:|"]
        for p in r["per_fold"]:
            s = "n/a" if p["spearman"] is None else f"{p['spearman']:+.2f}"
            lines.append(f"| {p['fold']} | {p['chosen']} | {p['val_dice']:.3f} | {p['test_dice']:.3f} | "
                         f"{p['test_best']} | {p['test_best_dice']:.3f} | {s} |")
        lines += ["", "| fixed row | test Dice |", "|---|---:|"]
        lines += [f"| {row} | {dice:.4f} |" for row, dice in r["fixed"].items()]
        counts = Counter(p["chosen"] for p in r["per_fold"])
        lines += ["", "Chosen: " + ", ".join(f"{k} ({v}x)" for k, v in counts.most_common()), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a CV grid's results folder (holding runs/<row>/seed<S>/fold<K>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default=None, help="comma-separated rows (default: every row at the usual fraction)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    runs = read_runs(args.results, args.seed, args.rows.split(",") if args.rows else None)
    if args.rows is None and runs:  # the upper bound is not a recipe a 10% user can choose
        fractions = Counter(next(iter(f.values()))["fraction"] for f in runs.values())
        usual = fractions.most_common(1)[0][0]
        runs = {r: f for r, f in runs.items() if next(iter(f.values()))["fraction"] == usual}
    if len(runs) < 2:
        sys.exit(f"error: {args.results}: fewer than two finished rows for seed {args.seed}")
    result = analyse(runs)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, args.results.resolve(), args.seed)
    if args.md:
        args.md.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
