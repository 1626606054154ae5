"""``semicml evaluate``: predicted masks vs reference labels, in 3D on the original grid.

A mask on another grid of the same patient space (a PET-only prediction on the PET grid, the
label on the CT grid) is resampled onto the label's grid (nearest neighbour) first.

Region targets (``--target regions`` or a list such as ``wt,tc,et``): a prediction is a label map
(``<case>.nii.gz``, turned into the regions as the reference is) or one mask per region
(``<region>/<case>.nii.gz``, as ``predict --regions-as-files`` writes); every metric is reported
per region plus the mean over regions (:mod:`semicml.evaluation.region_report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from ..data.geometry import MIN_OVERLAP, overlap_fraction, resample_to_grid
from ..data.readers import open_dataset, read_label
from ..data.targets import Target, apply_target, region_masks, resolve_target
from ..errors import ConfigError, DataError
from .metrics import DISTANCE_METRICS, METRICS, volume_diagonal_mm
from .region_report import write_region_report
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
        case = name.removesuffix(".gz").removesuffix(".nii")
        if case in files:  # case.nii beside case.nii.gz: which one is the prediction is unknown
            raise DataError(f"two predictions for case {case!r}: {files[case].name} and {name}", pred_dir)
        files[case] = p
    return files


def _load_mask(path: Path, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mask (nonzero) or, with ``raw``, the label values, affine) of a 3D prediction."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - any read failure is a bad file for the user
        raise DataError(f"unreadable NIfTI ({type(err).__name__})", path) from None
    if data.ndim != 3:
        raise DataError(f"expected a 3D mask, got shape {data.shape}", path)
    if data.dtype.kind == "f" and not np.isfinite(data).all():  # NaN > 0 is False: it would score as background
        raise DataError("the mask holds NaN or infinite values", path)
    if raw:
        if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.round(data)):
            raise DataError("a label map must hold integer values", path)
        return np.asarray(data).astype(np.int64), img.affine
    return data > 0, img.affine


def _region_files(pred_dir: Path, target: Target) -> dict[str, dict[str, Path]]:
    """``<region>/<case>.nii.gz`` masks (``predict --regions-as-files``): case -> region -> file,
    for the cases that have a mask of every region."""
    per_region = {r: _prediction_files(pred_dir / r) for r in target.classes if (pred_dir / r).is_dir()}
    if len(per_region) < len(target.classes):
        return {}
    cases = set.intersection(*(set(f) for f in per_region.values()))
    return {c: {r: per_region[r][c] for r in target.classes} for c in sorted(cases)}


def _region_prediction(case: str, label_maps: dict[str, Path], masks: dict[str, dict[str, Path]], target: Target,
                       shape: tuple[int, ...], ref_affine: np.ndarray, labels: set[int]) -> np.ndarray:
    """(R, *shape) predicted region masks of ``case`` on the reference grid."""
    if case in label_maps:
        values, affine = _load_mask(label_maps[case], raw=True)
        _check_label_values(values, labels, label_maps[case])
        pred = region_masks(apply_target(values, target), len(target.classes))
        path = label_maps[case]
    else:
        loaded = [_load_mask(masks[case][r]) for r in target.classes]
        if len({m.shape for m, _ in loaded}) > 1:
            raise DataError("the region masks of this case differ in shape", masks[case][target.classes[0]])
        pred, affine = np.stack([m for m, _ in loaded]), loaded[0][1]
        path = masks[case][target.classes[0]]
    if pred.shape[1:] != tuple(shape) or not np.allclose(affine, ref_affine, atol=1e-3):
        pred = np.stack([on_reference_grid(p, affine, shape, ref_affine, path) for p in pred])
    return pred


def _check_label_values(values: np.ndarray, labels: set[int], path: Path) -> None:
    """A label map must use the reference dataset's label values: a value it does not know would
    silently count as background (BraTS 2018 paints enhancing tumour 4, BraTS 2023 paints 3)."""
    foreign = sorted(set(np.unique(values).tolist()) - labels - {0})
    if foreign:
        shown = ", ".join(map(str, foreign[:8])) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise DataError(f"label map holds value(s) {shown}, which the reference's labels ({', '.join(map(str, sorted(labels)))}) "
                        "do not use; was it written in another labelling (e.g. BraTS 2018 against 2023)?", path)


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
    region_files: dict[str, dict[str, Path]] = {}
    if tgt.regions:
        region_files = _region_files(pred_dir, tgt)
        preds = {**{c: next(iter(f.values())) for c, f in region_files.items()}, **preds}
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

    coverage = {"n_expected": len(wanted), "n_found": len(wanted) - len(absent), "n_missing": len(absent),
                "missing_policy": missing, "cases_missing": absent,
                "cases_not_expected": sorted(set(preds) - set(wanted))}
    if tgt.regions:
        return _evaluate_regions(info, tgt, wanted, {c: p for c, p in _prediction_files(pred_dir).items()},
                                 region_files, out_dir, title, {**(extra or {}), "coverage": coverage}, progress)

    def pairs():
        for case in wanted:
            ref_case = read_label(info, case)
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
    return write_report(rows, out_dir, title, extra={**(extra or {}), "coverage": coverage})


def _evaluate_regions(info, target: Target, wanted: list[str], label_maps: dict[str, Path],
                      masks: dict[str, dict[str, Path]], out_dir: Path, title: str, extra: dict,
                      progress: bool) -> dict:
    """Every metric per region: label maps (or per-region masks) vs the reference's regions."""
    rows: dict[str, list[dict]] = {r: [] for r in target.classes}
    labels = set(info.label_names.values())
    for case in tqdm(wanted, desc="evaluate", unit="case", disable=not progress):
        ref_case = read_label(info, case)
        ref = region_masks(apply_target(ref_case.label, target), len(target.classes))
        found = case in label_maps or case in masks
        pred = (_region_prediction(case, label_maps, masks, target, ref.shape[1:], ref_case.affine, labels)
                if found else None)
        for k, r in enumerate(target.classes):
            if pred is None:
                rows[r].append({**worst_row(case, ref[k], ref_case.spacing), "prediction": "missing"})
            else:
                row = evaluate_pairs([(case, pred[k], ref[k], ref_case.spacing)], progress=False)[0]
                rows[r].append({**row, "prediction": "found"})
    return write_region_report(rows, out_dir, title, extra={"target": target.to_json(), **extra})
