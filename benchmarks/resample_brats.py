"""Experiment: the same scans stored on other in-plane grids (issue 10).

Test cases are resampled in plane to other spacings (default 2 mm and 0.7 mm), image and label
together, slice thickness and world positions unchanged, then segmented by each modality's
network ALONE and evaluated on their own grid. Two ways of predicting are compared side by side:

* ``resampled``: as ``semicml predict`` does now: each input resampled to the spacing recorded at
  training, probabilities back to the input grid;
* ``as-is``: the behaviour before issue 10 (no spacing in the run): the input on its own grid;
* ``ceiling``: the original grid's masks carried to the new grid the way the labels were: what the
  grid change alone costs (small tumours quantised on a coarse grid), whatever the network does.

How the grids are made (to look like acquisitions, not like our own resampling): coarser grids
average first (Gaussian, sigma = (factor - 1) / 2 input voxels, as skimage's anti-aliasing) and
interpolate linearly; finer grids interpolate with cubic splines; a skull-stripped image keeps
an exactly zero background (as a stripped acquisition on that grid has); labels go the same way as
one mask per label value (linearly), each voxel taking the most likely label (nearest neighbour
would shift a downsampled label by half a voxel). Every zoom keeps the field of view (scipy ``grid_mode``), and the affine is rewritten so
each voxel keeps its world position.

    python benchmarks/resample_brats.py --run RUN [--data ../shared/data/brats18] [--cases A,B]
        [--spacings 2.0,0.7] [--out benchmarks/results/resampling] [--work DIR]

Writes ``results.json`` and ``results.md`` (a table of Dice per grid) to ``--out``; the resampled
datasets and predictions go to ``--work`` (a temporary folder unless given; never the repo). With
the same ``--work`` again, an interrupted experiment continues: grids and complete prediction
folders already there are reused (the evaluations are redone).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's shared helpers
from host import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]



def in_plane_axes(affine: np.ndarray) -> list[int]:
    axial = next((a for a, c in enumerate(nib.orientations.aff2axcodes(affine)) if c in "SI"), 2)
    return [a for a in range(3) if a != axial]


def regrid(data: np.ndarray, affine: np.ndarray, spacing: float, label: bool) -> tuple[np.ndarray, np.ndarray]:
    """``data`` on a grid of ``spacing`` mm in plane over the same field of view, and its affine."""
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    factors = np.ones(3)
    for a in in_plane_axes(affine):
        factors[a] = max(1, round(data.shape[a] * sizes[a] / spacing)) / data.shape[a]
    coarser = factors.min() < 1

    def zoom(src: np.ndarray, order: int) -> np.ndarray:
        if coarser:  # average like a bigger voxel would, then interpolate
            src = ndimage.gaussian_filter(src, [max(0.0, (1 / f - 1) / 2) for f in factors])
        return ndimage.zoom(src, factors, order=order, mode="nearest", grid_mode=True)

    if label:  # each label's mask the way the image goes (linear), then the most likely label
        values = np.unique(data)
        maps = np.stack([zoom((data == v).astype(np.float32), 1) for v in values])
        out = values[np.argmax(maps, axis=0)].astype(data.dtype)
    else:
        out = zoom(data.astype(np.float32), 1 if coarser else 3).astype(np.float32)
        if np.count_nonzero(data == 0) >= 0.2 * data.size:  # skull-stripped: the background stays exactly 0
            out[zoom((data != 0).astype(np.float32), 1) < 0.5] = 0.0
    # Voxel i' of the new grid sits at old index (i' + 0.5) / f - 0.5 (same outer edges).
    scale = np.diag([*(1 / factors), 1.0])
    scale[:3, 3] = 0.5 / factors - 0.5
    return out, affine @ scale


def brats_files(root: Path, case: str) -> dict[str, Path]:
    folder = root / case
    return {f.name[len(case) + 1:].split(".")[0]: f for f in folder.iterdir() if f.name.startswith(case + "_")}


def write_grid(data: Path, out: Path, cases: list[str], modalities: list[str], spacing: float | None) -> Path:
    """A BraTS-layout copy of ``cases`` (modalities + seg) on the ``spacing`` grid (None: as is)."""
    for case in cases:
        (out / case).mkdir(parents=True, exist_ok=True)
        files = brats_files(data, case)
        for key in [m.lower() for m in modalities] + ["seg"]:
            src = files[key]
            dst = out / case / src.name
            if dst.exists():  # made by an earlier, interrupted run with the same --work
                continue
            if spacing is None:
                if not dst.exists():
                    os.symlink(src.resolve(), dst)
                continue
            img = nib.load(str(src))
            arr, affine = regrid(np.asarray(img.dataobj), img.affine, spacing, label=key == "seg")
            new = nib.Nifti1Image(arr, affine)
            new.set_qform(affine, code=1)
            new.set_sform(affine, code=1)
            nib.save(new, str(dst))
    return out


def regrid_masks(src: Path, dst: Path, spacing: float) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.nii.gz")):
        if f.name.endswith("_prob.nii.gz"):
            continue
        img = nib.load(str(f))
        arr, affine = regrid(np.asarray(img.dataobj).astype(np.uint8), img.affine, spacing, label=True)
        nib.save(nib.Nifti1Image(arr, affine), str(dst / f.name))


def as_is_weights(run: Path, work: Path) -> Path:
    """A copy of the run's weights without the recorded spacing: predicts as before issue 10."""
    import torch

    out = work / "as-is-run"
    (out / "weights").mkdir(parents=True, exist_ok=True)
    for f in (run / "weights").glob("*.pt"):
        payload = torch.load(f, map_location="cpu", weights_only=True)
        payload["preprocessing"] = {**payload["preprocessing"], "spacing": None}
        torch.save(payload, out / "weights" / f.name)
    return out


