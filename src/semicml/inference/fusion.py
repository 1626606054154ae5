"""Fused prediction: a case with several of the run's modalities is segmented from the MEAN of
the probabilities of the available networks (``semicml predict --modality t2,t1ce``).

Each network still sees only its own modality, normalised and resampled as at training, on its
own file's grid; its probabilities are then brought onto the **reference grid** (the first listed
modality the case has) through world coordinates (linear, 0 outside the modality's field of
view), so files stored in other orientations or on other grids still line up voxel for voxel.
Where training recorded it, each channel (region) takes the networks chosen on validation for it
instead of the plain mean (:mod:`semicml.inference.fusion_weights`: the mean of the set or one
member alone). The fused map is thresholded (``> threshold``, 0.5 by default) and post-processed:

* the post-processing chosen on the validation cases for the fused map of that set of modalities
  (``run.json: postprocessing_fused``, written at the end of training, nnU-Net's rule);
* for runs trained before that record existed: the choice stored with the network of the modality
  with the best validation Dice; ``--postprocess`` overrides either.

A case missing one of the modalities is a one-line error naming the expected file, or, with
``missing="skip"``, is predicted from the modalities it has (recorded per case in
``predict.json``). Arrays are ``(..., X, Y, Z)``: a leading channel axis (one probability map per
region) is carried through unchanged.

Several run directories (an ensemble, e.g. two training seeds): each modality's probability is the
mean of its networks in those runs (:mod:`semicml.inference.ensemble`), and the fusion weights and
post-processing are what most runs recorded for the set (channel by channel, region by region;
ties to the first run), as an ensemble of one modality decides its post-processing.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from ..data.geometry import resample_to_grid
from ..data.preprocess import coarse_input_note
from ..data.readers.multi import read_modality_sets
from ..errors import ConfigError, DataError
from ..hardware import resolve_device
from ..io_utils import atomic_write_text
from ..locking import exclusive
from .ensemble import postprocess_of_members
from .fusion_weights import choose_weights, weighted_sum
from .postprocess import NONE, apply_postprocess, check_spec, choose_postprocess
from .predict import (
    atomic_save_nifti,
    check_region_output,
    check_run_options,
    constant_value,
    constant_warning,
    in_input_labelling,
    load_models,
    probabilities_on_grid,
    region_postprocess,
    region_target,
    run_list,
    select_cases,
    warn_mirroring,
    write_region_masks,
)
from .uncertainty import UNCERTAINTY_SUFFIX, Spread, flip_members

__all__ = ["MISSING_POLICIES", "align_to_grid", "choose_fused_postprocessing", "ensemble_fused_choice", "fused_name",
           "fused_postprocess", "fused_weights", "mean_probabilities", "predict_fused", "threshold_masks",
           "weights_of_members"]

MISSING_POLICIES = ("error", "skip")
#: Subsets of modalities whose fused post-processing is chosen at training end (2^M - M - 1 sets).
MAX_SUBSET_MODALITIES = 4


def fused_name(modalities: Sequence[str]) -> str:
    """``T2+T1ce``: the label of a fused prediction (folders, tables, ``run.json`` keys)."""
    return "+".join(modalities)


def align_to_grid(probs: np.ndarray, affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray,
                  atol: float = 1e-4) -> np.ndarray:
    """``probs`` ``(..., X, Y, Z)`` on ``affine`` -> ``(..., *ref_shape)`` on the reference grid.

    The same grid is returned as is; any other (a flipped or permuted orientation, another voxel
    size) is sampled at the reference voxel centres through world space, linearly, with 0 (no
    foreground) outside the modality's field of view.
    """
    probs = np.asarray(probs, dtype=np.float32)
    spatial = tuple(probs.shape[-3:])
    if spatial == tuple(ref_shape) and np.allclose(affine, ref_affine, atol=atol):
        return probs
    flat = probs.reshape(-1, *spatial)
    out = np.stack([resample_to_grid(ch, affine, tuple(ref_shape), ref_affine, order=1, cval=0.0) for ch in flat])
    return np.clip(out, 0.0, 1.0).reshape(*probs.shape[:-3], *ref_shape).astype(np.float32)


def mean_probabilities(maps: Sequence[np.ndarray]) -> np.ndarray:
    """The voxel-wise mean of probability maps of one shape (float64 sum, float32 result)."""
    spread = Spread()
    for m in maps:
        spread.add(m)
    return spread.mean()


def choose_fused_postprocessing(val_probs: Mapping[str, Sequence[np.ndarray]], labels: Sequence[np.ndarray],
                                spacings: Sequence[Sequence[float]], fixed: str | None = None,
                                choose=choose_postprocess, weights: bool = True) -> dict[str, dict]:
    """At training end: for every set of two or more modalities (all of them when there are more
    than :data:`MAX_SUBSET_MODALITIES`), the networks each channel trusts (``weights``, chosen on
    validation: :func:`~semicml.inference.fusion_weights.choose_weights`) and the post-processing
    with the best validation Dice of that fused probability map. ``val_probs``: modality ->
    probabilities of each val case in the stored frame, (Z, C, H, W) (one grid for all
    modalities); ``fixed``: the configured post-processing (no search, plain mean);
    ``choose(probs, labels, spacings)``: the single-network rule (per region for region targets);
    ``weights=False``: the plain mean, as before weights existed (for comparisons).
    """
    mods = list(val_probs)
    if len(mods) < 2:
        return {}
    sizes = range(2, len(mods) + 1) if len(mods) <= MAX_SUBSET_MODALITIES else [len(mods)]
    out: dict[str, dict] = {}
    for k in sizes:
        for subset in itertools.combinations(mods, k):
            if fixed is not None:
                out[fused_name(subset)] = {"choice": check_spec(fixed), "chosen_by": "config"}
                continue
            pick = choose_weights({m: val_probs[m] for m in subset}, labels) if weights else None
            fused = [mean_probabilities([val_probs[m][i] for m in subset]) if pick is None else
                     weighted_sum({m: val_probs[m][i] for m in subset}, pick["weights"], channel_axis=1)
                     for i in range(len(labels))]
            record = {**choose(fused, labels, spacings), "chosen_by": "validation"}
            if pick is not None:
                record.update(weights=pick["weights"], weights_chosen=pick["chosen"], weights_val_dice=pick["dice"])
            out[fused_name(subset)] = record
    return out


def _fused_record(run_info: dict, used: Sequence[str]) -> tuple[list[str], dict]:
    """(``used`` in the run's modality order, what training recorded for that set: empty if nothing)."""
    order = [m for m in run_info.get("modalities", list(used)) if m in used] or list(used)
    return order, (run_info.get("postprocessing_fused") or {}).get(fused_name(order)) or {}


def fused_weights(run_info: dict, used: Sequence[str]) -> dict[str, list[float]] | None:
    """Modality -> weight per channel recorded for the set ``used`` (the run's spelling, any
    order); None: the plain mean (one network, no record, or a run trained before weights)."""
    order, hit = _fused_record(run_info, used)
    if len(order) < 2:
        return None
    weights = hit.get("weights")
    if not weights or set(weights) != set(order):
        return None
    return {m: list(weights[m]) for m in order}


def fused_postprocess(run_info: dict, used: Sequence[str],
                      stored: Mapping[str, str | dict]) -> tuple[str | dict, str]:
    """(choice, why) for a fused prediction from the networks of ``used`` (the run's spelling); a
    choice is a spec, or one spec per region for region networks.

    ``stored``: each network's own choice (from its weights file); one network alone keeps it.
    """
    order, hit = _fused_record(run_info, used)
    if len(order) == 1:
        return stored.get(order[0], NONE), f"stored with the {order[0]} network"
    if hit:
        return hit["choice"], f"chosen on validation for {fused_name(order)}"
    best = run_info.get("best_val") or {}
    scored = [m for m in order if m in best]
    if scored:
        top = max(scored, key=lambda m: best[m]["dice"])
        return stored.get(top, NONE), f"no fused choice recorded: that of {top} (best validation Dice)"
    return NONE, "no fused choice recorded"


def weights_of_members(per_run: Sequence[Mapping[str, Sequence[float]] | None], used: Sequence[str],
                       channels: int) -> dict[str, list[float]] | None:
    """The fusion weights most runs of an ensemble recorded, channel by channel (ties to the
    earliest run); a run without a record votes for the plain mean. None: every run fuses with
    the plain mean. ``per_run``: each run's weights keyed by ``used``."""
    if all(w is None for w in per_run):
        return None
    votes = [[tuple(float(w[m][c]) if w else 1.0 / len(used) for m in used) for c in range(channels)]
             for w in per_run]
    out: dict[str, list[float]] = {m: [] for m in used}
    for c in range(channels):
        column = [v[c] for v in votes]
        top = max(column.count(v) for v in column)
        pick = next(v for v in column if column.count(v) == top)
        for m, w in zip(used, pick):
            out[m].append(w)
    return out


def ensemble_fused_choice(run_infos: Sequence[dict], used: Sequence[str], stored: Sequence[Mapping[str, str | dict]],
                          channels: int) -> tuple[str | dict, str, dict[str, list[float]] | None]:
    """(post-processing, why, weights) of a fused prediction from ``used`` by one run or the runs
    of an ensemble: each run's record (:func:`fused_postprocess`, :func:`fused_weights`), then what
    most of them recorded. ``stored``: per run, each network's own choice."""
    if len(run_infos) == 1:
        post, why = fused_postprocess(run_infos[0], used, stored[0])
        return post, why, fused_weights(run_infos[0], used)
    posts, weights = [], []
    for info, own in zip(run_infos, stored):
        # each run's records in its own spelling of the modalities (T2 here, t2 there)
        theirs = {m.lower(): m for m in info.get("modalities", [])}
        names = {m: theirs.get(m.lower(), m) for m in used}
        posts.append(fused_postprocess(info, list(names.values()), {names.get(m, m): c for m, c in own.items()}))
        w = fused_weights(info, list(names.values()))
        weights.append(None if w is None else {m: w[names[m]] for m in used})
    choice, agreed = postprocess_of_members([p for p, _ in posts])
    why = posts[0][1] if agreed else "what most runs of the ensemble chose"
    return choice, f"{why} ({len(run_infos)} runs)", weights_of_members(weights, used, channels)


def _read_run_info(run: Path) -> dict:
    path = run / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"run.json is not valid JSON ({err})", path) from None
    if not isinstance(info, dict):
        raise DataError("run.json does not hold a JSON object", path)
    return info


