"""NIfTI loading with validation, and the geometry checks between the volumes of one case.

Every problem is a one-line :class:`DataError` that names the offending file.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from semicml.data.case import Case
from semicml.data.geometry import check_affine
from semicml.errors import DataError

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "MAX_VOXELS",
    "CaseLoader",
    "Volume",
    "check_same_grid",
    "header_3d",
    "header_affine",
    "image_3d",
    "image_channel",
    "label_3d",
    "load_volume",
    "single_loader",
    "spacing",
]

#: Two volumes are "on the same grid" when their affines differ by at most this (mm).
AFFINE_TOLERANCE_MM = 1e-3

# Errors that nibabel / gzip / zlib raise on unreadable or truncated files.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError,
                OverflowError, struct.error)

CaseLoader = Callable[[], Case]


@dataclass
class Volume:
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header


#: The most voxels one volume may claim (2^29: a 2 GB float32 volume; BraTS has 8.9 M). A header
#: that claims more, or more bytes than its file holds, is refused before anything is allocated.
MAX_VOXELS = 2**29
_HEADER_BYTES = 540  # a NIfTI-2 header; a NIfTI-1 header (348 bytes) is a prefix of that much
_TRAILING_SLACK = 1 << 20  # bytes after the voxel data that are tolerated (and CRC-checked)
_CHUNK = 1 << 20  # reads allocate their size up front: keep them small


def load_volume(path: Path, what: str) -> Volume:
    """Load header and data eagerly so corrupt and truncated files fail here, with the file name.

    The header is parsed and checked first: its claimed size (voxels x bytes per voxel + offset)
    must be under :data:`MAX_VOXELS` and present in the file, so a hostile header that claims 2^31
    voxels costs nothing; memory stays bounded by the data the file really holds.
    """
    if not path.is_file():
        raise DataError(f"missing {what} file", path)
    try:
        if path.name.lower().endswith(".gz"):
            # Decompress the whole stream ourselves: gzip checks the CRC and length at the end,
            # which nibabel never reaches (it stops after the voxel bytes), so a damaged deflate
            # stream would otherwise decode silently into garbage voxels.
            img = _nifti_from_bytes(_read_gzip_checked(path))
        else:
            with open(path, "rb") as fh:
                _checked_size(_parse_header(fh.read(_HEADER_BYTES)), path.stat().st_size)
            img = nib.load(str(path))
        data = np.asarray(img.dataobj)  # eager: a truncated file fails now, not later
        affine = np.asarray(img.affine, dtype=np.float64)
    except DataError as err:
        raise DataError(err.problem, path) from None
    except _READ_ERRORS as err:
        raise _corrupt(err, path) from None
    _check_geometry(affine, img.header.get_zooms()[:3], path)
    return Volume(data, affine, img.header)


def _corrupt(err: Exception, path: Path) -> DataError:
    detail = " ".join(str(err).replace(str(path), path.name).split())[:160]
    return DataError(f"corrupt or truncated NIfTI file ({type(err).__name__}: {detail})", path)


def _check_geometry(affine: np.ndarray, zooms, path: Path) -> None:
    if not np.isfinite(affine).all():
        raise DataError("header holds a non-finite affine (qform/sform)", path)
    zooms = [float(z) for z in zooms]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"header holds voxel sizes {zooms}; every one must be a positive number", path)
    check_affine(affine, path, "header")  # a singular sform/qform cannot place voxels in space


def header_affine(path: Path, what: str) -> np.ndarray:
    """The voxel-to-world matrix of a NIfTI file from its header alone (a .nii.gz is decompressed
    no further than the header), checked like :func:`load_volume` checks it."""
    return _checked_header(path, what)[1]


def _checked_header(path: Path, what: str):
    """(header, affine) of a NIfTI file, read no further than the header and checked."""
    if not path.is_file():
        raise DataError(f"missing {what} file", path)
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            header = _parse_header(fh.read(_HEADER_BYTES))
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
        zooms = [float(z) for z in header.get_zooms()[:3]]
    except DataError as err:
        raise DataError(err.problem, path) from None
    except _READ_ERRORS as err:
        raise _corrupt(err, path) from None
    _check_geometry(affine, zooms, path)
    return header, affine


def check_input_file(path: Path, what: str) -> None:
    """Cheap checks of a file that will be read later: header, geometry, and whether its data is
    all there (uncompressed: the file size; ``.nii.gz``: the length in the gzip trailer, confirmed
    by a full read only when it disagrees, since a multi-member gzip may carry another). Raises
    the DataError :func:`load_volume` would."""
    header = _checked_header(path, what)[0]
    try:
        if path.name.lower().endswith(".gz"):
            need = _checked_size(header, None)
            with open(path, "rb") as raw:
                raw.seek(-4, 2)
                length = int.from_bytes(raw.read(4), "little")  # ISIZE: uncompressed length mod 2^32
            if not 0 <= (length - need) % 2**32 <= _TRAILING_SLACK:  # a cut stream ends in arbitrary bytes
                load_volume(path, what)  # the precise error (or a valid file after all)
        else:
            _checked_size(header, path.stat().st_size)
    except DataError as err:
        raise DataError(err.problem, err.path or path) from None
    except _READ_ERRORS as err:
        raise _corrupt(err, path) from None


def _parse_header(head: bytes):
    """The NIfTI-1 or NIfTI-2 header at the start of ``head`` (raises DataError when it is none)."""
    if len(head) < 348:
        raise DataError(f"corrupt or truncated NIfTI file ({len(head)} bytes, shorter than a header)")
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 348 in sizes:
        kind, size = nib.Nifti1Header, 348
    elif 540 in sizes and len(head) >= 540:
        kind, size = nib.Nifti2Header, 540
    else:
        raise DataError("not a NIfTI file (bad header size; corrupt?)")
    header = kind.from_fileobj(io.BytesIO(head[:size]), check=False)
    _check_raw_voxel_sizes(header)  # before check_fix, which would turn a zero into 1 mm
    header.check_fix()
    return header


def _check_raw_voxel_sizes(header) -> None:
    """Refuse a zero (or non-finite) voxel size that places the voxels: nibabel's header check
    silently turns it into 1 mm, which would segment and resample the scan at a made-up scale.
    An sform (sform_code > 0) places voxels without pixdim, so it stands."""
    if int(header["sform_code"]) > 0:
        return
    ndim = min(max(int(header["dim"][0]), 0), 3)
    sizes = [float(v) for v in header["pixdim"][1 : 1 + ndim]]
    if not all(np.isfinite(v) and v != 0 for v in sizes):
        raise DataError(f"header holds voxel sizes (pixdim) {sizes} mm and no sform: a zero or non-finite voxel "
                        "size cannot place the image in space (fix the header)")


def _checked_size(header, available: int | None) -> int:
    """Bytes the header says the file holds (offset + voxel data), after checking the claim."""
    shape = tuple(int(d) for d in header.get_data_shape())
    if not shape:  # dim[0] outside 1..7: nibabel reads no shape, yet would still return voxels
        raise DataError(f"header holds no dimensions (dim[0] = {int(header['dim'][0])}); not an image")
    if any(d < 0 for d in shape):
        raise DataError(f"header holds a negative dimension (shape {shape})")
    n = math.prod(shape)
    if n == 0:  # nibabel would return voxels of another shape ((0,) for a header of (0, 0))
        raise DataError(f"header holds an empty image (shape {shape}): no voxels")
    if n > MAX_VOXELS:
        raise DataError(f"header claims {n} voxels (shape {shape}), more than the limit of {MAX_VOXELS}")
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"unsupported voxel data type {dtype} (expected integers or floats)")
    need = int(header.get_data_offset()) + n * dtype.itemsize
    if available is not None and need > available:
        raise DataError(f"header claims shape {shape} of {dtype} ({need} bytes with the offset) but the file "
                        f"holds only {available} bytes: truncated, or a corrupt header")
    return need


def _read_gzip_checked(path: Path) -> bytes:
    """The decompressed bytes of a .nii.gz, read no further than its header's (checked) claim."""
    with gzip.open(path, "rb") as fh:
        head = fh.read(_HEADER_BYTES)
        need = _checked_size(_parse_header(head), None)
        chunks, have = [head], len(head)
        while have < need:
            chunk = fh.read(min(_CHUNK, need - have))
            if not chunk:
                raise DataError(f"truncated NIfTI file: the header claims {need} bytes, the file holds {have}")
            chunks.append(chunk)
            have += len(chunk)
        trailing = 0
        while True:  # read to the end so gzip checks the CRC; tolerate (drop) a little padding
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            trailing += len(chunk)
            if trailing > _TRAILING_SLACK:
                raise DataError(f"the file holds more than {_TRAILING_SLACK} bytes beyond the data its header "
                                "describes (corrupt header?)")
    return b"".join(chunks)[: max(need, len(head))]


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


