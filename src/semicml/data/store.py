"""On-disk store of 2D axial slices: ``semicml prepare`` writes it, training reads it.

Layout of a store folder::

    store.json                 modalities, target, geometry and per-case metadata; written LAST,
                               so a folder without it (or with "complete": false) is not a store
    images/<case>.npy          float16 (Z, M, H, W): normalised slices of the M modalities
    labels/<case>.npy          uint8 (Z, H, W): target classes (labelled cases only)
    subsets/*.json             labelled-subset files made by seed (see splits.py)

Arrays are opened memory-mapped, so a dataset larger than RAM trains with bounded memory.
Preparation writes into ``<out>.partial-<pid>`` and renames it at the end: an interrupted run
never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from ..io_utils import atomic_write_text, save_npy
from ..locking import exclusive
from .preprocess import (
    InPlaneBox,
    axial_axis,
    extract_planes,
    foreground_box,
    normalise,
    to_axial_last,
)
from .readers import open_dataset, read_case, resolve_modalities
from .targets import apply_target, resolve_target

STORE_VERSION = 1
STORE_FILE = "store.json"


@dataclass(frozen=True)
class PrepareOptions:
    modalities: tuple[str, ...]
    target: str = "wt"
    size: int = 160
    in_plane: str = "crop"  # "crop" (paper) or "resize"
    normalisation: str = "zscore_nonzero"
    workers: int = 2


def _prepare_case(root: str, fmt: str, case_id: str, modalities: list[str], target_json: dict,
                  opts: PrepareOptions, out_dir: str) -> dict:
    """Read, validate, crop and normalise one case; write its arrays; return its metadata."""
    from .targets import Target

    info = open_dataset(root, fmt)
    target = Target(**target_json)
    case = read_case(info, case_id, modalities, with_label=info.labeled.get(case_id, False))
    axis = axial_axis(case.affine)
    vols = {m: to_axial_last(v, axis) for m, v in case.images.items()}
    # The box comes from the FIRST modality alone; predict() recomputes it from whichever
    # modality it gets, so no modality (and never the label) is needed jointly.
    box = foreground_box(vols[modalities[0]], opts.size, opts.in_plane)
    stacked, norms = [], {}
    for m in modalities:
        normed, stats = normalise(vols[m], opts.normalisation)
        norms[m] = stats.__dict__
        stacked.append(extract_planes(normed, box))
    images = np.stack(stacked, axis=0).transpose(3, 0, 1, 2)  # (Z, M, H, W)
    stored = np.ascontiguousarray(images, dtype=np.float16)
    save_npy(Path(out_dir) / "images" / f"{case_id}.npy", stored)
    digest = hashlib.sha256(stored.tobytes())
    nonempty = np.flatnonzero(np.abs(images).reshape(images.shape[0], -1).max(axis=1) > 0)
    meta = {
        "case_id": case_id,
        "shape": list(case.shape),
        "axial_axis": axis,
        "affine": np.asarray(case.affine).tolist(),
        "spacing": [float(s) for s in case.spacing],
        "box": box.to_json(),
        "normalisation": norms,
        "n_slices": int(images.shape[0]),
        "nonempty_slices": nonempty.tolist(),
        "labeled": case.label is not None,
        "sources": {k: str(v) for k, v in case.sources.items()},
    }
    if case.label is not None:
        classes = apply_target(to_axial_last(case.label, axis), target)
        planes = extract_planes(classes, box, nearest=True).astype(np.uint8)
        stored_label = np.ascontiguousarray(planes.transpose(2, 0, 1))
        save_npy(Path(out_dir) / "labels" / f"{case_id}.npy", stored_label)
        digest.update(stored_label.tobytes())
        meta["foreground_slices"] = np.flatnonzero(planes.reshape(-1, planes.shape[2]).max(0) > 0).tolist()
        total = int((classes > 0).sum())
        meta["label_voxels"] = total
        # Foreground cut off by the fixed crop is reported, never silently lost.
        meta["label_voxels_outside_box"] = total - int((planes > 0).sum()) if opts.in_plane == "crop" else 0
    meta["sha256"] = digest.hexdigest()  # of the stored arrays: the store's content hash builds on it
    return meta


def prepare_store(input_root: str | Path, out: str | Path, opts: PrepareOptions, fmt: str | None = None,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Turn a dataset (BraTS / nnU-Net raw / MSD) into a slice store at ``out``.

    One ``prepare`` per store at a time (a second one fails naming the first one's PID). Any
    failure, a full disk included, removes the partial folder and leaves an earlier store intact.
    """
    out = Path(out)
    if opts.size % 16 != 0 or opts.size < 16:
        raise DataError(f"in-plane size {opts.size} must be a positive multiple of 16 (U-Net pooling)")
    with exclusive(out, "slice store"):
        return _prepare_locked(input_root, out, opts, fmt, overwrite, progress)


