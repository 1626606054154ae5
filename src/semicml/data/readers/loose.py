"""Single-modality inputs without a dataset.json, for ``predict``: one NIfTI file, one BraTS case
folder, a BraTS folder of case folders, or a flat folder of NIfTI files.
"""

from __future__ import annotations

import re
from pathlib import Path

from semicml.data.readers.brats import BRATS_LABEL_SUFFIX, brats_case_folders, brats_files
from semicml.data.readers.common import pick_modality, strip_nifti
from semicml.data.readers.flat import nifti_files, read_flat_folder
from semicml.data.readers.nifti import CaseLoader, single_loader
from semicml.errors import DataError

__all__ = ["read_loose"]


def read_loose(root: Path, modality: str) -> list[tuple[str, CaseLoader]]:
    """(case_id, lazy loader) pairs for ``modality`` under ``root`` (a file or a folder)."""
    if root.is_file():
        stem = strip_nifti(root.name)
        if stem is None:
            raise DataError("not a NIfTI file (.nii or .nii.gz)", root)
        if _CHANNEL.match(stem) and stem.endswith("_0000"):  # nnU-Net's only channel: named as its case
            stem = stem[:-5]
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

    files = nifti_files(root)
    if not files:
        raise DataError("empty folder: no NIfTI files or cases found", root)
    return _flat_folder(root, files, modality)


def _flat_folder(root: Path, files: list[Path], modality: str) -> list[tuple[str, CaseLoader]]:
    """A flat folder. Files named ``<case>_<modality>`` (any known spelling: t2, T2, t2w, ...;
    names read by :mod:`.flat`, as fused prediction reads them): the requested modality's, one per
    case; files without a modality suffix: one case each. A mix is refused rather than guessed,
    except for a file that is another modality of a named case."""
    folder = read_flat_folder(root, files, [modality])
    if not folder.named:
        return _plain_files(root, files, modality)
    cases = {case for case, _, _ in folder.named}
    # "<case>_pet" beside "<case>_ct": another modality of a named case, not a case of its own
    unknown = [f for f in folder.plain if not any((strip_nifti(f.name) or "").startswith(c + sep)
                                                  for c in cases for sep in "_-")]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise DataError(f"mixes files named <case>_<modality> ({folder.named[0][2].name}) with files without a "
                        f"modality suffix ({unknown[0].name}{more}): which modality those are is unknown; rename "
                        "them <case>_<modality>.nii.gz or give them in a folder of their own", root)
    wanted = folder.files_of(modality)
    if not wanted:
        raise DataError(f"modality '{modality}' not found; available: {', '.join(folder.suffixes())}", root)
    return [(c, single_loader(c, f, modality)) for c, f in wanted.items()]


_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _plain_files(root: Path, files: list[Path], modality: str) -> list[tuple[str, CaseLoader]]:
    """Every file one case of ``modality``, named by its stem; nnU-Net's single-channel files
    (all ``<case>_0000``) by the case (so masks match labelsTr's names); several nnU-Net channels
    per case without a dataset.json to say which one is ``modality``: refused, since reading every
    file as a case would run one modality's network on every channel."""
    stems = [strip_nifti(f.name) or f.name for f in files]
    channels: dict[str, set[str]] = {}
    for stem in stems:
        hit = _CHANNEL.match(stem)
        if hit is None:
            return [(stem, single_loader(stem, f, modality)) for stem, f in zip(stems, files)]
        channels.setdefault(hit["case"], set()).add(hit["ch"])
    if all(v == {"0000"} for v in channels.values()):
        return [(stem[:-5], single_loader(stem[:-5], f, modality)) for stem, f in zip(stems, files)]
    sets = {frozenset(v) for v in channels.values()}
    if len(sets) == 1 and "0000" in next(iter(sets)):  # the same channels _0000, _0001, ... for every case
        found = ", ".join("_" + c for c in sorted(next(iter(sets))))
        raise DataError(f"holds nnU-Net channel files ({found} for every case) but no dataset.json says which "
                        f"channel is {modality}: give the dataset folder that holds dataset.json (or its "
                        "imagesTr / imagesTs folder)", root)
    return [(stem, single_loader(stem, f, modality)) for stem, f in zip(stems, files)]
