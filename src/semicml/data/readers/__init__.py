"""Read the three on-disk layouts users have (BraTS, nnU-Net v2 raw, MSD) into :class:`Case`.

Every reader validates what it reads and reports problems as a one-line :class:`DataError` that
names the offending file, so the CLI can print it without a traceback.

This module is the package's face: layout detection, the dataset index, case reading and the
single-modality inputs of ``predict``. One module per concern behind it:

* :mod:`.brats`: ``root/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (``.nii`` and ``-`` as
  separator also accepted). A case folder without ``_seg`` is unlabelled.
* :mod:`.nnunet`: ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
  ``imagesTr/<case>_<XXXX><ending>``, ``labelsTr/<case><ending>``, optional ``imagesTs``.
  Cases in ``imagesTs``, or in ``imagesTr`` without a label, are unlabelled cases.
* :mod:`.msd`: ``dataset.json`` (``modality``, ``labels`` as value -> name, ``training`` list of
  ``{"image", "label"}``, optional ``test`` list); images are 4D (X, Y, Z, C).
* :mod:`.loose`: single-modality inputs without dataset.json (a file, case folders, flat folders).
* :mod:`.nifti`: NIfTI loading (gzip CRC checked) and geometry checks.
* :mod:`.common`: the dataset index, modality names and aliases, dataset.json parsing.

Modalities are always matched by **name** (case-insensitive, with aliases such as
``t1gd`` == ``t1ce``), never by position, because converted datasets order channels differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semicml.data.case import Case
from semicml.data.geometry import MIN_OVERLAP, axis_spacing, overlap_fraction, resample_to_grid
from semicml.data.readers import msd, nnunet
from semicml.data.readers.brats import (
    BRATS_LABELS,
    brats_case_folders,
    brats_files,
    named_labelling,
    open_brats,
)
from semicml.data.readers.common import (
    MODALITY_ALIASES,
    DatasetInfo,
    check_root,
    finish_info,
    load_json,
    match_modality,
    pick_modality,
    visible,
)
from semicml.data.readers.flat import nifti_files, read_flat_folder
from semicml.data.readers.loose import read_loose
from semicml.data.readers.nifti import (
    AFFINE_TOLERANCE_MM,
    CaseLoader,
    Volume,
    check_same_grid,
    header_3d,
    image_3d,
    image_channel,
    label_3d,
    load_volume,
    single_loader,
    spacing,
)
from semicml.errors import DataError

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "BRATS_LABELS",
    "CaseLoader",
    "DatasetInfo",
    "FORMATS",
    "MODALITY_ALIASES",
    "detect_format",
    "input_labelling",
    "open_dataset",
    "read_case",
    "read_label",
    "read_single_modality",
    "resolve_modalities",
]

FORMATS = ("brats", "nnunet", "msd")


def detect_format(root: Path) -> str:
    """``"nnunet"``, ``"msd"`` (by their dataset.json) or ``"brats"`` (case folders)."""
    root = check_root(root)
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = load_json(meta_path)
        if "channel_names" in meta:
            return "nnunet"
        if "modality" in meta or "training" in meta:
            return "msd"
        raise DataError(
            "missing required field: neither 'channel_names' (nnU-Net) nor 'modality' (MSD)", meta_path
        )
    if brats_case_folders(root):
        return "brats"
    if not visible(list(root.iterdir())):
        raise DataError("empty folder: no cases found", root)
    raise DataError(
        "no cases found: no dataset.json (nnU-Net/MSD) and no BraTS case folders "
        "(<case>/<case>_<modality>.nii.gz)",
        root,
    )


def open_dataset(root: str | Path, fmt: str | None = None) -> DatasetInfo:
    """Index a dataset folder (format detected unless ``fmt`` is given) and validate its layout.

    Only the layout and metadata are checked here; file contents are validated by
    :func:`read_case`.
    """
    path = check_root(root)
    if fmt is None:
        fmt = detect_format(path)
    fmt_l = fmt.strip().lower().replace("-", "").replace("_", "")
    fmt_l = {"nnunetv2": "nnunet", "decathlon": "msd"}.get(fmt_l, fmt_l)
    if fmt_l not in FORMATS:
        raise DataError(f"unknown dataset format '{fmt}'; choose one of {', '.join(FORMATS)}", path)
    if fmt_l in ("nnunet", "msd") and not (path / "dataset.json").is_file():
        raise DataError(f"missing dataset.json required by the {fmt_l} format", path / "dataset.json")
    return {"brats": open_brats, "nnunet": nnunet.open_nnunet, "msd": msd.open_msd}[fmt_l](path)


def resolve_modalities(info: DatasetInfo, requested: list[str]) -> list[str]:
    """Map user-given modality names to the dataset's spelling (exact, case-insensitive, alias)."""
    if isinstance(requested, str):
        requested = [requested]
    if not requested:
        raise DataError("no modality requested", info.root)
    out: list[str] = []
    for name in requested:
        try:
            hit = match_modality(str(name), info.modalities)
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


