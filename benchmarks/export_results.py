"""Copy what a `semicml benchmark` output folder says into a folder fit for the repository.

Tables, plots, the folds and, per run, the result marker, configuration, run record, training
log and per-patient test metrics (``eval/evaluation/<prediction>/metrics.csv``: what the paired
tables are rebuilt from when a grid is continued elsewhere); never weights, predictions, stores or checkpoints (they stay in the output folder, which is
what a resume needs).

    python benchmarks/export_results.py runs/benchmark-brats18-cv-2mm benchmarks/results/brats18-cv-2mm
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TOP_LEVEL = ("results.md", "results.csv", "results.json", "cases.csv", "dice.png", "val_curves.png",
             "plateau.md", "plateau.json", "plateau.png", "prepare.json")
PER_RUN = ("result.json", "config.yaml", "run.json", "log.jsonl")
PER_RUN_GLOBS = ("eval/evaluation/*/metrics.csv",)


def export(out: Path, dest: Path) -> list[Path]:
    if not (out / "results.json").is_file():
        raise SystemExit(f"{out}: no results.json (not a finished `semicml benchmark` output folder)")
    copied = []
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOP_LEVEL:
        if (out / name).is_file():
            copied.append(Path(shutil.copy2(out / name, dest / name)))
    for split in sorted((out / "splits").glob("*.json")):
        (dest / "splits").mkdir(exist_ok=True)
        copied.append(Path(shutil.copy2(split, dest / "splits" / split.name)))
    # only runs that finished (their marker exists): a half-trained run's log says nothing yet
    for marker in sorted((out / "runs").rglob("result.json")):
        run = marker.parent
        target = dest / "runs" / run.relative_to(out / "runs")
        target.mkdir(parents=True, exist_ok=True)
        for name in PER_RUN:
            if (run / name).is_file():
                copied.append(Path(shutil.copy2(run / name, target / name)))
        for pattern in PER_RUN_GLOBS:
            for path in sorted(run.glob(pattern)):
                (target / path.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
                copied.append(Path(shutil.copy2(path, target / path.relative_to(run))))
    return copied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="benchmark output folder")
    ap.add_argument("dest", type=Path, help="folder to write (e.g. benchmarks/results/NAME)")
    args = ap.parse_args()
    copied = export(args.out, args.dest)
    print(f"{len(copied)} files -> {args.dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
