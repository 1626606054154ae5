"""BraTS layout: ``root/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.

``.nii`` is also accepted, and ``-`` as separator as in BraTS 2023. A case folder without
``_seg`` is unlabelled. Labels: 0 background, 1 necrotic core, 2 oedema, and enhancing tumour 4
(BraTS 2018-2021 names t1, t1ce, t2, flair) or 3 (BraTS 2023 names t1n, t1c, t2w, t2f).
"""

from __future__ import annotations

from pathlib import Path

from semicml.data.readers.common import DatasetInfo, finish_info, strip_nifti, visible
from semicml.errors import DataError

__all__ = ["BRATS_2023_LABELS", "BRATS_LABELS", "BRATS_LABEL_SUFFIX", "brats_case_folders", "brats_files", "named_labelling",
           "open_brats"]

BRATS_LABELS: dict[str, int] = {"background": 0, "ncr": 1, "ed": 2, "et": 4}
#: BraTS 2023 and later (``<case>-t1n / -t1c / -t2w / -t2f / -seg``) label enhancing tumour 3.
BRATS_2023_LABELS: dict[str, int] = {"background": 0, "ncr": 1, "ed": 2, "et": 3}
BRATS_2023_NAMES = frozenset({"t1n", "t1c", "t2w", "t2f"})
BRATS_2018_NAMES = frozenset({"t1", "t1ce", "t2", "flair"})

# Canonical order of BraTS modalities in DatasetInfo.modalities (others follow, sorted).
BRATS_ORDER = ("t1", "t1ce", "t2", "flair", "t1n", "t1c", "t2w", "t2f")
BRATS_LABEL_SUFFIX = "seg"


def brats_files(folder: Path, case_id: str) -> dict[str, Path]:
    """Lower-case suffix -> file for the ``<case>_<suffix>.nii[.gz]`` files in one case folder."""
    out: dict[str, Path] = {}
    for f in visible(list(folder.iterdir())):
        stem = strip_nifti(f.name)
        if stem is None or not f.is_file():
            continue
        for sep in ("_", "-"):
            if stem.startswith(case_id + sep) and len(stem) > len(case_id) + 1:
                suffix = stem[len(case_id) + 1 :].lower()
                if suffix in out:
                    raise DataError(f"two files for '{suffix}': {out[suffix].name} and {f.name}", folder)
                out[suffix] = f
                break
    return out


def brats_case_folders(root: Path) -> list[Path]:
    return [d for d in visible(list(root.iterdir())) if d.is_dir() and brats_files(d, d.name)]


def open_brats(root: Path) -> DatasetInfo:
    folders = brats_case_folders(root)
    if not folders:
        raise DataError("no cases found (expected <case>/<case>_<modality>.nii.gz)", root)
    image_files: dict[str, dict[str, Path]] = {}
    label_files: dict[str, Path] = {}
    seen: set[str] = set()
    for d in folders:
        files = brats_files(d, d.name)
        label = files.pop(BRATS_LABEL_SUFFIX, None)
        if label is not None:
            label_files[d.name] = label
        image_files[d.name] = files
        seen.update(files)
    modalities = [m for m in BRATS_ORDER if m in seen] + sorted(seen - set(BRATS_ORDER))
    if not modalities:
        raise DataError("no modality files found in the case folders", root)
    return finish_info(root, "brats", modalities, _labels_of(seen, root), image_files, label_files, {}, {})


def _labels_of(names: set[str], root: Path) -> dict[str, int]:
    """The label convention the file names tell: BraTS 2018-2021 (enhancing tumour 4) or 2023 and
    later (3). One dataset holds one convention: a mix would give one value two meanings."""
    old, new = sorted(names & BRATS_2018_NAMES), sorted(names & BRATS_2023_NAMES)
    if old and new:
        raise DataError(f"mixes BraTS 2018-2021 file names ({', '.join(old)}) and BraTS 2023 names "
                        f"({', '.join(new)}), which label enhancing tumour differently (4 and 3): one "
                        "convention per dataset", root)
    return dict(BRATS_2023_LABELS if new else BRATS_LABELS)


def named_labelling(names: set[str]) -> dict[str, int] | None:
    """The BraTS labelling that contrast names say WITHOUT doubt, or None: 2018-2021 needs ``t1ce``
    (``t1``, ``t2``, ``flair`` alone are everyone's names) and no other; 2023 needs ``t1n`` or
    ``t2f``, or ``t1c`` with ``t2w`` (``T2w`` alone is also BIDS), and no other. Prediction inputs
    are not refused for mixing conventions: they merely say nothing."""
    low = {n.lower() for n in names} - {BRATS_LABEL_SUFFIX}
    if low and low <= BRATS_2018_NAMES and "t1ce" in low:
        return dict(BRATS_LABELS)
    if low and low <= BRATS_2023_NAMES and (low & {"t1n", "t2f"} or {"t1c", "t2w"} <= low):
        return dict(BRATS_2023_LABELS)
    return None