def read_case(info: DatasetInfo, case_id: str, modalities: list[str], with_label: bool = True,
              coregister: bool = False) -> Case:
    """Read and validate one case: the requested modalities (dataset or user names) and its label.

    Images come back as float32, the label as uint8 (int16 if values need it), or None for an
    unlabelled case or when ``with_label`` is False. The first modality's grid is the reference:
    every other volume must be on it (within :data:`AFFINE_TOLERANCE_MM`), or, with
    ``coregister``, is resampled onto it when it covers the same world space (PET at 4 mm beside
    CT at 1 mm); a volume that does not overlap the reference is a one-line error either way.
    """
    if case_id not in info.image_files:
        raise DataError(f"unknown case '{case_id}'", info.root)
    names = resolve_modalities(info, modalities)
    files = info.image_files[case_id]
    images: dict[str, np.ndarray] = {}
    sources: dict[str, Path] = {}
    ref: tuple[tuple[int, ...], np.ndarray, Path, object, str] | None = None
    resampled: dict[str, dict] = {}
    cache: dict[Path, Volume] = {}  # MSD: one 4D file serves every modality
    for name in names:
        path = files.get(name) or _expected_path(info, case_id, name)
        if path not in cache:
            cache[path] = load_volume(path, f"{name} image")
        img = cache[path]
        if info.format == "msd":
            data = image_channel(img, path, info.channels[name], name)
        else:
            data = image_3d(img, path)
        if ref is None:
            ref = (data.shape, img.affine, path, header_3d(img, data.shape), name)
        elif coregister:
            data = coregistered(data, img.affine, path, ref, f"{name} image", resampled, name, order=1)
        else:
            check_same_grid(data.shape, img.affine, path, ref[0], ref[1], ref[2], f"{name} image")
        images[name] = data
        sources[name] = path
    assert ref is not None
    label = None
    if with_label and case_id in info.label_files:
        lpath = info.label_files[case_id]
        limg = load_volume(lpath, "label")
        allowed = set(info.label_names.values())
        label = label_3d(limg, lpath, allowed)
        if coregister:
            label = coregistered(label, limg.affine, lpath, ref, "label", resampled, "label", order=0)
        else:
            check_same_grid(label.shape, limg.affine, lpath, ref[0], ref[1], ref[2], "label")
        sources["label"] = lpath
    return Case(
        case_id=case_id, images=images, label=label, affine=np.asarray(ref[1], dtype=np.float64),
        header=ref[3], spacing=spacing(ref[3]), sources=sources, resampled=resampled,
    )


def read_label(info: DatasetInfo, case_id: str) -> Case:
    """A case's label alone, on its own grid (no image read, no image grid required): what
    evaluation scores against. ``images`` is empty; ``affine`` / ``header`` / ``spacing`` are the
    label file's."""
    if case_id not in info.label_files:
        raise DataError(f"no label for case '{case_id}'", info.root)
    lpath = info.label_files[case_id]
    limg = load_volume(lpath, "label")
    label = label_3d(limg, lpath, set(info.label_names.values()))
    header = header_3d(limg, label.shape)
    return Case(case_id=case_id, images={}, label=label, affine=np.asarray(limg.affine, dtype=np.float64),
                header=header, spacing=spacing(header), sources={"label": lpath})


