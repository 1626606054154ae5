"""Final-weight twins of finished runs, tested like the grid: for each run, a copy whose networks
are the training checkpoint's LAST weights (not the ones validation selected), predicted and
evaluated on the run's test patients with the grid's code (``eval/evaluation/<modality>/``).

Such a twin is a member for ``benchmarks/ensemble_screen.py``: the run with its own final weights
is a two-member "snapshot" ensemble that costs no second training (selection keeps early, less
certain networks with far islands; the last ones fit better and miss more, ``fit-check-test/``).

    python benchmarks/final_copies.py runs/.../ROW/seed0/fold{0,1,2,3} --data ../shared/data/brats18 \
        --out runs/final-copies          # -> runs/final-copies/ROW+final/seed0/fold<k>

Resumable: a copy with its evaluation finished is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fit_check import final_weights_copy

from semicml.pipeline import evaluate_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders (checkpoint.pt inside)")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for run in args.runs:
        # ROW+final/seedS/foldF: the grid's layout, under a row name of its own
        copy = args.out / f"{run.parts[-3]}+final" / run.parts[-2] / run.parts[-1]
        marker = copy / "final.json"
        if marker.is_file():
            continue
        _, last = final_weights_copy(run, copy)
        metrics = evaluate_run(copy, args.data, copy / "eval", progress=False)
        row = {"run": str(run), "iteration": last, "dice": {m: v.get("dice") for m, v in metrics.items()}}
        marker.write_text(json.dumps(row, indent=1))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
