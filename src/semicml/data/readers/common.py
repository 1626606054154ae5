"""What every layout reader shares: the dataset index, modality names and aliases, dataset.json parsing.

Modalities are always matched by **name** (case-insensitive, with aliases such as
``t1gd`` == ``t1ce``), never by position, because converted datasets order channels differently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from semicml.errors import DataError

__all__ = [
    "MODALITY_ALIASES",
    "NIFTI_ENDINGS",
    "DatasetInfo",
    "MAX_JSON_BYTES",
    "as_int",
    "check_case_id",
    "check_inside",
    "check_root",
    "finish_info",
    "load_json",
    "match_modality",
    "pick_modality",
    "require",
    "strip_nifti",
    "visible",
]

#: Groups of names that denote the same MRI contrast (compared lower-case).
MODALITY_ALIASES: tuple[frozenset[str], ...] = (
    frozenset({"t1ce", "t1gd", "t1c", "t1-ce", "t1_ce", "t1-gd", "t1_gd", "t1post"}),
    frozenset({"t2", "t2w"}),
    frozenset({"t1", "t1w", "t1n"}),
    frozenset({"flair", "t2-flair", "t2_flair", "t2flair", "t2f"}),
)

NIFTI_ENDINGS = (".nii.gz", ".nii")


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
    #: nnU-Net region-based datasets: every non-background ``labels`` entry (name -> values), in
    #: the declared order; usable as target names and as the regions of ``--target regions``.
    label_regions: dict[str, list[int]] = field(default_factory=dict, repr=False)
    #: nnU-Net ``regions_class_order``: the value each region paints back into one label map.
    region_paint: list[int] | None = field(default=None, repr=False)
    file_ending: str = ".nii.gz"

    @property
    def labeled_ids(self) -> list[str]:
        return [c for c in self.case_ids if self.labeled[c]]

    @property
    def unlabeled_ids(self) -> list[str]:
        return [c for c in self.case_ids if not self.labeled[c]]


#: dataset.json larger than this is refused unread (MSD's largest is well under 1 MB).
MAX_JSON_BYTES = 16 * 2**20


def check_case_id(case_id: str, where: Path) -> str:
    """A case id becomes a file name (store arrays, predicted masks): refuse anything else."""
    if (not case_id or case_id in (".", "..") or any(c in case_id for c in "/\\\0")
            or len(case_id.encode("utf-8", "surrogateescape")) > 200):
        raise DataError(f"case name {case_id!r} cannot be used as a file name (empty, '.', '..', a path "
                        "separator, NUL, or too long)", where)
    return case_id


def check_inside(path: Path, root: Path, what: str) -> Path:
    """A data file must be a regular file (a link to /dev/zero or a FIFO would never end), and
    one reached through a symlink out of the dataset root must still be a NIfTI file.

    Links that leave the root are allowed for NIfTI files because datasets are commonly assembled
    from links to case folders elsewhere (a subset of BraTS, say); a link to anything else (a
    key, a password file, a device) is refused.
    """
    if not path.exists() and not path.is_symlink():
        return path  # a missing file is reported, with its role, when the case is read
    try:
        real = path.resolve(strict=True)
        regular = real.is_file()
    except (OSError, RuntimeError) as err:  # a dangling link or a symlink loop
        raise DataError(f"{what} cannot be resolved ({type(err).__name__}: dangling or looping link)", path) from None
    if not regular:
        raise DataError(f"{what} is not a regular file (a folder, device or FIFO: {real})", path)
    real_root = root.resolve()
    if real_root not in real.parents and strip_nifti(real.name) is None:
        raise DataError(f"{what} is a link out of the dataset root to {real}, which is not a NIfTI file", path)
    return path


def finish_info(
    root: Path, fmt: str, modalities: list[str], label_names: dict[str, int],
    image_files: dict[str, dict[str, Path]], label_files: dict[str, Path],
    channels: dict[str, int], regions: dict[str, list[int]],
) -> DatasetInfo:
    for case_id, files in image_files.items():
        check_case_id(case_id, root)
        for name, f in files.items():
            check_inside(f, root, f"{name} image of case {case_id!r}")
    for case_id, f in label_files.items():
        check_inside(f, root, f"label of case {case_id!r}")
    labelled = sorted(c for c in image_files if c in label_files)
    unlabelled = sorted(c for c in image_files if c not in label_files)
    return DatasetInfo(
        root=root, format=fmt, modalities=modalities, label_names=label_names,
        case_ids=labelled + unlabelled, labeled={c: c in label_files for c in image_files},
        image_files=image_files, label_files=label_files, channels=channels, label_regions=regions,
    )


def check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError("dataset root does not exist", path)
    if not path.is_dir():
        raise DataError("dataset root is not a folder", path)
    return path


def strip_nifti(name: str) -> str | None:
    """File name without its NIfTI ending, or None when it is not a NIfTI file."""
    lower = name.lower()
    for ending in NIFTI_ENDINGS:
        if lower.endswith(ending):
            return name[: -len(ending)]
    return None


def visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _alias_group(name: str) -> frozenset[str] | None:
    low = name.lower()
    for group in MODALITY_ALIASES:
        if low in group:
            return group
    return None


def match_modality(requested: str, available: list[str]) -> str | None:
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


def pick_modality(available: list[str], modality: str, where: Path) -> str:
    try:
        hit = match_modality(modality, available)
    except DataError as err:
        raise DataError(err.problem, where) from None
    if hit is None:
        raise DataError(
            f"modality '{modality}' not found; available: {', '.join(available) or 'none'}", where
        )
    return hit


def load_json(path: Path) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DataError(f"{size / 2**20:.1f} MB, larger than the {MAX_JSON_BYTES // 2**20} MB a dataset.json "
                            "may have", path)
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg} at line {err.lineno})", path) from None
    except RecursionError:
        raise DataError("not valid dataset.json: nested too deeply", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read ({type(err).__name__}: {getattr(err, 'strerror', None) or err})", path) from None
    if not isinstance(data, dict):
        raise DataError("not valid dataset.json: expected a JSON object at the top level", path)
    return data


def require(meta: dict, key: str, kind: type, path: Path, fmt: str) -> object:
    if key not in meta:
        raise DataError(f"missing required field '{key}' ({fmt} dataset.json)", path)
    value = meta[key]
    if not isinstance(value, kind) or (kind is not str and not value):
        raise DataError(f"field '{key}' must be a non-empty {kind.__name__}", path)
    return value


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None
