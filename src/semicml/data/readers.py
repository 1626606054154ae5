"""Read the three on-disk layouts users have (BraTS, nnU-Net v2 raw, MSD) into :class:`Case`.

Every reader validates what it reads and reports problems as a one-line :class:`DataError` that
names the offending file, so the CLI can print it without a traceback.

Layouts
-------
* **BraTS**: ``root/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (``.nii`` also accepted, ``-``
  accepted as separator as in BraTS 2023). A case folder without ``_seg`` is unlabelled.
* **nnU-Net v2 raw**: ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
  ``imagesTr/<case>_<XXXX><ending>``, ``labelsTr/<case><ending>``, optional ``imagesTs``.
  Cases in ``imagesTs``, or in ``imagesTr`` without a label, are unlabelled cases.
* **MSD**: ``dataset.json`` (``modality``, ``labels`` as value -> name, ``training`` list of
  ``{"image", "label"}``, optional ``test`` list); images are 4D (X, Y, Z, C).

Modalities are always matched by **name** (case-insensitive, with aliases such as
``t1gd`` == ``t1ce``), never by position, because converted datasets order channels differently.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from semicml.data.case import Case
from semicml.errors import DataError

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "BRATS_LABELS",
    "DatasetInfo",
    "FORMATS",
    "MODALITY_ALIASES",
    "detect_format",
    "open_dataset",
    "read_case",
    "read_single_modality",
    "resolve_modalities",
]

#: Two volumes are "on the same grid" when their affines differ by at most this (mm).
AFFINE_TOLERANCE_MM = 1e-3

FORMATS = ("brats", "nnunet", "msd")

BRATS_LABELS: dict[str, int] = {"background": 0, "ncr": 1, "ed": 2, "et": 4}

#: Groups of names that denote the same MRI contrast (compared lower-case).
MODALITY_ALIASES: tuple[frozenset[str], ...] = (
    frozenset({"t1ce", "t1gd", "t1c", "t1-ce", "t1_ce", "t1-gd", "t1post"}),
    frozenset({"t2", "t2w"}),
    frozenset({"t1", "t1w", "t1n"}),
    frozenset({"flair", "t2-flair", "t2_flair", "t2flair", "t2f"}),
)

# Canonical order of BraTS modalities in DatasetInfo.modalities (others follow, sorted).
_BRATS_ORDER = ("t1", "t1ce", "t2", "flair")
_BRATS_LABEL_SUFFIX = "seg"
_NIFTI_ENDINGS = (".nii.gz", ".nii")

# Errors that nibabel / gzip / zlib raise on unreadable or truncated files.
_READ_ERRORS = (ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, struct.error)


@dataclass
class DatasetInfo:
    """What :func:`open_dataset` found; everything needed to read any case later.

    The public fields are the contract; the ``image_files`` / ``label_files`` / ``channels``
    fields are the reader's index (modality name -> file per case; MSD channel index).
    """

    root: Path
    format: str
    modalities: list[str]
    label_names: dict[str, int]
    case_ids: list[str]
    labeled: dict[str, bool]
    image_files: dict[str, dict[str, Path]] = field(default_factory=dict, repr=False)
    label_files: dict[str, Path] = field(default_factory=dict, repr=False)
    channels: dict[str, int] = field(default_factory=dict, repr=False)
    #: nnU-Net region-based label entries (name -> several values), usable as target names.
    label_regions: dict[str, list[int]] = field(default_factory=dict, repr=False)
    file_ending: str = ".nii.gz"

    @property
    def labeled_ids(self) -> list[str]:
        return [c for c in self.case_ids if self.labeled[c]]

    @property
    def unlabeled_ids(self) -> list[str]:
        return [c for c in self.case_ids if not self.labeled[c]]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _strip_nifti(name: str) -> str | None:
    """File name without its NIfTI ending, or None when it is not a NIfTI file."""
    lower = name.lower()
    for ending in _NIFTI_ENDINGS:
        if lower.endswith(ending):
            return name[: -len(ending)]
    return None


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _alias_group(name: str) -> frozenset[str] | None:
    low = name.lower()
    for group in MODALITY_ALIASES:
        if low in group:
            return group
    return None


def _match_modality(requested: str, available: list[str]) -> str | None:
    """The name in ``available`` that ``requested`` denotes; exact > case-insensitive > alias.

    Raises DataError (without a path; callers re-raise with one) when an alias is ambiguous.
    """
    if requested in available:
        return requested
    low = requested.strip().lower()
    folded = [a for a in available if a.lower() == low]
    if len(folded) == 1:
        return folded[0]
    group = _alias_group(low)
    if group is None:
        return None
    hits = [a for a in available if a.lower() in group]
    if len(hits) > 1:
        raise DataError(f"modality '{requested}' is ambiguous: it could be any of {', '.join(hits)}")
    return hits[0] if hits else None


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg} at line {err.lineno})", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read ({err})", path) from None
    if not isinstance(data, dict):
        raise DataError("not valid dataset.json: expected a JSON object at the top level", path)
    return data


def _require(meta: dict, key: str, kind: type, path: Path, fmt: str) -> object:
    if key not in meta:
        raise DataError(f"missing required field '{key}' ({fmt} dataset.json)", path)
    value = meta[key]
    if not isinstance(value, kind) or (kind is not str and not value):
        raise DataError(f"field '{key}' must be a non-empty {kind.__name__}", path)
    return value


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


# --------------------------------------------------------------------------------------------
# NIfTI loading with validation
# --------------------------------------------------------------------------------------------


@dataclass
class _Volume:
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header


def _load(path: Path, what: str) -> _Volume:
    """Load header and data eagerly so corrupt and truncated files fail here, with the file name."""
    if not path.is_file():
        raise DataError(f"missing {what} file", path)
    try:
        if path.name.lower().endswith(".gz"):
            # Decompress the whole stream ourselves: gzip checks the CRC and length at the end,
            # which nibabel never reaches (it stops after the voxel bytes), so a damaged deflate
            # stream would otherwise decode silently into garbage voxels.
            img = _nifti_from_bytes(gzip.decompress(path.read_bytes()))
        else:
            img = nib.load(str(path))
        data = np.asarray(img.dataobj)  # eager: a truncated file fails now, not later
    except DataError as err:
        raise DataError(err.problem, path) from None
    except _READ_ERRORS as err:
        detail = " ".join(str(err).replace(str(path), path.name).split())[:160]
        raise DataError(f"corrupt or truncated NIfTI file ({type(err).__name__}: {detail})", path) from None
    return _Volume(data, np.asarray(img.affine, dtype=np.float64), img.header)


def _nifti_from_bytes(raw: bytes) -> nib.Nifti1Image:
    """A single-file NIfTI-1 or NIfTI-2 image from its uncompressed bytes."""
    if len(raw) < 4:
        raise DataError("corrupt or truncated NIfTI file (empty)")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizes:
        return nib.Nifti1Image.from_bytes(raw)
    if 540 in sizes:
        return nib.Nifti2Image.from_bytes(raw)
    raise DataError("not a NIfTI file (bad header size; corrupt?)")


def _squeeze_to(data: np.ndarray, ndim: int) -> np.ndarray:
    # NIfTI files often carry trailing singleton dimensions (e.g. X, Y, Z, 1); they are harmless.
    while data.ndim > ndim and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _check_finite(data: np.ndarray, path: Path) -> None:
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        n_bad = int(bad.sum())
        if n_bad:
            n_nan = int(np.isnan(data).sum())
            raise DataError(
                f"image contains NaN/Inf values ({n_nan} NaN and {n_bad - n_nan} Inf voxels)",
                path,
            )


def _image_3d(img: _Volume, path: Path) -> np.ndarray:
    data = _squeeze_to(img.data, 3)
    if data.ndim != 3:
        kind = f"{data.ndim}D"
        raise DataError(f"{kind} image of shape {tuple(data.shape)} where a 3D volume is expected", path)
    _check_finite(data, path)
    return _float32(data)


def _image_channel(img: _Volume, path: Path, channel: int, modality: str) -> np.ndarray:
    data = _squeeze_to(img.data, 4)
    if data.ndim != 4:
        raise DataError(
            f"{data.ndim}D image of shape {tuple(data.shape)} where a 4D (X, Y, Z, C) MSD image is expected",
            path,
        )
    if not 0 <= channel < data.shape[3]:
        raise DataError(
            f"channel index {channel} ({modality}) out of range: the image has {data.shape[3]} channels",
            path,
        )
    out = _float32(data[..., channel])
    _check_finite(out, path)
    return out


def _label_3d(img: _Volume, path: Path, allowed: set[int] | None) -> np.ndarray:
    data = _squeeze_to(img.data, 3)
    if data.ndim != 3:
        raise DataError(f"{data.ndim}D label of shape {tuple(data.shape)} where a 3D volume is expected", path)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise DataError("label contains NaN/Inf values", path)
        rounded = np.rint(data)
        if np.abs(rounded - data).max(initial=0.0) > 1e-3:
            raise DataError("label contains non-integer values (was it resampled with interpolation?)", path)
        data = rounded
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    dtype = np.uint8 if lo >= 0 and hi <= 255 else np.int16
    if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max:
        raise DataError(f"label values out of range [{lo}, {hi}]", path)
    label = data.astype(dtype, copy=False)
    if allowed is not None and not _all_in(label, allowed, lo, hi):
        bad = sorted(set(_unique_small(label)) - allowed)
        if bad:
            raise DataError(
                f"label values {bad} not in the declared label set {sorted(allowed)}", path
            )
    return label


def _all_in(label: np.ndarray, allowed: set[int], lo: int, hi: int) -> bool:
    """Whether every voxel value is in ``allowed`` (one table lookup; unique() only on failure)."""
    if label.size == 0:
        return True
    table = np.zeros(hi - lo + 1, dtype=bool)
    for v in allowed:
        if lo <= v <= hi:
            table[v - lo] = True
    flat = label.ravel(order="K")
    return bool(table[flat if lo == 0 else flat.astype(np.int32) - lo].all())


def _unique_small(label: np.ndarray) -> list[int]:
    """np.unique for integer volumes, via bincount (much faster on 9M-voxel BraTS labels)."""
    if label.size == 0:
        return []
    flat = label.ravel(order="K")  # no copy for Fortran-ordered NIfTI data
    if flat.dtype == np.uint8:
        return [int(v) for v in np.flatnonzero(np.bincount(flat))]
    lo = int(flat.min())
    return [int(v) + lo for v in np.flatnonzero(np.bincount(flat.astype(np.int32) - lo))]


def _float32(data: np.ndarray) -> np.ndarray:
    """float32 in the file's memory layout (NIfTI is Fortran-ordered: axial slices contiguous);
    a copy unless already float32 and writeable."""
    out = data.astype(np.float32, copy=False)
    return out if out.flags.writeable else out.copy(order="K")


def _spacing(header: object) -> tuple[float, float, float]:
    zooms = header.get_zooms()  # type: ignore[attr-defined]
    z = [float(v) for v in zooms[:3]] + [1.0] * max(0, 3 - len(zooms))
    return (z[0], z[1], z[2])


def _header_3d(img: _Volume, shape: tuple[int, ...]) -> object:
    """A copy of the header describing a 3D volume (MSD headers are 4D)."""
    header = img.header.copy()
    if len(header.get_data_shape()) != 3:
        header.set_data_shape(shape)
    return header


def _check_same_grid(
    shape: tuple[int, ...], affine: np.ndarray, path: Path,
    ref_shape: tuple[int, ...], ref_affine: np.ndarray, ref_path: Path, what: str,
) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DataError(
            f"{what} shape {tuple(shape)} differs from shape {tuple(ref_shape)} of {ref_path.name}", path
        )
    diff = float(np.abs(np.asarray(affine, float) - np.asarray(ref_affine, float)).max())
    if diff > AFFINE_TOLERANCE_MM:
        raise DataError(
            f"{what} affine differs from the affine of {ref_path.name} by {diff:.4g} mm "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm); volumes are not on the same grid",
            path,
        )


# --------------------------------------------------------------------------------------------
# format detection and indexing
# --------------------------------------------------------------------------------------------


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError("dataset root does not exist", path)
    if not path.is_dir():
        raise DataError("dataset root is not a folder", path)
    return path


def _brats_files(folder: Path, case_id: str) -> dict[str, Path]:
    """Lower-case suffix -> file for the ``<case>_<suffix>.nii[.gz]`` files in one case folder."""
    out: dict[str, Path] = {}
    for f in _visible(list(folder.iterdir())):
        stem = _strip_nifti(f.name)
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


def _brats_case_folders(root: Path) -> list[Path]:
    return [d for d in _visible(list(root.iterdir())) if d.is_dir() and _brats_files(d, d.name)]


def detect_format(root: Path) -> str:
    """``"nnunet"``, ``"msd"`` (by their dataset.json) or ``"brats"`` (case folders)."""
    root = _check_root(root)
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = _load_json(meta_path)
        if "channel_names" in meta:
            return "nnunet"
        if "modality" in meta or "training" in meta:
            return "msd"
        raise DataError(
            "missing required field: neither 'channel_names' (nnU-Net) nor 'modality' (MSD)", meta_path
        )
    if _brats_case_folders(root):
        return "brats"
    if not _visible(list(root.iterdir())):
        raise DataError("empty folder: no cases found", root)
    raise DataError(
        "no cases found: no dataset.json (nnU-Net/MSD) and no BraTS case folders "
        "(<case>/<case>_<modality>.nii.gz)",
        root,
    )


def _open_brats(root: Path) -> DatasetInfo:
    folders = _brats_case_folders(root)
    if not folders:
        raise DataError("no cases found (expected <case>/<case>_<modality>.nii.gz)", root)
    image_files: dict[str, dict[str, Path]] = {}
    label_files: dict[str, Path] = {}
    seen: set[str] = set()
    for d in folders:
        files = _brats_files(d, d.name)
        label = files.pop(_BRATS_LABEL_SUFFIX, None)
        if label is not None:
            label_files[d.name] = label
        image_files[d.name] = files
        seen.update(files)
    modalities = [m for m in _BRATS_ORDER if m in seen] + sorted(seen - set(_BRATS_ORDER))
    if not modalities:
        raise DataError("no modality files found in the case folders", root)
    return _finish(root, "brats", modalities, dict(BRATS_LABELS), image_files, label_files, {}, {})


def _parse_nnunet_labels(meta: dict, path: Path) -> tuple[dict[str, int], dict[str, list[int]]]:
    labels = _require(meta, "labels", dict, path, "nnU-Net")
    names: dict[str, int] = {}
    regions: dict[str, list[int]] = {}
    for name, value in labels.items():  # type: ignore[union-attr]
        if isinstance(value, (list, tuple)):  # nnU-Net region-based entry, e.g. "tc": [2, 3]
            vals = [_as_int(v) for v in value]
            if not vals or any(v is None for v in vals):
                raise DataError(f"label '{name}' has non-integer values {value!r}", path)
            regions[str(name)] = [int(v) for v in vals]  # type: ignore[arg-type]
            continue
        v = _as_int(value)
        if v is None:
            raise DataError(f"label '{name}' has a non-integer value {value!r}", path)
        names[str(name)] = v
    if regions:  # region-based: the raw values are the members of the regions
        for v in sorted({v for vals in regions.values() for v in vals} - set(names.values())):
            names.setdefault(f"label_{v}", v)
    if 0 not in names.values():
        names = {"background": 0, **names}
    return dict(sorted(names.items(), key=lambda kv: kv[1])), regions


def _open_nnunet(root: Path) -> DatasetInfo:
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    channel_names = _require(meta, "channel_names", dict, meta_path, "nnU-Net")
    ending = _require(meta, "file_ending", str, meta_path, "nnU-Net")
    if ending.lower() not in _NIFTI_ENDINGS:  # type: ignore[union-attr]
        raise DataError(f"file_ending '{ending}' is not supported (only .nii.gz and .nii)", meta_path)
    label_names, regions = _parse_nnunet_labels(meta, meta_path)
    channels: dict[str, int] = {}
    for key, name in channel_names.items():  # type: ignore[union-attr]
        idx = _as_int(key)
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
        for f in _visible(list(folder.iterdir())):
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
        for f in _visible(list(labels_dir.iterdir())):
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
    info = _finish(root, "nnunet", modalities, label_names, image_files, label_files, channels, regions)
    info.file_ending = ending  # type: ignore[assignment]
    return info


def _msd_path(root: Path, entry: object, meta_path: Path, what: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise DataError(f"{what} entry {entry!r} is not a file path", meta_path)
    # normpath, not resolve(): keep the user's spelling (symlinks) in messages and sources
    return Path(os.path.normpath(root / entry))


def _open_msd(root: Path) -> DatasetInfo:
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    modality = _require(meta, "modality", dict, meta_path, "MSD")
    labels = _require(meta, "labels", dict, meta_path, "MSD")
    training = _require(meta, "training", list, meta_path, "MSD")
    channels: dict[str, int] = {}
    for key, name in modality.items():  # type: ignore[union-attr]
        idx = _as_int(key)
        if idx is None or idx < 0 or not isinstance(name, str):
            raise DataError(f"modality entry {key!r}: {name!r} is not '<index>': '<name>'", meta_path)
        channels[name] = idx
    label_names: dict[str, int] = {}
    for key, value in labels.items():  # type: ignore[union-attr]
        k, v = _as_int(key), _as_int(value)
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
        case_id = _strip_nifti(image.name) or image.name
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
    return _finish(root, "msd", modalities, label_names, image_files, label_files, channels, {})


def _finish(
    root: Path, fmt: str, modalities: list[str], label_names: dict[str, int],
    image_files: dict[str, dict[str, Path]], label_files: dict[str, Path],
    channels: dict[str, int], regions: dict[str, list[int]],
) -> DatasetInfo:
    labelled = sorted(c for c in image_files if c in label_files)
    unlabelled = sorted(c for c in image_files if c not in label_files)
    return DatasetInfo(
        root=root, format=fmt, modalities=modalities, label_names=label_names,
        case_ids=labelled + unlabelled, labeled={c: c in label_files for c in image_files},
        image_files=image_files, label_files=label_files, channels=channels, label_regions=regions,
    )


def open_dataset(root: str | Path, fmt: str | None = None) -> DatasetInfo:
    """Index a dataset folder (format detected unless ``fmt`` is given) and validate its layout.

    Only the layout and metadata are checked here; file contents are validated by
    :func:`read_case`.
    """
    path = _check_root(root)
    if fmt is None:
        fmt = detect_format(path)
    fmt_l = fmt.strip().lower().replace("-", "").replace("_", "")
    fmt_l = {"nnunetv2": "nnunet", "decathlon": "msd"}.get(fmt_l, fmt_l)
    if fmt_l not in FORMATS:
        raise DataError(f"unknown dataset format '{fmt}'; choose one of {', '.join(FORMATS)}", path)
    if fmt_l in ("nnunet", "msd") and not (path / "dataset.json").is_file():
        raise DataError(f"missing dataset.json required by the {fmt_l} format", path / "dataset.json")
    return {"brats": _open_brats, "nnunet": _open_nnunet, "msd": _open_msd}[fmt_l](path)


def resolve_modalities(info: DatasetInfo, requested: list[str]) -> list[str]:
    """Map user-given modality names to the dataset's spelling (exact, case-insensitive, alias)."""
    if isinstance(requested, str):
        requested = [requested]
    if not requested:
        raise DataError("no modality requested", info.root)
    out: list[str] = []
    for name in requested:
        try:
            hit = _match_modality(str(name), info.modalities)
        except DataError as err:
            raise DataError(err.problem, info.root) from None
        if hit is None:
            raise DataError(
                f"unknown modality '{name}'; available: {', '.join(info.modalities)}", info.root
            )
        if hit in out:
            raise DataError(f"modality '{hit}' requested twice (as '{name}')", info.root)
        out.append(hit)
    return out


