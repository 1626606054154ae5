"""Does flip test-time augmentation (``predict --tta``) help? A paired screen of finished runs.

Each run's test patients are segmented twice by every modality's network alone, exactly as a user
would (``predict_cases``: the original scans, whole-slice prediction, the run's post-processing),
once plainly and once with ``tta=True`` (the mean probability over the slice and its three in-plane
mirror images); both are evaluated in 3D on the original grid. The comparison is paired per
patient, pooled over the runs (e.g. the folds of a cross-validation, so every patient counts once):
mean difference, 95% percentile-bootstrap CI, two-sided Wilcoxon signed-rank p, wins.

    python benchmarks/tta_screen.py RUN [RUN ...] --data DATA --out tta.json [--md tta.md]

Costs four network passes per slice instead of one for the TTA half; nothing is trained.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from semicml.benchmark.paired import paired_comparison, paired_markdown  # noqa: E402

PLAIN, TTA = "plain", "tta"
METRICS = ("dice", "hd95", "components")


def screen_run(run: Path, data: Path, work: Path, precision: str) -> list[dict]:
    """Per-case rows {method: plain|tta, modality, seed, case, dice, hd95, ...} of one run's test split."""
    from semicml.errors import DataError
    from semicml.evaluation.evaluate import evaluate_predictions
    from semicml.inference.predict import predict_cases

    info_path = run / "run.json"
    if not info_path.is_file():
        raise DataError("not a finished run (no run.json)", run)
    info = json.loads(info_path.read_text())
    test = info["splits"].get("test")
    if not test:
        raise DataError("the run has no test split", run)
    rows = []
    for modality in info["modalities"]:
        for name, tta in ((PLAIN, False), (TTA, True)):
            pred, ev = work / modality / name / "pred", work / modality / name / "eval"
            start = time.perf_counter()
            predict_cases(run, modality, data, pred, cases=test, tta=tta, precision=precision, progress=False)
            seconds = time.perf_counter() - start
            evaluate_predictions(pred, data, info["target"]["name"], ev, cases=test, progress=False)
            with open(ev / "metrics.csv", newline="") as fh:
                for row in csv.DictReader(fh):
                    rows.append({"method": name, "modality": modality, "seed": 0, "case": row["case"],
                                 "region": None, "run": str(run), "predict_seconds": seconds,
                                 **{k: float(row[k]) for k in METRICS}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the dataset the runs were prepared from")
    ap.add_argument("--precision", default="auto", help="predict's precision for both halves (auto | bf16 | fp32)")
    ap.add_argument("--out", type=Path, required=True, help="JSON: every per-case row and the paired comparison")
    ap.add_argument("--md", type=Path, help="also write the paired table as Markdown")
    args = ap.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tta-screen-") as tmp:
        for i, run in enumerate(args.runs):
            rows += screen_run(run, args.data, Path(tmp) / str(i), args.precision)
    comparison = paired_comparison(rows, TTA, metrics=METRICS[:2])
    table = paired_markdown(comparison)
    print(table)
    args.out.write_text(json.dumps({"runs": [str(r) for r in args.runs], "precision": args.precision,
                                    "rows": rows, "comparison": comparison}, indent=1))
    if args.md:
        args.md.write_text(f"# Flip TTA vs plain prediction (reference = tta)\n\n{table}\n")


if __name__ == "__main__":
    main()