def _prepare_locked(input_root: str | Path, out: Path, opts: PrepareOptions, fmt: str | None, overwrite: bool,
                    progress: bool) -> Path:
    if out.exists():
        if not overwrite:
            raise DataError("output exists; pass --overwrite to replace it", out)
    info = open_dataset(input_root, fmt)
    modalities = resolve_modalities(info, list(opts.modalities))
    if len(modalities) < 1:
        raise DataError("no modality requested", input_root)
    target = resolve_target(info, opts.target)
    partial = out.parent / f"{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    (partial / "labels").mkdir()
    target_json = {"name": target.name, "classes": list(target.classes), "values": [list(v) for v in target.values]}
    metas: dict[str, dict] = {}
    try:
        args = [(str(info.root), info.format, cid, modalities, target_json, opts, str(partial)) for cid in info.case_ids]
        with tqdm(total=len(args), desc="prepare", unit="case", disable=not progress) as bar:
            if opts.workers > 1 and len(args) > 1:
                with ProcessPoolExecutor(max_workers=opts.workers) as pool:
                    futures = {pool.submit(_prepare_case, *a): a[2] for a in args}
                    for fut in as_completed(futures):
                        metas[futures[fut]] = fut.result()
                        bar.update()
            else:
                for a in args:
                    metas[a[2]] = _prepare_case(*a)
                    bar.update()
        manifest = {
            "version": STORE_VERSION,
            "complete": True,
            "source": {"root": str(Path(input_root).resolve()), "format": info.format},
            "modalities": modalities,
            "target": target_json,
            "size": opts.size,
            "in_plane": opts.in_plane,
            "normalisation": opts.normalisation,
            "cases": [metas[c] for c in info.case_ids],
        }
        atomic_write_text(partial / STORE_FILE, json.dumps(manifest, indent=1))
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        if out.exists():  # set aside, not deleted, until the new store is in place
            os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(out)) from err
        raise
    return out


@dataclass
class CaseMeta:
    case_id: str
    shape: tuple[int, int, int]
    axial_axis: int
    affine: np.ndarray
    spacing: tuple[float, float, float]
    box: InPlaneBox
    n_slices: int
    labeled: bool
    nonempty_slices: list[int]
    foreground_slices: list[int]

    @classmethod
    def from_json(cls, d: dict) -> "CaseMeta":
        return cls(
            case_id=d["case_id"], shape=tuple(d["shape"]), axial_axis=int(d["axial_axis"]),
            affine=np.asarray(d["affine"], dtype=float), spacing=tuple(d["spacing"]),
            box=InPlaneBox.from_json(d["box"]), n_slices=int(d["n_slices"]), labeled=bool(d["labeled"]),
            nonempty_slices=list(d["nonempty_slices"]), foreground_slices=list(d.get("foreground_slices", [])),
        )


class SliceStore:
    """Read access to a prepared store (memory-mapped arrays, opened lazily per case)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / STORE_FILE
        if not manifest_path.is_file():
            raise DataError("not a prepared slice store (store.json missing; run `semicml prepare`)", self.root)
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"store.json is not valid JSON ({err.msg})", manifest_path) from None
        if not self.manifest.get("complete") or self.manifest.get("version") != STORE_VERSION:
            raise DataError("incomplete or incompatible slice store; prepare it again", self.root)
        self.modalities: list[str] = list(self.manifest["modalities"])
        self.target: dict = self.manifest["target"]
        self.size: int = int(self.manifest["size"])
        self.cases: dict[str, CaseMeta] = {d["case_id"]: CaseMeta.from_json(d) for d in self.manifest["cases"]}
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}

    @property
    def n_classes(self) -> int:
        """Output channels: 1 for a binary target, else one per class (softmax extension)."""
        n = len(self.target["classes"])
        return 1 if n == 1 else n + 1

    def images(self, case_id: str) -> np.ndarray:
        """(Z, M, H, W) float16 memmap."""
        if case_id not in self._images:
            self._images[case_id] = np.load(self.root / "images" / f"{case_id}.npy", mmap_mode="r")
        return self._images[case_id]

    def label(self, case_id: str) -> np.ndarray | None:
        """(Z, H, W) uint8 memmap, or None for an unlabelled case."""
        if not self.cases[case_id].labeled:
            return None
        if case_id not in self._labels:
            self._labels[case_id] = np.load(self.root / "labels" / f"{case_id}.npy", mmap_mode="r")
        return self._labels[case_id]

    @property
    def content_hash(self) -> str:
        """sha256 over store.json and the sizes of the array files: cheap (no array is read), and it
        changes whenever the store is prepared again (store.json holds a sha256 of every case's
        arrays, computed at prepare time)."""
        digest = hashlib.sha256((self.root / STORE_FILE).read_bytes())
        for case in sorted(self.cases):
            for sub in ("images", "labels"):
                f = self.root / sub / f"{case}.npy"
                digest.update(f"{sub}/{case}:{f.stat().st_size if f.is_file() else -1};".encode())
        return digest.hexdigest()

    def modality_index(self, name: str) -> int:
        lowered = [m.lower() for m in self.modalities]
        if name.lower() not in lowered:
            raise DataError(f"modality {name!r} is not in the store (has: {', '.join(self.modalities)})", self.root)
        return lowered.index(name.lower())

    def __getstate__(self):  # memmaps are reopened in DataLoader workers
        state = self.__dict__.copy()
        state["_images"], state["_labels"] = {}, {}
        return state
