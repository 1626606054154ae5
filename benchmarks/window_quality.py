"""What ``predict --window brain`` costs in accuracy: a trained run's test patients predicted with
the whole slice (the reference) and with each slice cut to its non-zero box (margin 0 and 16),
same engine, same post-processing (BraTS layout, whole tumour). Reports per case and modality: test Dice and HD95 against the
expert labels, the largest probability change, and how many mask voxels differ from the whole-slice
mask (before and after post-processing). Seconds are for information only (ONNX Runtime).

    python benchmarks/window_quality.py --run RUN [--data ../shared/data/brats18] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOWS = (("whole", 0), ("brain", 0), ("brain", 16))
# with --int8: the same windows again with `semicml export --quantize int8` models (keys "int8-<window><margin>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="trained run directory (its splits name the test cases)")
    ap.add_argument("--data", default=os.environ.get("SEMICML_BRATS18", str(REPO.parent / "shared/data/brats18")))
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/inference/window_quality.json"))
    ap.add_argument("--int8", action="store_true", help="also the int8-quantized model (export --quantize int8)")
    ap.add_argument("--windows", default=None, help="e.g. whole0,brain16 (default: all three)")
    args = ap.parse_args()
    import tempfile

    import nibabel as nib

    from semicml.data.readers import read_single_modality
    from semicml.evaluation.metrics import case_metrics
    from semicml.inference.postprocess import apply_postprocess
    from semicml.inference.export import export_model
    from semicml.inference.predict import load_model, probabilities_on_grid

    windows = [w for w in WINDOWS if args.windows is None or f"{w[0]}{w[1]}" in args.windows.split(",")]
    variants = [("", w, g) for w, g in windows] + ([("int8-", w, g) for w, g in windows] if args.int8 else [])
    tmp = Path(tempfile.mkdtemp(prefix="semicml-wq-"))

    info = json.loads(Path(args.run, "run.json").read_text())
    test = info["splits"]["test"]
    rows: dict = {}
    for modality in info["modalities"]:
        engines = {"": load_model(args.run, modality, args.engine)}
        if args.int8:
            model = export_model(args.run, modality, "onnx", tmp / f"{modality}-int8.onnx", quantize="int8")
            engines["int8-"] = load_model(model, modality, args.engine)
        payload = engines[""][1]
        labels = dict(read_single_modality(args.data, modality))
        for case_id in test:
            case = labels[case_id]()
            image = next(iter(case.images.values()))
            truth = np.asarray(nib.load(Path(args.data) / case_id / f"{case_id}_seg.nii.gz").dataobj) > 0
            ref = None
            for prefix, window, margin in variants:
                engine = engines[prefix][0]
                t0 = time.perf_counter()
                p = probabilities_on_grid(None, image, case.affine, payload["preprocessing"], None, None,
                                          engine=engine, window=window, margin=margin,
                                          modality=payload.get("modality"))
                seconds = time.perf_counter() - t0
                raw = p > 0.5
                mask = apply_postprocess(raw.astype(np.uint8), payload.get("postprocessing", "none"), case.spacing)
                if ref is None:
                    ref = (p, raw, mask)
                m = case_metrics(mask, truth, case.spacing)
                rows.setdefault(modality, {}).setdefault(case_id, {})[f"{prefix}{window}{margin}"] = {
                    "seconds": round(seconds, 2), "dice": round(m["dice"], 4), "hd95": round(m["hd95"], 2),
                    "max_abs_prob_diff": round(float(np.abs(p - ref[0]).max()), 4),
                    "raw_mask_voxels_differing": int((raw != ref[1]).sum()),
                    "raw_mask_dice_vs_whole": round(float(2 * (raw & ref[1]).sum() / max(raw.sum() + ref[1].sum(), 1)), 4),
                    "final_mask_voxels_differing": int((mask != ref[2]).sum())}
                print(modality, case_id, prefix, window, margin, rows[modality][case_id][f"{prefix}{window}{margin}"],
                      flush=True)
    keys = [f"{p}{w}{g}" for p, w, g in variants]
    summary = {m: {key: {k: round(float(np.mean([rows[m][c][key][k] for c in rows[m]])), 4)
                         for k in ("dice", "hd95", "raw_mask_dice_vs_whole", "seconds")}
                   for key in keys} for m in rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": args.run, "engine": args.engine, "test_cases": test, "mean": summary,
                               "cases": rows}, indent=1) + "\n")
    for m, by_window in summary.items():
        for key, vals in by_window.items():
            print(f"{m:6s} {key:8s} " + " ".join(f"{k} {v}" for k, v in vals.items()))


if __name__ == "__main__":
    main()
