"""Benchmark: prepare the real BraTS cases into a slice store and read it back.

Prints a table and writes JSON: seconds per case, store size, peak resident memory, DataLoader
slices/s (two-stream batches, as training reads them).

    python benchmarks/bench_prepare.py [--data ../shared/data/brats18] [--workers 2] [--out bench_out]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("SEMICML_BRATS18", str(REPO.parent / "shared/data/brats18")))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()

    from semicml.data.sampler import PairedSliceDataset, TwoStreamBatchSampler, make_loader
    from semicml.data.splits import make_splits, select_labeled
    from semicml.data.store import PrepareOptions, SliceStore, prepare_store

    work = Path(tempfile.mkdtemp(prefix="semicml-bench-"))
    try:
        t0 = time.perf_counter()
        store_path = prepare_store(args.data, work / "store", PrepareOptions(modalities=("t2", "t1ce"), target="wt",
                                                                             workers=args.workers))
        prep_s = time.perf_counter() - t0
        store = SliceStore(store_path)
        n_cases = len(store.cases)
        size_mb = sum(f.stat().st_size for f in store_path.rglob("*") if f.is_file()) / 2**20
        splits = make_splits(store, seed=0)
        sub = select_labeled(store, splits.train, 0.1, "slice", seed=0)
        ds = PairedSliceDataset(store, sub.labeled, sub.unlabeled)
        rows = {}
        for workers in (0, 2):
            sampler = TwoStreamBatchSampler(len(sub.labeled), len(sub.unlabeled), 20, 4, 0, 0, args.batches)
            t0 = time.perf_counter()
            n = sum(b["images_l"].shape[0] + b["images_u"].shape[0] for b in make_loader(ds, sampler, workers))
            rows[f"loader_slices_per_s_workers{workers}"] = n / (time.perf_counter() - t0)
        result = {
            "cases": n_cases,
            "prepare_workers": args.workers,
            "prepare_seconds_total": round(prep_s, 2),
            "prepare_seconds_per_case": round(prep_s / n_cases, 3),
            "store_size_mb": round(size_mb, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            **{k: round(v, 1) for k, v in rows.items()},
            "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_prepare.json").write_text(json.dumps(result, indent=1))
    print(f"\n{'metric':34s} value")
    for k, v in result.items():
        print(f"{k:34s} {v}")
    print(f"\nwritten {out / 'bench_prepare.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
