"""Retrain finished grid runs with other seeds and test them the same way (run-to-run variance).

A cross-validated grid trains ONE network per fold and row; its paired tables bootstrap over
patients, so a training-seed effect shared by one fold's test patients looks like a method effect.
This retrains the given runs (same fold, same configuration, only ``seed`` changed: the training
randomness AND the labelled subset, as a grid's seed does) and evaluates them as the grid does
(each modality alone on the test patients, original grid). Resumable: a finished seed is skipped,
an interrupted one resumes from its checkpoint. One JSON line per run, mean Dice per modality.

    python benchmarks/rerun_seeds.py runs/benchmark-brats18-cv-2mm/runs/ROW/seed0/fold3 \
        --store runs/benchmark-brats18-cv-2mm/store --data ../shared/data/brats18 --seeds 1 \
        --out runs/seed-check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def rerun(run: Path, seed: int, store: Path, data: Path, out: Path, overrides: dict | None = None) -> dict:
    from semicml.benchmark.runner import _train_and_evaluate
    from semicml.config import build_config, deep_merge

    # <out>/<row>/seed<S>/<fold>: the grid's own layout, so tables can be rebuilt from it
    run_dir = out / run.parent.parent.name / f"seed{seed}" / run.name
    marker = run_dir / "rerun.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # nested overrides ({"semicml": {"bce_pos_weight": 3}}) change one setting, not the whole section
    cfg = deep_merge(cfg, {**(overrides or {}), "seed": seed})
    # the grid's own step: resume only a run of the same configuration, redo an interrupted test
    _, _, metrics = _train_and_evaluate(build_config(overrides=cfg), store, data, run_dir, progress=False)
    row = {"run": str(run), "seed": seed, "dice": {m: v.get("dice") for m, v in metrics.items()}}
    marker.write_text(json.dumps(row, indent=1))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished grid run folders (config.yaml inside)")
    ap.add_argument("--store", type=Path, required=True, help="the grid's slice store")
    ap.add_argument("--data", type=Path, required=True, help="the dataset the grid tests on")
    ap.add_argument("--seeds", default="1", help="comma-separated training seeds")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overrides", type=json.loads, default=None,
                    help='JSON config overrides on top of the run\'s (a smoke test: \'{"iterations": 4}\')')
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    for run in args.runs:
        for seed in (int(s) for s in args.seeds.split(",")):
            print(json.dumps(rerun(run, seed, args.store, args.data, args.out, args.overrides)), flush=True)


if __name__ == "__main__":
    main()
