"""Validation comparison on the phantom for the region-target defaults (issue 11):

* ASC over a map's channels: ``semicml.asc_channels`` joint vs per-channel;
* PReL teacher: one for all regions vs ``prel.teacher_per_region``.

Each setting trains semicml-prel on the same region store (T2 + T1ce, wt/tc/et) with the same seed;
the score is each modality's best VALIDATION Dice per region (run.json ``best_val``), never the
test split. A short CPU budget: read the table as "does the option help at all", not as a
measurement of the final quality. Prints a table and writes JSON.

    python benchmarks/regions_validation.py [--iterations 120] [--seeds 0] [--settings NAME ...]

Each call appends its runs to ``--out/asc_channels_and_teacher_phantom.json`` (one setting per call
keeps every call under ~15 minutes on a busy 2-core CPU) and prints the table of all runs so far.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from semicml.config import build_config  # noqa: E402
from semicml.data.phantom import write_phantom  # noqa: E402
from semicml.data.store import PrepareOptions, prepare_store  # noqa: E402
from semicml.engine.trainer import Trainer  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's shared helpers
from host import cpu_model  # noqa: E402

SETTINGS = {
    "joint, one teacher": {"semicml": {"asc_channels": "joint"}},
    "per-channel, one teacher": {"semicml": {"asc_channels": "per-channel"}},
    "joint, teacher per region": {"semicml": {"asc_channels": "joint"}, "prel": {"teacher_per_region": True}},
    "per-channel, teacher per region": {"semicml": {"asc_channels": "per-channel"},
                                        "prel": {"teacher_per_region": True}},
}



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=120)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "regions")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    root = write_phantom(tmp / "data", cases=10, seed=3, shape=(64, 64, 24))
    store = prepare_store(root, tmp / "store", PrepareOptions(modalities=("T2", "T1ce"), size=64, target="regions"),
                          progress=False)
    result = args.out / "asc_channels_and_teacher_phantom.json"
    rows = json.loads(result.read_text())["runs"] if result.is_file() else []
    for seed in args.seeds:
        for name in args.settings:
            extra = SETTINGS[name]
            over = {"method": "semicml-prel", "slice_filter": "foreground", "model": {"base_width": 8, "levels": 3},
                    "iterations": args.iterations, "labeled_batch": 8, "unlabeled_batch": 8,
                    "labeled_fraction": 0.3, "val_every": 10, "optim": {"lr": 3e-3, "milestones": [0.5, 0.75]},
                    "val_fraction": 0.2, "test_fraction": 0.2, "postprocess": "none", "seed": seed,
                    "prel": {"start_fraction": 0.5, "teacher_per_region": False, **extra.get("prel", {})},
                    "semicml": extra["semicml"]}
            t0 = time.time()
            info = Trainer(build_config(overrides=over), store, tmp / f"{name}-{seed}".replace(" ", "_").replace(",", ""),
                           progress=False).fit()
            rows = [r for r in rows if (r["setting"], r["seed"], r["iterations"]) != (name, seed, args.iterations)]
            row = {"setting": name, "seed": seed, "iterations": args.iterations, "seconds": round(time.time() - t0, 1),
                   "teacher": info["teacher"].get("per_region"),
                   "val": {m: {"mean": b["dice"], **b["regions"]} for m, b in info["best_val"].items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    rows = [r for r in rows if r["iterations"] == args.iterations]
    seeds = sorted({r["seed"] for r in rows})
    print(f"\nsemicml-prel, phantom 10 cases 64x64x24, T2 + T1ce, {args.iterations} iterations, seeds {seeds}; "
          f"best validation Dice (mean over seeds); CPU: {cpu_model()} (shared, busy)")
    print(f"{'setting':32s} {'modality':8s} {'mean':>6s} {'wt':>6s} {'tc':>6s} {'et':>6s}")
    summary = {}
    for name in SETTINGS:
        for m in ("T2", "T1ce"):
            vals = [r["val"][m] for r in rows if r["setting"] == name]
            if not vals:
                continue
            avg = {k: sum(v[k] for v in vals) / len(vals) for k in ("mean", "wt", "tc", "et")}
            summary.setdefault(name, {})[m] = avg
            print(f"{name:32s} {m:8s} " + " ".join(f"{avg[k]:6.3f}" for k in ("mean", "wt", "tc", "et")))
    args.out.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "iterations": args.iterations,
                                  "seeds": seeds, "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