def read_case(info: DatasetInfo, case_id: str, modalities: list[str], with_label: bool = True) -> Case:
    """Read and validate one case: the requested modalities (dataset or user names) and its label.

    Images come back as float32, the label as uint8 (int16 if values need it), or None for an
    unlabelled case or when ``with_label`` is False.
    """
    if case_id not in info.image_files:
        raise DataError(f"unknown case '{case_id}'", info.root)
    names = resolve_modalities(info, modalities)
    files = info.image_files[case_id]
    images: dict[str, np.ndarray] = {}
    sources: dict[str, Path] = {}
    ref: tuple[tuple[int, ...], np.ndarray, Path, object, str] | None = None
    cache: dict[Path, _Volume] = {}  # MSD: one 4D file serves every modality
    for name in names:
        path = files.get(name) or _expected_path(info, case_id, name)
        if path not in cache:
            cache[path] = _load(path, f"{name} image")
        img = cache[path]
        if info.format == "msd":
            data = _image_channel(img, path, info.channels[name], name)
        else:
            data = _image_3d(img, path)
        if ref is None:
            ref = (data.shape, img.affine, path, _header_3d(img, data.shape), name)
        else:
            _check_same_grid(data.shape, img.affine, path, ref[0], ref[1], ref[2], f"{name} image")
        images[name] = data
        sources[name] = path
    assert ref is not None
    label = None
    if with_label and case_id in info.label_files:
        lpath = info.label_files[case_id]
        limg = _load(lpath, "label")
        allowed = set(info.label_names.values())
        label = _label_3d(limg, lpath, allowed)
        _check_same_grid(label.shape, limg.affine, lpath, ref[0], ref[1], ref[2], "label")
        sources["label"] = lpath
    return Case(
        case_id=case_id, images=images, label=label, affine=np.asarray(ref[1], dtype=np.float64),
        header=ref[3], spacing=_spacing(ref[3]), sources=sources,
    )