def image_3d(img: Volume, path: Path) -> np.ndarray:
    data = _squeeze_to(img.data, 3)
    if data.ndim != 3:
        kind = f"{data.ndim}D"
        raise DataError(f"{kind} image of shape {tuple(data.shape)} where a 3D volume is expected", path)
    _check_finite(data, path)
    return _float32(data)


def image_channel(img: Volume, path: Path, channel: int, modality: str) -> np.ndarray:
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


def label_3d(img: Volume, path: Path, allowed: set[int] | None) -> np.ndarray:
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


def spacing(header: object) -> tuple[float, float, float]:
    zooms = header.get_zooms()  # type: ignore[attr-defined]
    z = [float(v) for v in zooms[:3]] + [1.0] * max(0, 3 - len(zooms))
    return (z[0], z[1], z[2])


def header_3d(img: Volume, shape: tuple[int, ...]) -> object:
    """A copy of the header describing a 3D volume (MSD headers are 4D)."""
    header = img.header.copy()
    if len(header.get_data_shape()) != 3:
        header.set_data_shape(shape)
    return header


def check_same_grid(
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


def single_loader(case_id: str, path: Path, modality: str, channel: int | None = None) -> CaseLoader:
    def load() -> Case:
        img = load_volume(path, f"{modality} image")
        if channel is None:
            data = image_3d(img, path)
        else:
            data = image_channel(img, path, channel, modality)
        header = header_3d(img, data.shape)
        return Case(
            case_id=case_id, images={modality: data}, label=None,
            affine=np.asarray(img.affine, dtype=np.float64), header=header,
            spacing=spacing(header), sources={modality: path},
        )

    load.source = path  # type: ignore[attr-defined]  # lets a caller check every header before any work
    return load