def run_experiment(run: Path, data: Path, cases: list[str] | None, spacings: list[float], out: Path, work: Path,
                   progress: bool = True, engine: str = "torch", skip_as_is: bool = False) -> dict:
    from semicml.evaluation.evaluate import evaluate_predictions
    from semicml.inference.predict import predict_cases

    info = json.loads((run / "run.json").read_text())
    modalities = list(info["modalities"])
    cases = cases or list(info["splits"]["test"])
    target = info["target"]["name"]
    trained_at = (info["preprocessing"].get("spacing") or {}).get("in_plane_mm")
    modes = {"resampled": run, "as-is": as_is_weights(run, work)} if trained_at else {"as-is": run}
    if skip_as_is and trained_at:
        modes.pop("as-is")
    rows = []
    t0 = time.perf_counter()
    for spacing in [None, *spacings]:
        grid = "original" if spacing is None else f"{spacing:g} mm"
        folder = write_grid(data, work / "data" / grid.replace(" ", ""), cases, modalities, spacing)
        for m in modalities:
            # "ceiling": the original grid's masks carried to this grid the way the labels were: what
            # the grid change alone costs (quantisation of small tumours), the network aside.
            for mode, weights in [*modes.items(), *([("ceiling", None)] if spacing is not None else [])]:
                pred = work / "pred" / grid.replace(" ", "") / mode / m
                done = (pred / "predict.json").is_file() and all((pred / f"{c}.nii.gz").is_file() for c in cases)
                if weights is None:
                    shutil.rmtree(pred, ignore_errors=True)
                    regrid_masks(work / "pred" / "original" / next(iter(modes)) / m, pred, spacing)
                elif not done:  # predictions of an earlier, interrupted run with the same --work are kept
                    shutil.rmtree(pred, ignore_errors=True)
                    predict_cases(weights, m, folder, pred, cases=cases, progress=progress, engine=engine)
                report = work / "eval" / grid.replace(" ", "") / mode / m
                summary = evaluate_predictions(pred, folder, target, report, cases=cases, progress=progress)
                with open(report / "metrics.csv", newline="") as fh:
                        per_case = {r["case"]: round(float(r["dice"]), 4) for r in csv.DictReader(fh)}
                rows.append({"grid": grid, "spacing_mm": spacing, "modality": m, "mode": mode,
                             "dice_mean": round(float(summary["mean"]["dice"]), 4),
                             "dice_std": round(float(summary["std"]["dice"]), 4), "dice_per_case": per_case})
                print(f"{grid:>9s} {m:>6s} {mode:>9s}: Dice {summary['mean']['dice']:.3f}", flush=True)
    result = {"run": str(run), "trained_in_plane_mm": trained_at, "cases": cases, "target": target, "engine": engine,
              "host_cpu": cpu_model(), "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    rows = result["rows"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    mods = list(dict.fromkeys(r["modality"] for r in rows))
    base = {(r["modality"], r["mode"]): r["dice_mean"] for r in rows if r["grid"] == "original"}
    head = "| grid | " + " | ".join(f"{m} {mode}" for m in mods for mode in modes) + " |"
    lines = [f"# Same scans, other in-plane grids: Dice of each modality's network alone", "",
             f"Run `{result['run']}` (trained at {result['trained_in_plane_mm']} mm in plane), target "
             f"{result['target']}, {len(result['cases'])} test cases ({', '.join(result['cases'])}); "
             f"`resampled`: predict resamples to the training spacing (issue 10); `as-is`: the input on its own grid "
             f"(before); `ceiling`: the original grid's masks carried to the grid like the labels (what the grid "
             f"change alone costs). Mean ± std over cases; in brackets the change from the original grid.", "",
             f"Host: {result['host_cpu']}; {result['seconds']} s.", "", head,
             "|---|" + "---:|" * (len(mods) * len(modes))]
    for grid in dict.fromkeys(r["grid"] for r in rows):
        cells = []
        for m in mods:
            for mode in modes:
                r = next((x for x in rows if x["grid"] == grid and x["modality"] == m and x["mode"] == mode), None)
                if r is None:
                    cells.append("")
                    continue
                ref = base.get((m, mode), base.get((m, modes[0])))
                delta = "" if grid == "original" else f" ({r['dice_mean'] - ref:+.3f})"
                cells.append(f"{r['dice_mean']:.3f} ± {r['dice_std']:.3f}{delta}")
        lines.append(f"| {grid} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="trained run directory (run.json, weights/)")
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("SEMICML_BRATS18", str(REPO.parent / "shared/data/brats18"))))
    ap.add_argument("--cases", default=None, help="comma-separated (default: the run's test split)")
    ap.add_argument("--spacings", default="2.0,0.7", help="in-plane spacings to test, mm")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/resampling")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--engine", default="torch", help="torch | onnxruntime | openvino (masks equal: "
                    "benchmarks/results/inference/)")
    ap.add_argument("--skip-as-is", action="store_true", help="only the resampled way (and the ceiling)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="semicml-resample-"))
    try:
        return run_experiment(args.run, args.data, args.cases.split(",") if args.cases else None,
                              [float(s) for s in args.spacings.split(",")], args.out, work,
                              progress=not args.no_progress, engine=args.engine, skip_as_is=args.skip_as_is)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
