"""The work of ``semicml prepare``, case by case: what :func:`semicml.data.store.prepare_store`
runs in its worker processes, and the dataset-wide plan it decides first.

Per case (all on the reference modality's grid, the first modality listed):

1. read and validate; other modalities (and the label) on other grids covering the same world
   space are resampled onto the reference grid (co-registration; see ``read_case``);
2. move the axial axis last (from the affine);
3. normalise each modality on its native grid (body mask, scheme by channel name; see
   :mod:`.normalisation`): masks and statistics never see interpolation ringing;
4. resample the planes to the target in-plane spacing (cubic spline for images, labels through
   their linearly resampled one-hot maps), slice thickness unchanged;
5. crop (or resize) the box around the reference modality's body mask, padding with each
   modality's normalised background; in crop mode the box is shifted to contain the label when
   it fits, so a tumour at the edge of a large body is kept.

The plan (:func:`plan_dataset`) fixes what must be the same for every case: the target spacing
(default: the median in-plane spacing of the cases, nnU-Net's rule, read from the headers only)
and each modality's normalisation, with the global statistics of CT / PET from the labelled
foreground of the statistics cases.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError, DataError
from ..io_utils import save_npy
from .foreground import body_mask, mask_kind
from .geometry import in_plane_spacing, onehot_resample, plan_in_plane, resample_in_plane
from .normalisation import (
    GLOBAL_SCHEMES,
    SCHEMES,
    global_statistics,
    normalise_volume,
    sample_foreground,
    scheme_for_channel,
)
from .orientation import InPlaneOrientation, dataset_orientation, in_plane_codes, orientation_to
from .preprocess import axial_axis, extract_planes, foreground_box, resample_normalised, to_axial_last
from .readers import DatasetInfo, match_modality, open_dataset, read_case
from .readers.nifti import header_affine
from .targets import Target, apply_target

__all__ = ["PrepareOptions", "Plan", "prepare_case", "plan_dataset", "parse_normalisation", "sample_case"]

SPACING_RULES = ("median", "keep")


@dataclass(frozen=True)
class PrepareOptions:
    """``semicml prepare`` options.

    ``normalisation``: ``auto`` (by channel name: CT -> ct, PT/PET -> pet, others -> mri), one
    scheme for every modality, or ``{modality: scheme}`` (unlisted modalities: auto).
    ``spacing``: target in-plane spacing: ``median`` (of the cases; default), ``keep`` (no
    resampling, each case on its own grid: stores made before this option), or millimetres.
    ``stats_cases``: cases whose labels give the CT/PET statistics (default: every labelled case;
    give the training cases to keep test labels out of them).
    """

    modalities: tuple[str, ...]
    target: str = "wt"
    size: int = 160
    in_plane: str = "crop"  # "crop" (paper) or "resize"
    normalisation: str | Mapping[str, str] = "auto"
    workers: int = 2
    spacing: float | str = "median"
    stats_cases: tuple[str, ...] | None = None


def parse_normalisation(value: str) -> str | dict[str, str]:
    """CLI form -> option: ``auto`` | ``<scheme>`` | ``T2=mri,CT=ct``."""
    value = value.strip()
    if "=" not in value:
        return value
    out: dict[str, str] = {}
    for part in value.split(","):
        name, _, scheme = part.partition("=")
        if not name.strip() or not scheme.strip():
            raise ConfigError(f"--normalisation entry {part!r} is not <modality>=<scheme>")
        out[name.strip()] = scheme.strip()
    return out


@dataclass
class Plan:
    """Dataset-wide decisions, the same for every case (picklable: sent to the workers)."""

    modalities: list[str]
    target: dict
    spacing: dict[str, Any]  # in_plane_mm (None: keep), rule, cases
    normalisation: dict[str, dict[str, Any]] = field(default_factory=dict)
    normalisation_schemes: dict[str, str] = field(default_factory=dict)  # known before the statistics
    orientation: dict[str, Any] = field(default_factory=dict)  # in_plane codes every case is turned to, rule


def _check_options(opts: PrepareOptions) -> None:
    if isinstance(opts.spacing, str):
        if opts.spacing not in SPACING_RULES:
            raise ConfigError(f"--spacing must be median, keep or a number of mm, not {opts.spacing!r}")
    elif not (isinstance(opts.spacing, (int, float)) and np.isfinite(opts.spacing) and 0.05 <= opts.spacing <= 50):
        raise ConfigError(f"--spacing {opts.spacing!r} mm is not a plausible in-plane spacing (0.05 to 50 mm)")


def _schemes(modalities: list[str], option: str | Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """modality -> (scheme, chosen_by)."""
    chosen: dict[str, tuple[str, str]] = {m: (scheme_for_channel(m), "channel name") for m in modalities}
    if isinstance(option, str):
        if option != "auto":
            if option not in SCHEMES:
                raise ConfigError(f"unknown normalisation {option!r}; choose auto or one of {', '.join(SCHEMES)}")
            chosen = {m: (option, "option") for m in modalities}
        return chosen
    for name, scheme in option.items():
        hit = match_modality(str(name), modalities)
        if hit is None:
            raise ConfigError(f"--normalisation names modality {name!r}, which is not prepared "
                              f"({', '.join(modalities)})")
        if scheme != "auto":
            if scheme not in SCHEMES:
                raise ConfigError(f"unknown normalisation {scheme!r} for {hit}; choose auto or one of "
                                  f"{', '.join(SCHEMES)}")
            chosen[hit] = (scheme, "option")
    return chosen


def _header_affines(info: DatasetInfo, modality: str) -> dict[str, np.ndarray]:
    """Case -> affine of its ``modality`` volume from the header alone (read once for the whole plan);
    the whole file is validated (and a missing one reported, with its expected name) when the case
    is prepared."""
    out = {}
    for case_id in info.case_ids:
        path = info.image_files[case_id].get(modality)
        if path is not None:
            out[case_id] = header_affine(path, f"{modality} image")
    return out


def _plan_orientation(affines: Mapping[str, np.ndarray], modality: str) -> dict[str, Any]:
    codes, count, named = dataset_orientation(in_plane_codes(a, axial_axis(a)) for a in affines.values())
    if codes is None:
        return {"in_plane": None, "rule": "no case's in-plane orientation could be named: slices in file order"}
    return {"in_plane": codes, "rule": f"most common in-plane orientation of the cases' {modality} images "
                                       f"({count} of {named})"}


def _serial(fn, args_list):
    return [fn(*a) for a in args_list]


def plan_dataset(info: DatasetInfo, modalities: list[str], target: Target, opts: PrepareOptions,
                 map_fn=_serial) -> Plan:
    """Target spacing and per-modality normalisation for the whole store.

    ``map_fn(fn, [args, ...]) -> [result, ...]`` runs :func:`sample_case` over the statistics
    cases (the caller passes its worker pool's map).
    """
    _check_options(opts)
    target_json = target.to_json()
    affines = _header_affines(info, modalities[0])
    if opts.spacing == "keep":
        spacing: dict[str, Any] = {"in_plane_mm": None, "rule": "keep (no resampling)"}
    elif opts.spacing == "median":
        values = [s for a in affines.values() for s in in_plane_spacing(a, axial_axis(a))] or [1.0]
        spacing = {"in_plane_mm": round(float(np.median(values)), 6),
                   "rule": f"median in-plane spacing of the {len(info.case_ids)} cases' {modalities[0]} images",
                   "cases_min_max_mm": [round(min(values), 6), round(max(values), 6)]}
    else:
        spacing = {"in_plane_mm": float(opts.spacing), "rule": "given"}
    schemes = _schemes(modalities, opts.normalisation)
    plan = Plan(modalities=list(modalities), target=target_json, spacing=spacing,
                normalisation_schemes={m: s for m, (s, _) in schemes.items()},
                orientation=_plan_orientation(affines, modalities[0]))
    global_mods = [m for m, (s, _) in schemes.items() if s in GLOBAL_SCHEMES]
    samples: dict[str, list[np.ndarray]] = {}
    stats_from = ""
    if global_mods:
        stats_ids = _stats_cases(info, opts)

        def gather(ids: list[str], body: bool) -> dict[str, list[np.ndarray]]:
            args = [(str(info.root), info.format, c, plan, global_mods, body) for c in ids]
            return _merge(map_fn(sample_case, args))

        samples = gather(stats_ids, False)
        stats_from = f"labelled foreground of {len(stats_ids)} cases"
        if all(sum(len(v) for v in samples.get(m, [])) < 10 for m in global_mods):
            ids = stats_ids or info.case_ids
            samples = gather(ids, True)
            stats_from = f"body mask of {len(ids)} cases (no labelled foreground voxel)"
    for m, (scheme, chosen_by) in schemes.items():
        spec: dict[str, Any] = {"scheme": scheme, "chosen_by": chosen_by}
        if scheme in GLOBAL_SCHEMES:
            spec.update(global_statistics(scheme, samples.get(m, [])))
            spec["statistics_from"] = stats_from
        plan.normalisation[m] = spec
    return plan


def _stats_cases(info: DatasetInfo, opts: PrepareOptions) -> list[str]:
    if opts.stats_cases is None:
        return info.labeled_ids
    unknown = [c for c in opts.stats_cases if c not in info.labeled]
    if unknown:
        raise ConfigError(f"statistics cases not in the dataset: {', '.join(unknown[:5])}")
    return [c for c in opts.stats_cases if info.labeled[c]]


def _merge(parts) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for m, v in part.items():
            out.setdefault(m, []).append(v)
    return out


def _load(root: str, fmt: str, case_id: str, plan: Plan, with_label: bool):
    """(case, its axial axis, its in-plane orientation, the images axial-last in the dataset's
    orientation). Labels go through ``_turned`` the same way."""
    info = open_dataset(root, fmt)
    case = read_case(info, case_id, plan.modalities, with_label=with_label and info.labeled.get(case_id, False),
                     coregister=True)
    axis = axial_axis(case.affine)
    turn = orientation_to(case.affine, axis, plan.orientation.get("in_plane"))
    return case, axis, turn, {m: _turned(v, axis, turn) for m, v in case.images.items()}


def _turned(volume: np.ndarray, axis: int, turn: InPlaneOrientation) -> np.ndarray:
    return np.ascontiguousarray(turn.apply(to_axial_last(volume, axis))) if not turn.identity else \
        to_axial_last(volume, axis)


def sample_case(root: str, fmt: str, case_id: str, plan: Plan, global_mods: list[str],
                body: bool = False) -> dict[str, np.ndarray]:
    """Foreground intensities of one case for the global schemes: the voxels of the target
    (nnU-Net's rule) or, with ``body``, of the body mask."""
    case, axis, turn, vols = _load(root, fmt, case_id, plan, with_label=not body)
    seed = int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:4], "little")
    out = {}
    for m in global_mods:
        if body:
            scheme = plan.normalisation_schemes[m]
            fg = body_mask(vols[m], mask_kind(scheme, vols[m]))
        elif case.label is None:
            continue
        else:
            fg = apply_target(_turned(case.label, axis, turn), Target(**plan.target)) > 0
        out[m] = sample_foreground(vols[m], fg, seed)
    return out


