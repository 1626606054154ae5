"""On-disk store of 2D axial slices: ``semicml prepare`` writes it, training reads it.

Layout of a store folder::

    store.json                 modalities, target, geometry and per-case metadata; written LAST,
                               so a folder without it (or with "complete": false) is not a store
    images/<case>.npy          float16 (Z, M, H, W): normalised slices of the M modalities
    labels/<case>.npy          uint8 (Z, H, W): target classes (labelled cases only); region
                               targets: bit k set where the voxel is in region k
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
from ..io_utils import atomic_write_text
from ..locking import exclusive
from .geometry import InPlaneGrid, resample_in_plane, restore_in_plane
from .orientation import IDENTITY, InPlaneOrientation
from .prepare import PrepareOptions, plan_dataset, prepare_case
from .preprocess import InPlaneBox, extract_planes, from_axial_last, paste_planes, to_axial_last
from .readers import open_dataset, resolve_modalities
from .targets import region_masks, resolve_target

__all__ = ["CaseMeta", "PrepareOptions", "SliceStore", "prepare_store"]

STORE_VERSION = 1
# A store with a case turned to the dataset's orientation: a reader that ignored the per-case
# turn would map that case's slices wrongly, so readers before orientations refuse it (they
# accept exactly STORE_VERSION); stores without a turned case stay readable by them.
TURNED_STORE_VERSION = 2
READABLE_VERSIONS = (STORE_VERSION, TURNED_STORE_VERSION)
STORE_FILE = "store.json"


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
    metas: dict[str, dict] = {}
    pool = ProcessPoolExecutor(max_workers=opts.workers) if opts.workers > 1 and len(info.case_ids) > 1 else None
    try:
        def map_fn(fn, args_list, desc: str = "statistics"):
            results: dict[int, object] = {}
            with tqdm(total=len(args_list), desc=desc, unit="case", disable=not progress) as bar:
                if pool is None:
                    for i, a in enumerate(args_list):
                        results[i] = fn(*a)
                        bar.update()
                else:
                    futures = {pool.submit(fn, *a): i for i, a in enumerate(args_list)}
                    for fut in as_completed(futures):
                        results[futures[fut]] = fut.result()
                        bar.update()
            return [results[i] for i in range(len(args_list))]

        plan = plan_dataset(info, modalities, target, opts, map_fn)
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "images").mkdir(parents=True)
        (partial / "labels").mkdir()
        args = [(str(info.root), info.format, cid, plan, opts, str(partial)) for cid in info.case_ids]
        for cid, meta in zip(info.case_ids, map_fn(prepare_case, args, "prepare")):
            metas[cid] = meta
        manifest = {
            "version": TURNED_STORE_VERSION if any(m.get("orientation") for m in metas.values()) else STORE_VERSION,
            "complete": True,
            "source": {"root": str(Path(input_root).resolve()), "format": info.format},
            "modalities": modalities,
            "reference_modality": modalities[0],
            "target": plan.target,
            "size": opts.size,
            "in_plane": opts.in_plane,
            "spacing": plan.spacing,
            "orientation": plan.orientation,
            "normalisation": plan.normalisation,
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
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out


@dataclass
class CaseMeta:
    """A stored case. ``shape`` / ``affine`` / ``spacing``: its reference volume as read (array
    axis order); ``grid``: its in-plane resampling (None in stores made before it existed);
    ``box``: where the stored planes sit on the resampled axial-last grid; ``orientation``: how
    its axial-last in-plane axes were turned to the store's orientation (identity when they were
    stored that way already, and in stores made before orientations were recorded)."""

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
    grid: InPlaneGrid | None = None
    orientation: InPlaneOrientation = IDENTITY

    @classmethod
    def from_json(cls, d: dict) -> "CaseMeta":
        return cls(
            case_id=d["case_id"], shape=tuple(d["shape"]), axial_axis=int(d["axial_axis"]),
            affine=np.asarray(d["affine"], dtype=float), spacing=tuple(d["spacing"]),
            box=InPlaneBox.from_json(d["box"]), n_slices=int(d["n_slices"]), labeled=bool(d["labeled"]),
            nonempty_slices=list(d["nonempty_slices"]), foreground_slices=list(d.get("foreground_slices", [])),
            grid=InPlaneGrid.from_json(d["grid"]) if d.get("grid") else None,
            orientation=InPlaneOrientation.from_json(d.get("orientation")),
        )

    def to_stored_frame(self, volume: np.ndarray, nearest: bool = False) -> np.ndarray:
        """A volume on this case's original grid (array axis order) -> (H, W, Z) planes in the
        stored frame (resampled in plane, boxed); ``nearest`` for masks."""
        vol = self.orientation.apply(to_axial_last(np.asarray(volume), self.axial_axis))
        if self.grid is not None and not self.grid.identity:
            vol = resample_in_plane(vol.astype(np.float32), self.grid, order=0 if nearest else 1)
        return extract_planes(vol, self.box, nearest=nearest)

    def from_stored_frame(self, planes: np.ndarray) -> np.ndarray:
        """(H, W, Z) float planes in the stored frame -> the original grid (linear; 0 outside the box)."""
        shape_xy = self.grid.resampled if self.grid is not None else \
            self.orientation.pair([s for a, s in enumerate(self.shape) if a != self.axial_axis])
        on_grid = paste_planes(np.asarray(planes, dtype=np.float32), self.box, shape_xy)
        if self.grid is not None:
            on_grid = restore_in_plane(on_grid, self.grid, order=1)
        return from_axial_last(self.orientation.undo(on_grid), self.axial_axis)

    @property
    def stored_spacing(self) -> tuple[float, float, float]:
        """(slice thickness, row, column) spacing in mm of the stored (Z, H, W) arrays."""
        if self.grid is not None:
            in_plane = list(self.grid.realised)
        else:
            in_plane = list(self.orientation.pair([self.spacing[a] for a in range(3) if a != self.axial_axis]))
        scale = self.box.side / self.box.size  # 1 for crops; > 1 when the box was resized
        return (float(self.spacing[self.axial_axis]), in_plane[0] * scale, in_plane[1] * scale)


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
        if not self.manifest.get("complete") or self.manifest.get("version") not in READABLE_VERSIONS:
            raise DataError("incomplete or incompatible slice store; prepare it again", self.root)
        self.modalities: list[str] = list(self.manifest["modalities"])
        self.target: dict = self.manifest["target"]
        self.size: int = int(self.manifest["size"])
        self.cases: dict[str, CaseMeta] = {d["case_id"]: CaseMeta.from_json(d) for d in self.manifest["cases"]}
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}

    def preprocessing(self) -> dict:
        """What ``predict`` must repeat, for run.json and every weights file."""
        m = self.manifest
        legacy = isinstance(m["normalisation"], str)
        return {"size": m["size"], "in_plane": m["in_plane"], "normalisation": m["normalisation"],
                "spacing": m.get("spacing"), "reference_modality": m.get("reference_modality", self.modalities[0]),
                **({"orientation": m["orientation"]} if m.get("orientation") else {}),
                "box_from": "the predicted modality's non-zero region" if legacy else
                            "the predicted modality's body mask",
                "predict_window": "whole slice" if m["in_plane"] == "crop" else "box", "slice_axis": "axial (from affine)"}

    @property
    def n_classes(self) -> int:
        """Output channels: 1 for a binary target, one per region for a region target (sigmoid
        each), else one per class + background (softmax extension)."""
        n = len(self.target["classes"])
        return n if (n == 1 or self.regions) else n + 1

    @property
    def regions(self) -> bool:
        """Region-based target: labels are bit masks (bit k = region k, see data/targets.py)."""
        return bool(self.target.get("regions", False))

    def label_channels(self, label: np.ndarray) -> np.ndarray:
        """Stored label (Z, H, W) -> (Z, C, H, W) bool: the foreground (binary) or one mask per region."""
        if self.regions:
            return np.moveaxis(region_masks(label, self.n_classes), 0, 1)
        return (np.asarray(label) > 0)[:, None]

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
