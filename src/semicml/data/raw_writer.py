"""Writing a dataset in nnU-Net v2's raw layout (imagesTr/, labelsTr/, dataset.json), atomically.

Shared by the phantoms; the readers (``data/readers``) read this layout back.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from semicml.errors import DataError


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """A NIfTI in mm with the same qform and sform (readers that trust either agree)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_raw_dataset(out: Path, cases: int, write_case: Callable[[int, Path, Path], None], meta: dict) -> Path:
    """An nnU-Net v2 raw dataset at ``out``: ``write_case(k, imagesTr, labelsTr)`` for each case,
    then dataset.json (``meta`` plus ``numTraining``).

    Atomic: built in a temporary folder beside ``out`` and renamed into place, so ``out`` is
    either complete or absent. Refuses (DataError) when ``out`` exists and is not empty.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError("output exists and is not an empty folder; refusing to overwrite", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        for k in range(int(cases)):
            write_case(k, tmp / "imagesTr", tmp / "labelsTr")
        meta = {**meta, "numTraining": int(cases), "file_ending": ".nii.gz"}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a folder on every OS
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
