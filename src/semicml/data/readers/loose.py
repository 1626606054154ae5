"""Single-modality inputs without a dataset.json, for ``predict``: one NIfTI file, one BraTS case
folder, a BraTS folder of case folders, or a flat folder of NIfTI files.
"""

from __future__ import annotations

from pathlib import Path

from semicml.data.readers.brats import BRATS_LABEL_SUFFIX, brats_case_folders, brats_files
from semicml.data.readers.common import MODALITY_ALIASES, pick_modality, strip_nifti, visible
from semicml.data.readers.nifti import CaseLoader, single_loader
from semicml.errors import DataError

__all__ = ["read_loose"]


def read_loose(root: Path, modality: str) -> list[tuple[str, CaseLoader]]:
    """(case_id, lazy loader) pairs for ``modality`` under ``root`` (a file or a folder)."""
    if root.is_file():
        stem = strip_nifti(root.name)
        if stem is None:
            raise DataError("not a NIfTI file (.nii or .nii.gz)", root)
        return [(stem, single_loader(stem, root, modality))]

    # A single BraTS case folder: <root>/<root.name>_<modality>.nii.gz
    own = brats_files(root, root.name)
    own.pop(BRATS_LABEL_SUFFIX, None)  # the label is never an input modality
    if own:
        hit = pick_modality(sorted(own), modality, root)
        return [(root.name, single_loader(root.name, own[hit], modality))]

    folders = brats_case_folders(root)
    if folders:
        out = []
        for d in folders:
            files = brats_files(d, d.name)
            files.pop(BRATS_LABEL_SUFFIX, None)
            hit = pick_modality(sorted(files), modality, d)
            out.append((d.name, single_loader(d.name, files[hit], modality)))
        return out

    files = [f for f in visible(list(root.iterdir())) if f.is_file() and strip_nifti(f.name)]
    if not files:
        raise DataError("empty folder: no NIfTI files or cases found", root)
    # Flat folder. If the files carry modality suffixes (case1_t2.nii.gz, case1_t1ce.nii.gz),
    # take only the requested one; otherwise every file is one case of that modality.
    tokens = sorted({t for g in MODALITY_ALIASES for t in g} | {modality.lower()}, key=len, reverse=True)
    suffixed: dict[str, dict[str, Path]] = {}
    for f in files:
        stem = strip_nifti(f.name) or ""
        low = stem.lower()
        for tok in tokens:  # longest first, so "_t1ce" is not read as "_t1" + "ce"
            if len(low) > len(tok) + 1 and low.endswith(tok) and low[-len(tok) - 1] in "_-":
                suffixed.setdefault(stem[-len(tok):], {})[stem[: -len(tok) - 1]] = f
                break
    if suffixed:
        hit = pick_modality(sorted(suffixed), modality, root)
        return [(c, single_loader(c, f, modality)) for c, f in sorted(suffixed[hit].items())]
    out = []
    for f in files:
        stem = strip_nifti(f.name) or f.name
        out.append((stem, single_loader(stem, f, modality)))
    return out
