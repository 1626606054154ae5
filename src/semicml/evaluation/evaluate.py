"""``semicml evaluate``: predicted masks vs reference labels, in 3D on the original grid.

A mask on another grid of the same patient space (a PET-only prediction on the PET grid, the
label on the CT grid) is resampled onto the label's grid (nearest neighbour) first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from ..data.geometry import MIN_OVERLAP, overlap_fraction, resample_to_grid
from ..data.readers import open_dataset, read_case
from ..data.targets import apply_target, resolve_target
from ..errors import ConfigError, DataError
from .metrics import DISTANCE_METRICS, METRICS, volume_diagonal_mm
from .report import evaluate_pairs, write_report


def _prediction_files(pred_dir: Path) -> dict[str, Path]:
    if not pred_dir.is_dir():
        raise DataError("prediction folder not found", pred_dir)
    files = {}
    for p in sorted(pred_dir.iterdir()):
        name = p.name
        # probabilities and uncertainty maps are written beside the masks by predict
        if name.endswith(("_prob.nii.gz", "_uncertainty.nii.gz")) or not name.endswith((".nii.gz", ".nii")):
            continue
        files[name.removesuffix(".gz").removesuffix(".nii")] = p
    return files


def _load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - any read failure is a bad file for the user
        raise DataError(f"unreadable NIfTI ({type(err).__name__})", path) from None
    if data.ndim != 3:
        raise DataError(f"expected a 3D mask, got shape {data.shape}", path)
    return data > 0, img.affine


def on_reference_grid(pred: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], ref_affine: np.ndarray,
                      path: Path) -> np.ndarray:
    """A mask predicted on another grid of the same patient space (e.g. from a PET image on its
    coarser grid) -> the reference label's grid, nearest neighbour; a mask that does not cover the
    reference is a one-line error (a prediction of another case, or of a wrong file)."""
    cover = overlap_fraction(pred.shape, affine, shape, ref_affine)
    if cover < MIN_OVERLAP:
        raise DataError(f"prediction grid {pred.shape} covers {100 * cover:.0f}% of the reference label's world space "
                        f"(shape {tuple(shape)}); not a prediction of this case", path)
    return resample_to_grid(pred.astype(np.float32), affine, shape, ref_affine, order=0) > 0.5


MISSING_POLICIES = ("error", "worst")


def worst_row(case: str, ref: np.ndarray, spacing) -> dict:
    """The row of a case without a prediction: the worst value of every metric (overlap 0,
    distances the volume diagonal), whatever the reference holds, so a missing case can only lower
    the mean."""
    diag = volume_diagonal_mm(ref.shape, spacing)
    # Every metric in METRICS: distances the diagonal, fractions 0; a count (components) is that of
    # the absent mask, 0 (the overlap and distance penalties carry the failure).
    values = {m: diag if m in DISTANCE_METRICS else 0.0 for m in METRICS}
    return {"case": case, **values, "pred_voxels": 0, "ref_voxels": int(np.count_nonzero(ref))}


def evaluate_predictions(pred_dir: str | Path, ref_root: str | Path, target: str, out_dir: str | Path,
                         fmt: str | None = None, cases: Iterable[str] | None = None, title: str = "evaluation",
                         extra: dict | None = None, progress: bool = True, missing: str = "error") -> dict:
    """Compare ``pred_dir/<case>.nii.gz`` with the labels of the dataset at ``ref_root``.

    Expected cases: ``cases`` (e.g. the test split), else every labelled reference case. A
    missing prediction is never silently dropped: ``missing="error"`` stops with a one-line
    DataError, ``missing="worst"`` scores it with :func:`worst_row`. The summary states how many
    cases were expected, found and missing (and lists the missing ones); predictions of cases
    that are not expected are not evaluated and listed as ``cases_not_expected``.
    """
    if missing not in MISSING_POLICIES:
        raise ConfigError(f"--missing must be one of {', '.join(MISSING_POLICIES)}, not {missing!r}")
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    preds = _prediction_files(pred_dir)
    info = open_dataset(ref_root, fmt)
    tgt = resolve_target(info, target)
    wanted = list(dict.fromkeys(cases)) if cases is not None else info.labeled_ids
    if not wanted:
        raise DataError("no labelled reference case to evaluate", ref_root)
    for case in wanted:
        if case not in info.labeled or not info.labeled[case]:
            raise DataError(f"case {case!r} has no reference label", ref_root)
    absent = [c for c in wanted if c not in preds]
    if absent and missing == "error":
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise DataError(f"no prediction for {len(absent)} of {len(wanted)} expected cases ({shown}); predict "
                        "them, restrict the evaluation with --cases, or score them as failures with --missing worst",
                        pred_dir)

    def pairs():
        for case in wanted:
            ref_case = read_case(info, case, info.modalities[:1], with_label=True)
            ref = apply_target(ref_case.label, tgt) > 0
            if case not in preds:
                yield case, None, ref, ref_case.spacing
                continue
            pred, pred_affine = _load_mask(preds[case])
            if pred.shape != ref.shape or not np.allclose(pred_affine, ref_case.affine, atol=1e-3):
                pred = on_reference_grid(pred, pred_affine, ref.shape, ref_case.affine, preds[case])
            yield case, pred, ref, ref_case.spacing

    rows: list[dict] = []
    for case, pred, ref, sp in tqdm(pairs(), total=len(wanted), desc="evaluate", unit="case", disable=not progress):
        if pred is None:
            rows.append({**worst_row(case, ref, sp), "prediction": "missing"})
        else:
            rows.extend({**row, "prediction": "found"} for row in evaluate_pairs([(case, pred, ref, sp)], progress=False))
    coverage = {"n_expected": len(wanted), "n_found": len(wanted) - len(absent), "n_missing": len(absent),
                "missing_policy": missing, "cases_missing": absent,
                "cases_not_expected": sorted(set(preds) - set(wanted))}
    return write_report(rows, out_dir, title, extra={**(extra or {}), "coverage": coverage})
