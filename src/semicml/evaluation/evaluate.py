"""``semicml evaluate``: predicted masks vs reference labels, in 3D on the original grid."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from ..data.readers import open_dataset, read_case
from ..data.targets import apply_target, resolve_target
from ..errors import DataError
from .report import evaluate_pairs, write_report


def _prediction_files(pred_dir: Path) -> dict[str, Path]:
    if not pred_dir.is_dir():
        raise DataError("prediction folder not found", pred_dir)
    files = {}
    for p in sorted(pred_dir.iterdir()):
        name = p.name
        if name.endswith("_prob.nii.gz") or not (name.endswith(".nii.gz") or name.endswith(".nii")):
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


def evaluate_predictions(pred_dir: str | Path, ref_root: str | Path, target: str, out_dir: str | Path,
                         fmt: str | None = None, cases: Iterable[str] | None = None, title: str = "evaluation",
                         extra: dict | None = None, progress: bool = True) -> dict:
    """Compare ``pred_dir/<case>.nii.gz`` with the labels of the dataset at ``ref_root``.

    ``cases``: the cases that must be evaluated (e.g. the test split); a missing prediction is an
    error, never a silently dropped case. Default: every prediction in the folder.
    """
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    preds = _prediction_files(pred_dir)
    info = open_dataset(ref_root, fmt)
    tgt = resolve_target(info, target)
    wanted = list(cases) if cases is not None else list(preds)
    if not wanted:
        raise DataError("no predictions (*.nii.gz) to evaluate", pred_dir)
    for case in wanted:
        if case not in preds:
            raise DataError(f"no prediction for case {case!r}", pred_dir)
        if case not in info.labeled or not info.labeled[case]:
            raise DataError(f"case {case!r} has no reference label", ref_root)

    def pairs():
        for case in wanted:
            pred, pred_affine = _load_mask(preds[case])
            ref_case = read_case(info, case, info.modalities[:1], with_label=True)
            ref = apply_target(ref_case.label, tgt) > 0
            if pred.shape != ref.shape:
                raise DataError(f"prediction shape {pred.shape} differs from the reference {ref.shape}", preds[case])
            if not np.allclose(pred_affine, ref_case.affine, atol=1e-3):
                raise DataError("prediction affine differs from the reference image's affine", preds[case])
            yield case, pred, ref, ref_case.spacing

    rows = evaluate_pairs(pairs(), progress=progress)
    return write_report(rows, out_dir, title, extra=extra)
