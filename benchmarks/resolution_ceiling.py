"""How much Dice does a coarser in-plane grid cost a PERFECT network? The ceiling of a store at
``--spacing`` mm (the 2 mm CPU recipe) for each BraTS region.

Each reference mask is brought to the coarse grid as the fraction of each coarse pixel it covers
(linear), back to the original grid linearly (as ``predict`` resamples probabilities), thresholded
at 0.5 and compared with itself in 3D. Slices stay slices (no through-plane resampling, as in the
store). Thin structures (the enhancing rim) lose most.

    python benchmarks/resolution_ceiling.py --data ../shared/data/brats18 --spacing 2.0 --out ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from semicml.evaluation.metrics import dice_score  # noqa: E402

REGIONS = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}


def ceiling(mask: np.ndarray, factor: float) -> float:
    ref = mask.astype(np.float32)
    coarse = ndimage.zoom(ref, (1 / factor, 1 / factor, 1), order=1)
    back = ndimage.zoom(coarse, (ref.shape[0] / coarse.shape[0], ref.shape[1] / coarse.shape[1], 1), order=1)
    return dice_score(back > 0.5, ref > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="BraTS folder: one folder per case with *_seg.nii.gz")
    ap.add_argument("--spacing", type=float, default=2.0, help="coarse in-plane spacing, mm (the scans' is read)")
    ap.add_argument("--out", type=Path, help="JSON with per-case values")
    args = ap.parse_args()
    rows = {}
    for seg in sorted(args.data.glob("*/*_seg.nii*")):
        img = nib.load(str(seg))
        factor = args.spacing / float(np.mean(img.header.get_zooms()[:2]))
        labels = np.asarray(img.dataobj)
        rows[seg.parent.name] = {r: ceiling(np.isin(labels, v), factor) for r, v in REGIONS.items()}
        print(seg.parent.name, " ".join(f"{r} {d:.3f}" for r, d in rows[seg.parent.name].items()), flush=True)
    if not rows:
        raise SystemExit(f"{args.data}: no */*_seg.nii* files")
    mean = {r: float(np.mean([v[r] for v in rows.values()])) for r in REGIONS}
    print(f"mean over {len(rows)} cases: " + ", ".join(f"{r} {d:.3f}" for r, d in mean.items()))
    if args.out:
        args.out.write_text(json.dumps({"spacing": args.spacing, "mean": mean, "cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
