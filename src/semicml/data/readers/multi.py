"""Inputs of fused prediction: for each case, the files of SEVERAL modalities (``predict
--modality t2,t1ce``), and the files that a case lacks.

Layouts: a dataset root with ``dataset.json`` (nnU-Net raw: ``imagesTs`` when it holds cases,
else ``imagesTr``, as for one modality; MSD: every channel of each 4D image), one BraTS case
folder or a folder of them, or a flat folder of ``<case>_<modality>.nii.gz`` files. A single
NIfTI file holds one modality and cannot be fused.

A case is listed when it has at least one requested modality; each absent (case, modality) pair
comes back as a :class:`MissingInput` with the path where the file was expected, so the caller
can stop with a one-line error naming it, or skip it and record that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semicml.data.readers.brats import BRATS_LABEL_SUFFIX, brats_case_folders, brats_files
from semicml.data.readers.common import match_modality, pick_modality
from semicml.data.readers.flat import nifti_files, read_flat_folder
from semicml.data.readers.nifti import CaseLoader, single_loader
from semicml.errors import DataError

__all__ = ["MissingInput", "read_modality_sets"]


@dataclass(frozen=True)
class MissingInput:
    """Case ``case_id`` has no file for ``modality``; it would be at ``expected``."""

    case_id: str
    modality: str
    expected: Path


CaseInputs = list[tuple[str, dict[str, CaseLoader]]]


def read_modality_sets(path: str | Path, modalities: list[str]) -> tuple[CaseInputs, list[MissingInput]]:
    """``([(case_id, {modality: loader})], missing)`` for the cases under ``path``.

    Each loader returns a :class:`~semicml.data.case.Case` holding only that modality (keyed by
    the name given here), on that file's own grid; the dict follows the order of ``modalities``.
    """
    if len({m.lower() for m in modalities}) != len(modalities) or not modalities:
        raise DataError(f"give each modality once: {', '.join(modalities) or 'none'}", path)
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError("input does not exist", root)
    if root.is_file():
        raise DataError("one NIfTI file holds one modality; fused prediction needs a folder with a file per "
                        "modality of each case", root)
    if (root / "dataset.json").is_file():
        return _from_dataset(root, modalities)
    own = brats_files(root, root.name)
    own.pop(BRATS_LABEL_SUFFIX, None)
    folders = [root] if own else brats_case_folders(root)
    if folders:
        return _from_case_folders(folders, modalities)
    return _from_flat_folder(root, modalities)


def _collect(case_ids: list[str], modalities: list[str], lookup) -> tuple[CaseInputs, list[MissingInput]]:
    """``lookup(case, modality) -> (loader | None, expected path)``."""
    found: CaseInputs = []
    missing: list[MissingInput] = []
    for c in case_ids:
        loaders: dict[str, CaseLoader] = {}
        for m in modalities:
            loader, expected = lookup(c, m)
            if loader is None:
                missing.append(MissingInput(c, m, expected))
            else:
                loaders[m] = loader
        if loaders:
            found.append((c, loaders))
    return found, missing


def _from_dataset(root: Path, modalities: list[str]) -> tuple[CaseInputs, list[MissingInput]]:
    from semicml.data.readers import open_dataset

    info = open_dataset(root)
    names = {m: pick_modality(info.modalities, m, root / "dataset.json") for m in modalities}
    if info.format == "msd":  # 4D images: every channel is in the one file
        ids = [c for c in info.case_ids if not info.labeled[c]] or list(info.case_ids)
        return _collect(sorted(ids), modalities, lambda c, m: (
            single_loader(c, info.image_files[c][names[m]], m, info.channels[names[m]]), None))

    def folder_of(c: str) -> str:
        return next(iter(info.image_files[c].values())).parent.name

    # nnU-Net: the folder rule of single-modality prediction
    test_ids = [c for c in info.case_ids if folder_of(c) == "imagesTs"]
    ids = test_ids or [c for c in info.case_ids if folder_of(c) == "imagesTr"]

    def lookup(c: str, m: str):
        f = info.image_files[c].get(names[m])
        expected = root / folder_of(c) / f"{c}_{info.channels[names[m]]:04d}{info.file_ending}"
        return (single_loader(c, f, m) if f is not None else None), expected

    return _collect(sorted(ids), modalities, lookup)


def _from_case_folders(folders: list[Path], modalities: list[str]) -> tuple[CaseInputs, list[MissingInput]]:
    by_case: dict[str, tuple[Path, dict[str, Path]]] = {}
    for d in folders:
        files = brats_files(d, d.name)
        files.pop(BRATS_LABEL_SUFFIX, None)
        by_case[d.name] = (d, files)

    def lookup(c: str, m: str):
        d, files = by_case[c]
        hit = _match(m, sorted(files), d)
        return (single_loader(c, files[hit], m) if hit else None), d / f"{c}_{m.lower()}.nii.gz"

    return _collect(sorted(by_case), modalities, lookup)


def _from_flat_folder(root: Path, modalities: list[str]) -> tuple[CaseInputs, list[MissingInput]]:
    # <case>_<modality>.nii.gz, every spelling of a modality (case1_t2, case2_T2, case3_t2w), read
    # by the same rule as single-modality prediction
    folder = read_flat_folder(root, nifti_files(root), modalities)
    files = {m: folder.files_of(m) for m in modalities}
    if not any(files.values()):
        raise DataError(f"no files named <case>_<modality>.nii.gz for {', '.join(modalities)}", root)
    case_ids = sorted({c for per_case in files.values() for c in per_case})

    def lookup(c: str, m: str):
        f = files[m].get(c)
        return (single_loader(c, f, m) if f is not None else None), root / f"{c}_{m.lower()}.nii.gz"

    return _collect(case_ids, modalities, lookup)


def _match(modality: str, available: list[str], where: Path) -> str | None:
    try:
        return match_modality(modality, available)
    except DataError as err:  # an ambiguous alias: name the folder
        raise DataError(err.problem, where) from None