def coregistered(data: np.ndarray, affine: np.ndarray, path: Path, ref: tuple, what: str,
                 resampled: dict[str, dict], key: str, order: int) -> np.ndarray:
    """``data`` on the reference grid ``ref`` = (shape, affine, path, header, name): unchanged
    when already on it, resampled when it covers at least MIN_OVERLAP of the reference's world
    box (linear for images, nearest for labels; background outside), else a one-line error."""
    ref_shape, ref_affine, ref_path = ref[0], ref[1], ref[2]
    same = tuple(data.shape) == tuple(ref_shape) and float(
        np.abs(np.asarray(affine, float) - np.asarray(ref_affine, float)).max()) <= AFFINE_TOLERANCE_MM
    if same:
        return data
    cover = overlap_fraction(data.shape, affine, ref_shape, ref_affine)
    if cover < MIN_OVERLAP:
        raise DataError(f"{what} covers {100 * cover:.0f}% of the world space of {ref_path.name} (at least "
                        f"{100 * MIN_OVERLAP:.0f}% needed): the volumes of a case are not co-registered", path)
    background = float(data.min()) if data.size else 0.0
    out = resample_to_grid(data, affine, ref_shape, ref_affine, order=order, cval=background)
    resampled[key] = {"from_shape": [int(s) for s in data.shape],
                      "from_spacing": [round(s, 6) for s in axis_spacing(affine)],
                      "covered": round(cover, 4), "interpolation": "linear" if order else "nearest"}
    if order == 0:
        return np.rint(out).astype(data.dtype)
    return out.astype(np.float32)


def _expected_path(info: DatasetInfo, case_id: str, modality: str) -> Path:
    """Where a missing modality file would be, for the error message."""
    if info.format == "brats":
        return info.root / case_id / f"{case_id}_{modality}.nii.gz"
    if info.format == "nnunet":
        present = list(info.image_files[case_id].values())  # same folder as the case's other channels
        folder = present[0].parent if present else info.root / "imagesTr"
        return folder / f"{case_id}_{info.channels[modality]:04d}{info.file_ending}"
    return next(iter(info.image_files[case_id].values()))


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
    if root.is_dir() and (root / "dataset.json").is_file():
        fmt = detect_format(root)
        info = open_dataset(root, fmt)
        name = pick_modality(info.modalities, modality, root / "dataset.json")
        layout = nnunet if fmt == "nnunet" else msd
        return layout.single_modality_cases(info, name, modality)
    parent = root.parent
    if root.is_dir() and root.name in ("imagesTr", "imagesTs") and (parent / "dataset.json").is_file():
        # one image folder of an nnU-Net / MSD dataset: its dataset.json says which channel is which
        info = open_dataset(parent)
        name = pick_modality(info.modalities, modality, parent / "dataset.json")
        return _cases_in_folder(info, name, modality, root)
    return read_loose(root, modality)


def _cases_in_folder(info: DatasetInfo, name: str, modality: str, folder: Path) -> list[tuple[str, CaseLoader]]:
    """Channel ``name`` of every case of ``info`` whose image files lie in ``folder``."""
    real = folder.resolve()
    ids = sorted(c for c in info.case_ids if any(f.parent.resolve() == real for f in info.image_files[c].values()))
    if not ids:
        raise DataError(f"no cases of {info.root / 'dataset.json'} in this folder", folder)
    out = []
    for c in ids:
        f = info.image_files[c].get(name)
        if f is None:
            raise DataError(f"missing {name} image file", _expected_path(info, c, name))
        channel = info.channels.get(name) if info.format == "msd" else None  # MSD: one 4D file per case
        out.append((c, single_loader(c, f, modality, channel)))
    return out


def input_labelling(path: str | Path) -> DatasetInfo | None:
    """The labelling a prediction input says it follows, or None when it does not say: the
    ``dataset.json`` of the folder (or of the dataset above ``imagesTr`` / ``imagesTs``), or BraTS
    contrast names that leave no doubt (:func:`~.brats.named_labelling`; case folders and flat
    folders alike). ``predict`` paints region label maps in it, so masks of BraTS 2023 scans use 3
    for enhancing tumour even from a network trained on BraTS 2018."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return None
    for folder in (root, root.parent if root.name in ("imagesTr", "imagesTs") else None):
        if folder is not None and (folder / "dataset.json").is_file():
            return open_dataset(folder)
    names = _contrast_names(root)
    labels = named_labelling(names)
    if labels is None:
        return None
    return finish_info(root, "brats", sorted(names), labels, {}, {}, {}, {})


def _contrast_names(root: Path) -> set[str]:
    """The modality names the file names of a folder carry: one case folder, case folders, or a
    flat folder of ``<case>_<modality>`` files."""
    own = brats_files(root, root.name)
    if own:
        return set(own)
    folders = brats_case_folders(root)
    if folders:
        return {name for d in folders for name in brats_files(d, d.name)}
    return set(read_flat_folder(root, nifti_files(root), []).suffixes())
