"""MSD (Medical Segmentation Decathlon) layout: ``dataset.json`` (``modality``, ``labels`` as
value -> name, ``training`` list of ``{"image", "label"}``, optional ``test`` list); images are 4D
(X, Y, Z, C), one file holding every modality.
"""

from __future__ import annotations

import os
from pathlib import Path

from semicml.data.readers.common import DatasetInfo, as_int, finish_info, load_json, require, strip_nifti
from semicml.data.readers.nifti import CaseLoader, single_loader
from semicml.errors import DataError

__all__ = ["open_msd", "single_modality_cases"]


def _msd_path(root: Path, entry: object, meta_path: Path, what: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise DataError(f"{what} entry {entry!r} is not a file path", meta_path)
    if "\0" in entry or os.path.isabs(entry) or Path(entry).drive or ".." in Path(entry).parts:
        raise DataError(f"{what} entry {entry!r} is not a path inside the dataset folder (absolute, '..' "
                        "or NUL)", meta_path)
    # normpath, not resolve(): keep the user's spelling (symlinks) in messages and sources
    return Path(os.path.normpath(root / entry))


def open_msd(root: Path) -> DatasetInfo:
    meta_path = root / "dataset.json"
    meta = load_json(meta_path)
    modality = require(meta, "modality", dict, meta_path, "MSD")
    labels = require(meta, "labels", dict, meta_path, "MSD")
    training = require(meta, "training", list, meta_path, "MSD")
    channels: dict[str, int] = {}
    for key, name in modality.items():  # type: ignore[union-attr]
        idx = as_int(key)
        if idx is None or idx < 0 or not isinstance(name, str):
            raise DataError(f"modality entry {key!r}: {name!r} is not '<index>': '<name>'", meta_path)
        channels[name] = idx
    label_names: dict[str, int] = {}
    for key, value in labels.items():  # type: ignore[union-attr]
        k, v = as_int(key), as_int(value)
        if k is not None and isinstance(value, str):  # MSD style: value -> name
            label_names[value] = k
        elif v is not None:  # tolerate nnU-Net style name -> value
            label_names[str(key)] = v
        else:
            raise DataError(f"labels entry {key!r}: {value!r} is neither value->name nor name->value", meta_path)
    if 0 not in label_names.values():
        label_names = {"background": 0, **label_names}
    label_names = dict(sorted(label_names.items(), key=lambda kv: kv[1]))

    image_files: dict[str, dict[str, Path]] = {}
    label_files: dict[str, Path] = {}

    def add(image: Path, label: Path | None) -> None:
        case_id = strip_nifti(image.name) or image.name
        if case_id in image_files:
            raise DataError(f"case '{case_id}' is listed twice", meta_path)
        image_files[case_id] = {m: image for m in channels}  # one 4D file holds every modality
        if label is not None:
            label_files[case_id] = label

    for item in training:  # type: ignore[union-attr]
        if not isinstance(item, dict) or "image" not in item:
            raise DataError(f"training entry {item!r} has no 'image'", meta_path)
        label = item.get("label")
        add(_msd_path(root, item["image"], meta_path, "training"),
            None if label is None else _msd_path(root, label, meta_path, "training"))
    for item in meta.get("test", []) or []:
        image = item.get("image") if isinstance(item, dict) else item
        add(_msd_path(root, image, meta_path, "test"), None)
    if not image_files:
        raise DataError("no cases found: 'training' and 'test' lists are empty", meta_path)
    modalities = sorted(channels, key=channels.__getitem__)
    return finish_info(root, "msd", modalities, label_names, image_files, label_files, channels, {})


def single_modality_cases(info: DatasetInfo, name: str, modality: str) -> list[tuple[str, CaseLoader]]:
    """Prediction inputs: the unlabelled (``test``) cases when there are any, else every case;
    channel ``name`` (the dataset's spelling of ``modality``) of each 4D image."""
    ids = [c for c in info.case_ids if not info.labeled[c]] or list(info.case_ids)
    return [(c, single_loader(c, info.image_files[c][name], modality, info.channels[name]))
            for c in sorted(ids)]