def _expected_path(info: DatasetInfo, case_id: str, modality: str) -> Path:
    """Where a missing modality file would be, for the error message."""
    if info.format == "brats":
        return info.root / case_id / f"{case_id}_{modality}.nii.gz"
    if info.format == "nnunet":
        present = list(info.image_files[case_id].values())  # same folder as the case's other channels
        folder = present[0].parent if present else info.root / "imagesTr"
        return folder / f"{case_id}_{info.channels[modality]:04d}{info.file_ending}"
    return next(iter(info.image_files[case_id].values()))


# --------------------------------------------------------------------------------------------
# single-modality input for prediction
# --------------------------------------------------------------------------------------------

CaseLoader = Callable[[], Case]


def _single_loader(case_id: str, path: Path, modality: str, channel: int | None = None) -> CaseLoader:
    def load() -> Case:
        img = _load(path, f"{modality} image")
        if channel is None:
            data = _image_3d(img, path)
        else:
            data = _image_channel(img, path, channel, modality)
        header = _header_3d(img, data.shape)
        return Case(
            case_id=case_id, images={modality: data}, label=None,
            affine=np.asarray(img.affine, dtype=np.float64), header=header,
            spacing=_spacing(header), sources={modality: path},
        )

    return load


def _pick(available: list[str], modality: str, where: Path) -> str:
    try:
        hit = _match_modality(modality, available)
    except DataError as err:
        raise DataError(err.problem, where) from None
    if hit is None:
        raise DataError(
            f"modality '{modality}' not found; available: {', '.join(available) or 'none'}", where
        )
    return hit