def threshold_masks(probs: np.ndarray, threshold: float, post: str, spacing: Sequence[float]) -> np.ndarray:
    """``probs > threshold`` then ``post`` (uint8), per channel when ``probs`` is ``(C, X, Y, Z)``
    (one mask per region; turning regions into one label map is the caller's)."""
    masks = (np.asarray(probs) > threshold).astype(np.uint8)
    if masks.ndim == 3:
        return apply_postprocess(masks, post, spacing)
    return np.stack([apply_postprocess(m, post, spacing) for m in masks.reshape(-1, *masks.shape[-3:])]).reshape(
        masks.shape)


def predict_fused(run: str | Path | Sequence[str | Path], modalities: Sequence[str], input_path: str | Path,
                  out_dir: str | Path,
                  device: str = "auto", precision: str = "auto", save_probabilities: bool = False,
                  threshold: float = 0.5, progress: bool = True, cases: list[str] | None = None, tta: bool = False,
                  postprocess: str | None = None, engine: str = "torch", window: str = "whole", margin: int = 0,
                  threads: int | None = None, compile: bool = False, missing: str = "error",
                  uncertainty: bool = False, regions_as_files: bool = False) -> list[Path]:
    """Segment every case of ``input_path`` from the fused probability of the networks of
    ``modalities`` (two or more) of the run directory ``run`` (per channel, the networks chosen on
    validation, else the mean); masks on the reference grid. ``run``: one run directory, or
    several (an ensemble: see the module docstring).

    ``missing``: error (default) | skip (see the module docstring). ``uncertainty``: also write
    ``<case>_uncertainty.nii.gz`` (see :mod:`semicml.inference.uncertainty`); the mask is then
    the mean of the flip members (as with ``tta``). Other options as in
    :func:`~semicml.inference.predict.predict_cases`.
    """
    modalities = list(modalities)
    if len(modalities) < 2:
        raise ConfigError("fused prediction needs two or more modalities, e.g. --modality t2,t1ce")
    if missing not in MISSING_POLICIES:
        raise ConfigError(f"--missing-modality must be one of {', '.join(MISSING_POLICIES)}, not {missing!r}")
    check_run_options(window, margin, engine, device, compile)
    runs = run_list(run)
    for r in runs:
        if not Path(r).is_dir():
            raise DataError("fused prediction needs a run directory (one network per modality)", r)
    run_infos = [_read_run_info(Path(r)) for r in runs]
    dev = resolve_device(device if engine == "torch" else "cpu")
    nets = {m: load_models(runs, m, engine, dev, precision, threads, compile) for m in modalities}
    spelling = {m: str(info.get("modality") or m) for m, (_, info) in nets.items()}  # the run's names
    # each run's own networks' choices (an ensemble's info holds the members' list)
    stored = [{spelling[m]: (info["ensemble"]["postprocessing_of_members"][i] if "ensemble" in info
                             else info.get("postprocessing", NONE)) for m, (_, info) in nets.items()}
              for i in range(len(runs))]
    regions = region_target(nets[modalities[0]][1])
    for m in modalities[1:]:  # weights copied in from another run would average unlike outputs
        if region_target(nets[m][1]) != regions:
            raise DataError(f"the {spelling[m]} network has another target than the {spelling[modalities[0]]} "
                            "network; fuse the networks of one run", runs[0])
    regions = in_input_labelling(regions, input_path)  # BraTS 2023 scans: enhancing tumour 3
    check_region_output(regions, regions_as_files)
    if postprocess is not None:  # a bad --postprocess fails before the output folder is made
        try:
            region_postprocess(postprocess, regions) if regions else check_spec(postprocess)
        except ValueError as err:
            raise DataError(str(err)) from None

    found, absent = read_modality_sets(input_path, modalities)
    found = select_cases(found, cases, f"any of {', '.join(modalities)}", input_path)
    if cases is not None:
        kept = {cid for cid, _ in found}  # the requested cases, all present (select_cases checked)
        absent = [a for a in absent if a.case_id in kept]
    if absent and missing == "error":  # before anything is written
        a = absent[0]
        more = f" ({len(absent) - 1} more files missing)" if len(absent) > 1 else ""
        raise DataError(f"case {a.case_id!r} has no {a.modality} image for the fused prediction{more}; add it, or "
                        "predict from the modalities each case has with --missing-modality skip", a.expected)
    out_dir = Path(out_dir)
    record: dict = {"run": str(runs[0]) if len(runs) == 1 else [str(r) for r in runs], "modalities": modalities,
                    "fused": True, "input": str(input_path),
                    "regions": None if regions is None else {"classes": regions.classes, "values": regions.values,
                                                             "as_files": regions_as_files},
                    "engine": engine, "window": window, "margin": margin, "threshold": threshold,
                    "tta": tta or uncertainty, "uncertainty": "flip-std" if uncertainty else None,
                    "missing_policy": missing, "cases": {}}
    written = []
    if tta or uncertainty:
        warn_mirroring(runs)
    with exclusive(out_dir, "prediction folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        with tqdm(found, desc=f"predict {fused_name(modalities)}", unit="case", disable=not progress) as bar:
            for case_id, loaders in bar:
                used = list(loaders)
                channels = len(regions.classes) if regions else 1
                raw, why, weights = ensemble_fused_choice(run_infos, [spelling[m] for m in used], stored, channels)
                if postprocess is not None:
                    raw, why = postprocess, "given by the user"
                try:
                    post = region_postprocess(raw, regions) if regions else check_spec(raw)
                except ValueError as err:
                    raise DataError(str(err)) from None
                ref, probs, spread, notes = _fuse_case(loaders, nets, spelling, tta, uncertainty, window, margin,
                                                       channels, weights)
                for m, note in notes.coarse.items():
                    bar.write(f"warning: case {case_id!r}: its {m} image is {note}: expect a less accurate mask",
                              file=sys.stderr)
                for m, (source, value) in notes.constant.items():  # one blank modality drags the fused map down
                    bar.write(constant_warning(case_id, source, value), file=sys.stderr)
                header = ref.header.copy() if ref.header is not None else None
                if regions is None:
                    paths = [out_dir / f"{case_id}.nii.gz"]
                    atomic_save_nifti(nib.Nifti1Image(threshold_masks(probs, threshold, post, ref.spacing), ref.affine,
                                                      header), paths[0], dtype=np.uint8)
                else:  # one label map painted by the target's rule, or one mask per region
                    paths = write_region_masks(probs, threshold, post, regions, regions_as_files, ref, case_id,
                                               header, out_dir)
                written.extend(paths)
                four_d = (lambda a: a) if regions is None else (lambda a: np.moveaxis(a, 0, -1))  # regions last
                if save_probabilities:
                    atomic_save_nifti(nib.Nifti1Image(four_d(probs), ref.affine, header),
                                      out_dir / f"{case_id}_prob.nii.gz", dtype=np.float32)
                if uncertainty:
                    atomic_save_nifti(nib.Nifti1Image(four_d(spread.std()), ref.affine, header),
                                      out_dir / f"{case_id}{UNCERTAINTY_SUFFIX}", dtype=np.float32)
                record["cases"][case_id] = {
                    "masks": [str(p.relative_to(out_dir)) for p in paths], "modalities": used,
                    "reference_grid": used[0], "postprocessing": post, "postprocessing_from": why,
                    "weights": weights or "mean",
                    "missing": {a.modality: str(a.expected) for a in absent if a.case_id == case_id},
                    "coarse_inputs": notes.coarse,
                    "constant_inputs": {m: value for m, (_, value) in notes.constant.items()}}
    atomic_write_text(out_dir / "predict.json", json.dumps(record, indent=1))
    return written


@dataclass
class InputNotes:
    """What a fused case's inputs warn about, per modality: stored coarser than the network's
    training spacing (the note), or one value in every voxel ((file, value))."""
    coarse: dict[str, str] = field(default_factory=dict)
    constant: dict[str, tuple[str, float]] = field(default_factory=dict)


def _fuse_case(loaders, nets, spelling, tta: bool, uncertainty: bool, window: str, margin: int, channels: int,
               weights: dict[str, list[float]] | None = None):
    """(reference case, fused probability on its grid, the members' :class:`Spread`, the
    :class:`InputNotes` of the case). ``weights`` (the run's spelling -> weight per channel): each
    modality's mean over its members, weighted per channel; None: the mean of all members."""
    ref = None
    spread = Spread()
    per_modality: dict[str, np.ndarray] = {}
    notes = InputNotes()
    for m, load in loaders.items():
        case = load()
        if ref is None:
            ref = case
        image = next(iter(case.images.values()))
        runner, info = nets[m]
        prep = info["preprocessing"]
        note = coarse_input_note(case.affine, prep)
        if note:
            notes.coarse[m] = note
        value = constant_value(image)
        if value is not None:
            notes.constant[m] = (str(next(iter(case.sources.values()), f"its {m} image")), value)
        if uncertainty:
            members = flip_members(runner, image, case.affine, prep, spelling[m], window, margin, channels=channels)
        else:
            members = [probabilities_on_grid(None, image, case.affine, prep, None, None, tta=tta, engine=runner,
                                             window=window, margin=margin, modality=spelling[m], channels=channels)]
        own = Spread() if weights is not None else None  # a modality's own mean: only when weighting
        for p in members:
            aligned = align_to_grid(p, case.affine, ref.shape, ref.affine)
            spread.add(aligned)
            if own is not None:
                own.add(aligned)
        if own is not None:
            per_modality[spelling[m]] = own.mean()
    assert ref is not None
    if weights is None:
        return ref, spread.mean(), spread, notes
    fused = weighted_sum(per_modality, weights, channel_axis=None if channels == 1 else 0)
    return ref, fused, spread, notes
