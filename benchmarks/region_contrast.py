"""Can a region be seen at all in a contrast? Each labelled region's median intensity, as a
percentile of the same scan's normal (unlabelled) brain, per case and contrast.

A region whose median sits near the 50th percentile looks like normal tissue in that contrast: a
network that sees only this contrast has little to find it by. Enhancing tumour should sit high on
T1ce (it is defined by enhancement); oedema high on T2 and FLAIR. With ``--cases`` (a benchmark's
``cases.csv``), each row also shows the test Dice the networks reached on that patient, so a
reader can see whether the misses are the low-contrast patients (Spearman's rho over the patients).
Tumour core mixes the bright enhancing rim with dark necrosis, so its median says little.

    python benchmarks/region_contrast.py --data ../shared/data/brats18 \
        --cases benchmarks/results/brats18-regions-cv-2mm/cases.csv \
        --methods "semicml-prel-2000it+aug,supervised-2000it+aug" --out contrast.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from semicml.io_utils import atomic_path  # noqa: E402

# BraTS labels: 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing tumour.
REGIONS = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,), "oedema": (2,)}
# The pairs that matter for the goals: WT from T2, TC and ET from T1ce; FLAIR as the
# contrast oedema is delineated on. ``--pairs`` shows others.
SHOWN = (("t2", "oedema"), ("flair", "oedema"), ("t2", "wt"), ("t1ce", "tc"), ("t1ce", "et"))
CONTRASTS = ("t1", "t1ce", "t2", "flair")


def percentile_in(normal: np.ndarray, values: np.ndarray) -> float:
    """Percentile (0-100) of ``values``' median among the sorted ``normal`` intensities."""
    if values.size == 0:
        return float("nan")
    return float(np.searchsorted(normal, np.median(values)) / normal.size * 100)


def case_contrast(folder: Path, contrasts=CONTRASTS) -> dict[str, dict[str, float]]:
    """Contrast -> region -> percentile for one BraTS case folder (``<case>_<contrast>.nii.gz``)."""
    segs = sorted(folder.glob("*_seg.nii*"))
    if not segs:
        raise SystemExit(f"{folder}: no *_seg.nii* file")
    labels = np.asarray(nib.load(str(segs[0])).dataobj)
    out: dict[str, dict[str, float]] = {}
    for contrast in contrasts:
        files = sorted(folder.glob(f"*_{contrast}.nii*"))
        if not files:
            continue
        image = np.asarray(nib.load(str(files[0])).dataobj, dtype=np.float32)
        if image.shape != labels.shape:
            raise SystemExit(f"{files[0]}: shape {image.shape} differs from the label map's {labels.shape}")
        normal = np.sort(image[(image > 0) & (labels == 0)])  # BraTS is skull-stripped: zero is outside
        if normal.size == 0:
            raise SystemExit(f"{files[0]}: no normal-brain voxels (nothing above 0 outside the labels)")
        out[contrast] = {r: percentile_in(normal, image[np.isin(labels, v)]) for r, v in REGIONS.items()}
    return out