def read_single_modality(path: str | Path, modality: str) -> list[tuple[str, CaseLoader]]:
    """(case_id, lazy loader) pairs for the cases under ``path`` that have ``modality``.

    ``path`` may be a BraTS folder of case folders or a single case folder, an nnU-Net raw folder
    (``imagesTs`` is used when it holds that channel, else ``imagesTr``), an MSD root (the
    ``test`` list when non-empty, else ``training``), a folder of plain NIfTI files (one case
    each), or one NIfTI file. Each loader returns a :class:`Case` whose ``images`` holds only
    ``modality`` (keyed by the name given here) and whose label is None.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError("input does not exist", root)
    if root.is_file():
        stem = _strip_nifti(root.name)
        if stem is None:
            raise DataError("not a NIfTI file (.nii or .nii.gz)", root)
        return [(stem, _single_loader(stem, root, modality))]

    if (root / "dataset.json").is_file():
        fmt = detect_format(root)
        info = open_dataset(root, fmt)
        name = _pick(info.modalities, modality, root / "dataset.json")
        if fmt == "nnunet":
            def folder_of(c: str) -> str:
                return next(iter(info.image_files[c].values())).parent.name

            test_ids = [c for c in info.case_ids if folder_of(c) == "imagesTs"]
            ids = test_ids or [c for c in info.case_ids if folder_of(c) == "imagesTr"]
            out = []
            for c in sorted(ids):
                f = info.image_files[c].get(name)
                if f is None:  # every case of the chosen folder must have the channel
                    expected = root / folder_of(c) / f"{c}_{info.channels[name]:04d}{info.file_ending}"
                    raise DataError(f"missing {name} image file", expected)
                out.append((c, _single_loader(c, f, modality)))
            return out
        ids = [c for c in info.case_ids if not info.labeled[c]] or list(info.case_ids)
        return [(c, _single_loader(c, info.image_files[c][name], modality, info.channels[name]))
                for c in sorted(ids)]

    # A single BraTS case folder: <root>/<root.name>_<modality>.nii.gz
    own = _brats_files(root, root.name)
    own.pop(_BRATS_LABEL_SUFFIX, None)  # the label is never an input modality
    if own:
        hit = _pick(sorted(own), modality, root)
        return [(root.name, _single_loader(root.name, own[hit], modality))]

    folders = _brats_case_folders(root)
    if folders:
        out = []
        for d in folders:
            files = _brats_files(d, d.name)
            files.pop(_BRATS_LABEL_SUFFIX, None)
            hit = _pick(sorted(files), modality, d)
            out.append((d.name, _single_loader(d.name, files[hit], modality)))
        return out

    files = [f for f in _visible(list(root.iterdir())) if f.is_file() and _strip_nifti(f.name)]
    if not files:
        raise DataError("empty folder: no NIfTI files or cases found", root)
    # Flat folder. If the files carry modality suffixes (case1_t2.nii.gz, case1_t1ce.nii.gz),
    # take only the requested one; otherwise every file is one case of that modality.
    tokens = sorted({t for g in MODALITY_ALIASES for t in g} | {modality.lower()}, key=len, reverse=True)
    suffixed: dict[str, dict[str, Path]] = {}
    for f in files:
        stem = _strip_nifti(f.name) or ""
        low = stem.lower()
        for tok in tokens:  # longest first, so "_t1ce" is not read as "_t1" + "ce"
            if len(low) > len(tok) + 1 and low.endswith(tok) and low[-len(tok) - 1] in "_-":
                suffixed.setdefault(stem[-len(tok):], {})[stem[: -len(tok) - 1]] = f
                break
    if suffixed:
        hit = _pick(sorted(suffixed), modality, root)
        return [(c, _single_loader(c, f, modality)) for c, f in sorted(suffixed[hit].items())]
    out = []
    for f in files:
        stem = _strip_nifti(f.name) or f.name
        out.append((stem, _single_loader(stem, f, modality)))
    return out