def prepare_case(root: str, fmt: str, case_id: str, plan: Plan, opts: PrepareOptions, out_dir: str) -> dict:
    """Read, co-register, normalise, resample and crop one case; write its arrays; return its metadata."""
    modalities = plan.modalities
    case, axis, turn, vols = _load(root, fmt, case_id, plan, with_label=True)
    ref = modalities[0]
    grid = plan_in_plane(vols[ref].shape[:2], turn.pair(in_plane_spacing(case.affine, axis)),
                         plan.spacing["in_plane_mm"])
    normed = {m: normalise_volume(vols[m], plan.normalisation[m]) for m in modalities}
    del vols
    classes = None
    if case.label is not None:
        target = Target(**plan.target)
        classes = apply_target(_turned(case.label, axis, turn), target)
        if not grid.identity and target.regions:
            # Region bit masks: resample the distinct combinations (= the raw labels' classes).
            values, codes = np.unique(classes, return_inverse=True)
            codes = onehot_resample(codes.reshape(classes.shape), len(values),
                                    lambda a: resample_in_plane(a, grid, order=1))
            classes = values.astype(np.uint8)[codes]
        elif not grid.identity:
            classes = onehot_resample(classes, len(target.classes) + 1, lambda a: resample_in_plane(a, grid, order=1))
    resampled = {m: resample_normalised(normed[m], grid) for m in modalities}  # (image, mask)
    box = foreground_box(resampled[ref][0], opts.size, opts.in_plane, mask=resampled[ref][1],
                         keep=None if classes is None else classes > 0)
    stacked = [extract_planes(resampled[m][0], box, fill=normed[m].fill) for m in modalities]
    del resampled
    images = np.stack(stacked, axis=0).transpose(3, 0, 1, 2)  # (Z, M, H, W)
    stored = np.ascontiguousarray(images, dtype=np.float16)
    save_npy(Path(out_dir) / "images" / f"{case_id}.npy", stored)
    digest = hashlib.sha256(stored.tobytes())
    # A slice holding only background (zero, or the normalised air of CT / PET) is empty.
    fills = np.array([normed[m].fill for m in modalities], dtype=np.float32).reshape(1, -1, 1, 1)
    nonempty = np.flatnonzero(np.abs(images - fills).reshape(images.shape[0], -1).max(axis=1) > 0)
    axial_mm = float(np.linalg.norm(np.asarray(case.affine)[:3, axis]))
    meta = {
        "case_id": case_id,
        "shape": list(case.shape),
        "axial_axis": axis,
        **({} if turn.identity else {"orientation": turn.to_json()}),
        "affine": np.asarray(case.affine).tolist(),
        "spacing": [float(s) for s in case.spacing],
        "grid": grid.to_json(),
        "stored_spacing": [axial_mm, *(float(s) for s in grid.realised)],
        "box": box.to_json(),
        "normalisation": {m: normed[m].record for m in modalities},
        "n_slices": int(images.shape[0]),
        "nonempty_slices": nonempty.tolist(),
        "labeled": case.label is not None,
        "sources": {k: str(v) for k, v in case.sources.items()},
    }
    if case.resampled:
        meta["coregistered"] = case.resampled
    if classes is not None:
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