def contrast_figure(data: Path, cases: list[str], rows: dict, pairs, out: Path) -> None:
    """One row per case, one panel per contrast:region pair: the axial slice with the most voxels of
    that region, its contour on the image, the median percentile in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cases), len(pairs), figsize=(3 * len(pairs), 3 * len(cases)), squeeze=False)
    for case, row_axes in zip(cases, axes):
        folder = data / case
        labels = np.asarray(nib.load(str(sorted(folder.glob("*_seg.nii*"))[0])).dataobj)
        for (contrast, region), ax in zip(pairs, row_axes):
            image = np.asarray(nib.load(str(sorted(folder.glob(f"*_{contrast}.nii*"))[0])).dataobj, np.float32)
            mask = np.isin(labels, REGIONS[region])
            z = int(np.argmax(mask.sum(axis=(0, 1))))
            lo, hi = np.percentile(image[image > 0], [1, 99])
            ax.imshow(np.rot90(image[:, :, z]), cmap="gray", vmin=lo, vmax=hi)
            if mask[:, :, z].any():
                ax.contour(np.rot90(mask[:, :, z]).astype(np.float32), levels=[0.5], colors=["#00c853"], linewidths=0.8)
            ax.set_title(f"{case.removeprefix('Brats18_')} {contrast} {region}: {rows[case][contrast][region]:.0f}th pct",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(out) as tmp:  # no half-written figure
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def test_dice(cases_csv: Path, methods: list[str] | None, binary_region: str = "wt") -> dict[tuple[str, str, str], float]:
    """(case, modality, region) -> mean test Dice over the methods (all, or ``methods``) and seeds
    of a benchmark's cases.csv; a binary grid's rows (no region) count as ``binary_region``."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    with cases_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if "+" in row["modality"]:
                continue  # fused rows
            if methods and row["method"] not in methods:
                continue
            acc[(row["case"], row["modality"], row.get("region") or binary_region)].append(float(row["dice"]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="BraTS folder: one folder per case")
    ap.add_argument("--cases", type=Path, help="a benchmark's cases.csv: adds the mean test Dice per patient")
    ap.add_argument("--methods", help="comma-separated methods of --cases to average (default: all)")
    ap.add_argument("--pairs", help="contrast:region pairs to show (default: "
                    + ",".join(f"{m}:{r}" for m, r in SHOWN) + f"; regions: {', '.join(REGIONS)})")
    ap.add_argument("--binary-region", default="wt", help="the region a binary grid's rows segmented (default wt)")
    ap.add_argument("--out", type=Path, help="JSON with every case, contrast and region")
    ap.add_argument("--figure", type=Path, help="PNG: the --figure-cases' slices with the shown regions outlined")
    ap.add_argument("--figure-cases", help="comma-separated cases for --figure (default: the first three)")
    args = ap.parse_args()
    folders = sorted(p for p in args.data.iterdir() if p.is_dir() and any(p.glob("*_seg.nii*")))
    if not folders:
        raise SystemExit(f"{args.data}: no case folder with a *_seg.nii* file")
    shown = SHOWN
    if args.pairs:
        shown = tuple(tuple(p.split(":", 1)) for p in args.pairs.split(",") if p)
        bad = [":".join(p) for p in shown if len(p) != 2 or p[0] not in CONTRASTS or p[1] not in REGIONS]
        if bad:
            raise SystemExit(f"--pairs: {', '.join(bad)} is not contrast:region ({'/'.join(CONTRASTS)} : "
                             f"{'/'.join(REGIONS)})")
    methods = [m for m in (args.methods or "").split(",") if m]
    dice = test_dice(args.cases, methods, args.binary_region) if args.cases else {}
    if args.cases and not dice:
        raise SystemExit(f"{args.cases}: no single-modality rows" + (f" of {', '.join(methods)}" if methods else ""))
    rows = {f.name: case_contrast(f) for f in folders}
    head = " ".join(f"{m + ' ' + r:>12s}" for m, r in shown)
    print(f"{'case':24s} {head}   (median percentile in normal brain; [mean test Dice])")
    for case, per in rows.items():
        cells = []
        for m, r in shown:
            p = per.get(m, {}).get(r, float("nan"))
            d = dice.get((case, m, r))
            cells.append(f"{p:5.1f}" + (f" [{d:.2f}]" if d is not None else "       "))
        print(f"{case:24s} " + " ".join(f"{c:>12s}" for c in cells))
    correlation = {}
    for m, r in shown:
        pairs = [(per[m][r], dice[(case, m, r)]) for case, per in rows.items()
                 if m in per and (case, m, r) in dice and np.isfinite(per[m][r])]
        if len(pairs) >= 5:
            rho, p = stats.spearmanr(*zip(*pairs))
            correlation[f"{m} {r}"] = {"spearman": float(rho), "p": float(p), "n": len(pairs)}
            print(f"{m} {r}: Spearman rho {rho:+.2f} (p {p:.3f}, n {len(pairs)}) between contrast and test Dice")
    if args.figure:
        chosen = [c for c in (args.figure_cases or "").split(",") if c] or list(rows)[:3]
        missing = [c for c in chosen if c not in rows]
        if missing:
            raise SystemExit(f"--figure-cases: {', '.join(missing)} not in {args.data}")
        contrast_figure(args.data, chosen, rows, [p for p in shown if all(p[0] in rows[c] for c in chosen)], args.figure)
        print(f"figure -> {args.figure}")
    if args.out:
        args.out.write_text(json.dumps({"methods": methods or "all", "percentiles": rows, "correlation": correlation,
                                        "test_dice": {"|".join(k): v for k, v in dice.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
