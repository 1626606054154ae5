"""Does the mask depend on how a scan's voxels are stored? One case, re-stored 8 ways, one run.

Each variant holds the same voxels in world space (nibabel ``as_reoriented``: in-plane axes
reversed, swapped, the slice axis first or reversed); ``semicml predict`` segments each, and every
mask, brought to the closest canonical orientation, is compared voxel by voxel with the mask of
the file as stored, and scored against the label.

    python benchmarks/orientation_check.py --run RUN --modality t2 --case-dir DATA/Brats18_2013_11_1 \\
        --out orientation.json

A run whose store recorded no orientation (made before it existed) shows what changed: its masks
differ between variants.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

# nibabel orientation arrays: row i = (output axis of input axis i, +1 kept / -1 reversed)
VARIANTS = {
    "as stored": [[0, 1], [1, 1], [2, 1]],
    "left-right reversed": [[0, -1], [1, 1], [2, 1]],
    "RAS (both in-plane reversed)": [[0, -1], [1, -1], [2, 1]],
    "in-plane axes swapped": [[1, 1], [0, 1], [2, 1]],
    "swapped and reversed": [[1, -1], [0, 1], [2, -1]],
    "slices reversed": [[0, 1], [1, 1], [2, -1]],
    "axes permuted": [[2, 1], [0, 1], [1, 1]],
    "axes permuted, reversed": [[2, -1], [1, -1], [0, 1]],
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(1, a.sum() + b.sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--modality", default="t2")
    ap.add_argument("--case-dir", required=True, type=Path, help="a BraTS case folder: <case>_<modality>.nii.gz, <case>_seg.nii.gz")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    case = args.case_dir.name
    image = nib.load(str(args.case_dir / f"{case}_{args.modality}.nii.gz"))
    label = nib.as_closest_canonical(nib.load(str(args.case_dir / f"{case}_seg.nii.gz")))
    ref = np.asarray(label.dataobj) > 0
    rows, first = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for name, ornt in VARIANTS.items():
            folder = Path(tmp) / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            (folder / "in" / case).mkdir(parents=True)
            variant = image.as_reoriented(np.asarray(ornt, dtype=float))
            nib.save(variant, str(folder / "in" / case / f"{case}_{args.modality}.nii.gz"))
            cmd = [sys.executable, "-m", "semicml.cli", "predict", "--run", str(args.run), "--modality", args.modality,
                   "--input", str(folder / "in"), "--out", str(folder / "pred"), "--cases", case]
            subprocess.run(cmd, check=True, capture_output=True)
            mask = nib.as_closest_canonical(nib.load(str(folder / "pred" / f"{case}.nii.gz")))
            pred = np.asarray(mask.dataobj) > 0
            first = pred if first is None else first
            rows[name] = {"codes": "".join(nib.aff2axcodes(variant.affine)), "differing_voxels": int((pred != first).sum()),
                          "dice_vs_as_stored": _dice(pred, first), "dice_vs_label": _dice(pred, ref)}
            r = rows[name]
            print(f"{name:30s} {r['codes']}  differing voxels {r['differing_voxels']:7d}  "
                  f"Dice vs as stored {r['dice_vs_as_stored']:.4f}  vs label {r['dice_vs_label']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "case": case, "modality": args.modality, "variants": rows},
                                   indent=1))


if __name__ == "__main__":
    main()
