"""nnU-Net v2 raw layout: ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
``imagesTr/<case>_<XXXX><ending>``, ``labelsTr/<case><ending>``, optional ``imagesTs``.

Cases in ``imagesTs``, or in ``imagesTr`` without a label, are unlabelled cases.
"""

from __future__ import annotations

import re
from pathlib import Path

from semicml.data.readers.common import (
    NIFTI_ENDINGS,
    DatasetInfo,
    as_int,
    finish_info,
    load_json,
    require,
    visible,
)
from semicml.data.readers.nifti import CaseLoader, single_loader
from semicml.errors import DataError

__all__ = ["open_nnunet", "single_modality_cases"]


def _parse_nnunet_labels(meta: dict, path: Path) -> tuple[dict[str, int], dict[str, list[int]]]:
    labels = require(meta, "labels", dict, path, "nnU-Net")
    names: dict[str, int] = {}
    regions: dict[str, list[int]] = {}
    for name, value in labels.items():  # type: ignore[union-attr]
        if isinstance(value, (list, tuple)):  # nnU-Net region-based entry, e.g. "tc": [2, 3]
            vals = [as_int(v) for v in value]
            if not vals or any(v is None for v in vals):
                raise DataError(f"label '{name}' has non-integer values {value!r}", path)
            regions[str(name)] = [int(v) for v in vals]  # type: ignore[arg-type]
            continue
        v = as_int(value)
        if v is None:
            raise DataError(f"label '{name}' has a non-integer value {value!r}", path)
        names[str(name)] = v
    if regions:  # region-based: every non-background entry is a region, in the declared order
        regions = {str(n): ([as_int(v)] if not isinstance(v, (list, tuple)) else [as_int(x) for x in v])
                   for n, v in labels.items() if isinstance(v, (list, tuple)) or as_int(v) != 0}  # type: ignore[misc]
        # the raw values are the members of the regions
        for v in sorted({v for vals in regions.values() for v in vals} - set(names.values())):
            names.setdefault(f"label_{v}", v)
    if 0 not in names.values():
        names = {"background": 0, **names}
    return dict(sorted(names.items(), key=lambda kv: kv[1])), regions


def open_nnunet(root: Path) -> DatasetInfo:
    meta_path = root / "dataset.json"
    meta = load_json(meta_path)
    channel_names = require(meta, "channel_names", dict, meta_path, "nnU-Net")
    ending = require(meta, "file_ending", str, meta_path, "nnU-Net")
    if ending.lower() not in NIFTI_ENDINGS:  # type: ignore[union-attr]
        raise DataError(f"file_ending '{ending}' is not supported (only .nii.gz and .nii)", meta_path)
    label_names, regions = _parse_nnunet_labels(meta, meta_path)
    channels: dict[str, int] = {}
    for key, name in channel_names.items():  # type: ignore[union-attr]
        idx = as_int(key)
        if idx is None or idx < 0 or not isinstance(name, str):
            raise DataError(f"channel_names entry {key!r}: {name!r} is not '<index>': '<name>'", meta_path)
        if name in channels:
            raise DataError(f"channel name '{name}' appears twice in channel_names", meta_path)
        channels[name] = idx
    modalities = sorted(channels, key=channels.__getitem__)
    by_id = {idx: name for name, idx in channels.items()}

    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")  # type: ignore[arg-type]
    image_files: dict[str, dict[str, Path]] = {}
    for sub in ("imagesTr", "imagesTs"):
        folder = root / sub
        if not folder.is_dir():
            continue
        found: dict[str, dict[str, Path]] = {}
        for f in visible(list(folder.iterdir())):
            m = pattern.match(f.name)
            if m is None:
                continue
            ch = int(m["ch"])
            if ch not in by_id:
                raise DataError(f"channel {ch:04d} is not declared in dataset.json channel_names", f)
            found.setdefault(m["case"], {})[by_id[ch]] = f
        for case_id, files in found.items():
            if case_id in image_files:
                raise DataError(f"case '{case_id}' appears in both imagesTr and imagesTs", folder)
            image_files[case_id] = files

    label_files: dict[str, Path] = {}
    labels_dir = root / "labelsTr"
    if labels_dir.is_dir():
        for f in visible(list(labels_dir.iterdir())):
            if not f.name.endswith(ending):  # type: ignore[arg-type]
                continue
            case_id = f.name[: -len(ending)]  # type: ignore[arg-type]
            if case_id not in image_files:
                raise DataError("label file has no matching images in imagesTr", f)
            label_files[case_id] = f
    if not image_files:
        raise DataError(
            f"no cases found: no imagesTr/imagesTs files named <case>_<XXXX>{ending}", root
        )
    info = finish_info(root, "nnunet", modalities, label_names, image_files, label_files, channels, regions)
    info.file_ending = ending  # type: ignore[assignment]
    order = meta.get("regions_class_order")
    if regions and order is not None:  # the value each region paints back into one label map
        values = [as_int(v) for v in order] if isinstance(order, list) else [None]
        if len(values) != len(regions) or any(v is None for v in values):
            raise DataError(f"regions_class_order must list one integer per region ({len(regions)}), got {order!r}",
                            meta_path)
        info.region_paint = [int(v) for v in values]  # type: ignore[arg-type]
    return info


def single_modality_cases(info: DatasetInfo, name: str, modality: str) -> list[tuple[str, CaseLoader]]:
    """Prediction inputs: ``imagesTs`` when it holds cases, else ``imagesTr``; every case of the
    chosen folder must have channel ``name`` (the dataset's spelling of ``modality``)."""
    def folder_of(c: str) -> str:
        return next(iter(info.image_files[c].values())).parent.name

    test_ids = [c for c in info.case_ids if folder_of(c) == "imagesTs"]
    ids = test_ids or [c for c in info.case_ids if folder_of(c) == "imagesTr"]
    out = []
    for c in sorted(ids):
        f = info.image_files[c].get(name)
        if f is None:  # every case of the chosen folder must have the channel
            expected = info.root / folder_of(c) / f"{c}_{info.channels[name]:04d}{info.file_ending}"
            raise DataError(f"missing {name} image file", expected)
        out.append((c, single_loader(c, f, modality)))
    return out
