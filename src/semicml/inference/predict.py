"""``semicml predict``: segment cases for which only ONE modality exists.

Everything is derived from that modality alone: the axial axis from its affine, the normalisation
from its own intensities. The network sees the WHOLE slice (it is fully convolutional), so no
tumour outside the training crop is lost; post-processing is the one chosen on validation and
stored with the weights. Masks are written on the original grid with the original affine and
header.

Region targets (one sigmoid channel per region): each region is thresholded and post-processed on
its own, then written as one label map by painting the regions in order, later overwriting
earlier (nnU-Net's rule; BraTS: 2 where wt, 1 where tc, 4 where et), or with
``regions_as_files`` as one mask per region, ``<out>/<region>/<case>.nii.gz``.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.case import Case
from ..data.context import context_of_channels, context_of_network
from ..data.preprocess import coarse_input_note, network_frame
from ..data.readers import input_labelling, read_single_modality
from ..data.readers.nifti import check_input_file
from ..data.targets import Target, in_labelling, label_map_from_regions
from ..errors import ConfigError, DataError
from ..hardware import Precision, resolve_device, resolve_precision
from ..io_utils import atomic_write_bytes, atomic_write_text
from ..locking import exclusive
from .engines import Engine, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine, check_engine
from .ensemble import EnsembleEngine, ensemble_info, postprocess_of_members
from .export import FORMATS, load_torchscript, model_format, onnx_model_bytes, read_export, sidecar_path
from .postprocess import NONE, apply_postprocess, check_spec
from .predictor import WINDOWS, engine_planes
from .uncertainty import UNCERTAINTY_SUFFIX, flip_spread
from .weights import load_weights

__all__ = ["atomic_save_nifti", "load_model", "load_models", "load_weights", "predict_cases", "probabilities_on_grid",
           "region_postprocess", "region_target", "write_region_masks"]


def atomic_save_nifti(image: nib.Nifti1Image, path: Path, dtype) -> None:
    """Write a .nii.gz without ever leaving a half-written file at ``path``.

    The header comes from the input scan; its display window (cal_min/cal_max) and intent are the
    scan's, not the mask's (a viewer honouring cal_max = 1000 shows a 0/1 mask black): cleared."""
    image.set_data_dtype(dtype)
    header = image.header
    if isinstance(header, nib.Nifti1Header):  # NIfTI-2 headers derive from it
        header["cal_min"], header["cal_max"] = 0, 0
        header.set_intent("none")
    atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))  # mtime 0: same bytes twice


def probabilities_on_grid(net: torch.nn.Module | None, image: np.ndarray, affine: np.ndarray, preprocessing: dict,
                          device: torch.device | None, precision: Precision | None, channels_last: bool = True,
                          tta: bool = False, engine: Engine | None = None, window: str = "whole",
                          margin: int = 0, batch_size: int = 32, modality: str | None = None,
                          channels: int = 1) -> np.ndarray:
    """Foreground probability of a single-modality 3D image, on the image's own voxel grid; for a
    network with ``channels`` > 1 outputs (region targets) ``(C, *image.shape)``, one map per region.

    The image is normalised as its modality was at training and its planes resampled to the
    training spacing (runs made before spacing was recorded: its own grid); stores made by
    cropping are predicted on the whole slice (padded to the network's down-sampling factor),
    stores made by resizing in the same box as at training. Probabilities go back to the input
    grid linearly (see :func:`semicml.data.preprocess.network_frame`).
    ``engine`` runs the network (default: ``net`` in PyTorch on ``device`` with ``precision``);
    ``window``/``margin``: see :mod:`semicml.inference.predictor`.
    """
    if engine is None:
        engine = TorchEngine(net, device, precision, channels_last)
    frame = network_frame(image, affine, preprocessing, modality or "", engine.multiple)
    probs = engine_planes(engine, frame.planes, batch_size=batch_size, tta=tta, window=window, margin=margin,
                          channels=channels)
    return frame.restore(probs)


def region_target(info: dict) -> Target | None:
    """The region target recorded with a network (weights file or export), or None (binary)."""
    target = info.get("target") or {}
    return Target(**target) if target.get("regions") else None


def in_input_labelling(regions: Target | None, input_path: str | Path) -> Target | None:
    """A network's regions in the labelling of the input's dataset when it says one (a network
    trained on BraTS 2018 writes enhancing tumour as 3 on BraTS 2023 scans, as their labels do)."""
    return None if regions is None else in_labelling(regions, input_labelling(input_path))


def region_postprocess(post: str | dict, target: Target) -> dict[str, str]:
    """One spec per region: a given spec for all, or the per-region choice stored with the weights."""
    if isinstance(post, str):
        return {r: check_spec(post) for r in target.classes}
    missing = [r for r in target.classes if r not in post]
    if missing:
        raise DataError(f"the stored post-processing names no choice for region(s) {', '.join(missing)}")
    return {r: check_spec(post[r]) for r in target.classes}


def check_region_output(regions: Target | None, as_files: bool) -> None:
    """Refuse, before anything is read, an output the network's target cannot give."""
    if as_files and regions is None:
        raise ConfigError("--regions-as-files needs a network trained on a region target (--target regions)")
    if regions is not None and regions.paint is None and not as_files:
        raise ConfigError(f"the regions {', '.join(regions.classes)} cannot be painted into one label map "
                          "(a later region covers an earlier one); use --regions-as-files")


def check_run_options(window: str, margin: int, engine: str, device: str, compile: bool) -> None:
    """Refuse, before anything is loaded, options that cannot go together (predict and fused predict)."""
    if window not in WINDOWS:
        raise ConfigError(f"unknown window {window!r} (choose from {', '.join(WINDOWS)})")
    if margin < 0:
        raise ConfigError(f"--margin must be >= 0, got {margin}")
    if compile and engine != "torch":
        raise ConfigError(f"--compile applies to --engine torch (the {engine} engine compiles the graph itself)")
    if engine != "torch" and device not in ("auto", "cpu"):
        raise ConfigError(f"--engine {engine} runs on the CPU; --device {device} needs --engine torch")


def select_cases(found: list, cases: list[str] | None, what: str, input_path: str | Path) -> list:
    """``found`` ((case id, loader) pairs) restricted to ``cases``; every asked case must exist."""
    if cases is not None:
        ids = {cid for cid, _ in found}
        for cid in cases:
            if cid not in ids:
                raise DataError(f"case {cid!r} with {what} not found", input_path)
        wanted = set(cases)
        found = [(cid, load) for cid, load in found if cid in wanted]
    if not found:
        raise DataError(f"no case with {what} found", input_path)
    # Every input's header first (cheap: a .nii.gz is decompressed no further): a bad file among
    # many stops the run before any mask is written, not after half of them.
    for _, load in found:
        for one in (load.values() if isinstance(load, dict) else [load]):
            source = getattr(one, "source", None)
            if source is not None:
                check_input_file(Path(source), "input image")
    return found


def is_export(path: str | Path) -> bool:
    """An exported model (``.onnx``, ``.torchscript.pt`` or any file with an export sidecar)."""
    path = Path(path)
    return path.is_file() and (path.name.endswith((".onnx", FORMATS["torchscript"])) or sidecar_path(path).is_file())


def load_model(run: str | Path, modality: str, engine: str = "torch", device: str | torch.device = "cpu",
               precision: str = "auto", threads: int | None = None, compile: bool = False) -> tuple[Engine, dict]:
    """The network of ``modality`` ready to run -> (engine, info with ``preprocessing``,
    ``postprocessing``).

    ``run``: a run directory, a weights file, or a model written by ``semicml export``. An
    ONNX engine given a run exports its network in memory first (a few seconds); a TorchScript
    export runs in the torch engine.
    """
    check_engine(engine)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    prec = resolve_precision(precision, dev)
    if threads and engine == "torch":
        torch.set_num_threads(int(threads))
    if is_export(run):
        meta = read_export(run)
        if str(meta.get("modality", "")).lower() != modality.lower():
            raise DataError(f"this model is for modality {meta.get('modality')!r}, not {modality!r}", run)
        fmt = model_format(run)
        if fmt == "onnx" and engine == "torch":
            raise ConfigError("an ONNX model runs with --engine onnxruntime or openvino (torch runs a run "
                              "directory, a weights file or a TorchScript export)", run)
        if fmt == "torchscript" and engine != "torch":
            raise ConfigError(f"a TorchScript model runs with --engine torch, not {engine}", run)
        multiple = 2 ** int(meta["levels"])
        context = context_of_channels(int(meta.get("network", {}).get("in_channels", 1)))
        if engine == "torch":
            net = load_torchscript(run, dev)
            runner: Engine = TorchEngine(net, dev, prec, channels_last=True, compile=compile)
            runner.multiple, runner.context = multiple, context
        else:
            runner = _onnx_engine(engine, Path(run), multiple, threads, context)
        return runner, meta
    net, payload = load_weights(run, modality, dev)
    if engine == "torch":
        return TorchEngine(net, dev, prec, channels_last=True, compile=compile), payload
    levels = int(getattr(net, "levels", 4))
    return _onnx_engine(engine, onnx_model_bytes(net, levels, optimize=False), 2 ** levels, threads,
                        context_of_network(net)), payload


def run_list(run: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """``run`` as a list: one run, or the members of an ensemble (in the order given)."""
    runs = [run] if isinstance(run, (str, Path)) else list(run)
    if not runs:
        raise ConfigError("no run given")
    return runs


def load_models(run: str | Path | Sequence[str | Path], modality: str, engine: str = "torch",
                device: str | torch.device = "cpu", precision: str = "auto", threads: int | None = None,
                compile: bool = False) -> tuple[Engine, dict]:
    """:func:`load_model` for one run; for several, their :class:`~semicml.inference.ensemble.EnsembleEngine`
    and the first member's info with the post-processing the members chose
    (:func:`~semicml.inference.ensemble.postprocess_of_members`; ``info["ensemble"]`` records them)."""
    runs = run_list(run)
    loaded = [load_model(r, modality, engine, device, precision, threads, compile) for r in runs]
    if len(loaded) == 1:
        return loaded[0]
    infos = [info for _, info in loaded]
    info = dict(ensemble_info(runs, infos, modality))
    choices = [i.get("postprocessing", NONE) for i in infos]
    info["postprocessing"], agreed = postprocess_of_members(choices)
    info["ensemble"] = {"runs": [str(r) for r in runs], "postprocessing_of_members": choices,
                        "postprocessing_agreed": agreed}
    return EnsembleEngine([runner for runner, _ in loaded]), info


def _onnx_engine(engine: str, model: Path | bytes, multiple: int, threads: int | None, context: int = 0) -> Engine:
    cls = OnnxRuntimeEngine if engine == "onnxruntime" else OpenVinoEngine
    return cls(model, multiple, threads, context)


def predict_cases(run: str | Path | Sequence[str | Path], modality: str, input_path: str | Path, out_dir: str | Path,
                  device: str = "auto", precision: str = "auto", save_probabilities: bool = False,
                  threshold: float = 0.5, progress: bool = True, cases: list[str] | None = None,
                  tta: bool = False, postprocess: str | None = None, engine: str = "torch",
                  window: str = "whole", margin: int = 0, threads: int | None = None,
                  compile: bool = False, regions_as_files: bool = False, uncertainty: bool = False) -> list[Path]:
    """Segment every case of ``input_path`` that has ``modality`` with that modality's network.

    ``run``: run directory, weights file or exported model (see :func:`load_model`), or several:
    their ensemble (the mean probability, :mod:`semicml.inference.ensemble`).
    ``postprocess``: None uses the choice stored with the weights (made on validation); or
    ``none``, ``largest``, ``min-size:<mm^3>``, ``near:<mm>``. ``engine``: torch | onnxruntime | openvino (the
    masks are the same). ``window``: whole (default) | brain, see :mod:`semicml.inference.predictor`.
    ``regions_as_files``: a region network writes one mask per region (``<out>/<region>/<case>.nii.gz``)
    instead of one label map.
    ``uncertainty``: also write ``<case>_uncertainty.nii.gz``, the flip disagreement of
    :mod:`semicml.inference.uncertainty` (the mask is then the flip mean, as with ``tta``).
    """
    check_run_options(window, margin, engine, device, compile)
    dev = resolve_device(device if engine == "torch" else "cpu")
    runs = run_list(run)
    runner, info = load_models(runs, modality, engine, dev, precision, threads, compile)
    ensemble = info.get("ensemble")
    if ensemble and postprocess is None and not ensemble["postprocessing_agreed"]:
        print(f"note: the ensemble's runs chose different post-processing on their validation cases "
              f"({', '.join(map(str, ensemble['postprocessing_of_members']))}); using "
              f"{info['postprocessing']} (most chosen, ties to the first run; --postprocess overrides)",
              file=sys.stderr)
    regions = in_input_labelling(region_target(info), input_path)
    try:
        stored = postprocess if postprocess is not None else info.get("postprocessing", NONE)
        post = region_postprocess(stored, regions) if regions else check_spec(stored)
    except ValueError as err:
        raise DataError(str(err)) from None
    check_region_output(regions, regions_as_files)
    found = select_cases(read_single_modality(input_path, modality), cases, f"modality {modality!r}", input_path)
    out_dir = Path(out_dir)
    about = {"run": ensemble["runs"] if ensemble else str(runs[0]), "modality": modality,
             **({"postprocessing_of_members": ensemble["postprocessing_of_members"]} if ensemble else {}),
             "input": str(input_path), "engine": engine, "window": window, "margin": margin,
             **({"uncertainty": "flip-std"} if uncertainty else {})}
    if regions is not None:
        about["regions"] = {"classes": regions.classes, "values": regions.values,
                            "written_as": "one mask per region" if regions_as_files else
                            f"one label map, painted in order with {regions.paint}"}
    if tta or uncertainty:
        warn_mirroring(runs)
    with exclusive(out_dir, "prediction folder"):  # one writer per folder (another fails naming this PID)
        out_dir.mkdir(parents=True, exist_ok=True)
        return _predict_all(found, out_dir, runner, info["preprocessing"], post, threshold, save_probabilities,
                            tta or uncertainty, progress, about, network_modality=info.get("modality"),
                            regions=regions, regions_as_files=regions_as_files)


#: Measured (benchmarks/results/brats18-cv-2mm/tta-screen.md): flip TTA of networks trained without
#: mirroring, paired over 16 patients, T1ce -0.093 Dice [-0.164, -0.028], T2 +0.005.
UNMIRRORED_NOTE = ("were trained without mirroring (`augment: false`), so the flip average of --tta / "
                   "--uncertainty includes mirrored slices they never saw (on the BraTS 2 mm cross-validation it "
                   "lowered T1ce Dice by 0.09); train with --augment to use them")


def warn_mirroring(runs: Sequence[str | Path]) -> None:
    """Print :func:`mirroring_warning` of each run that has one (flip TTA / uncertainty asked)."""
    for run in runs:
        if note := mirroring_warning(run):
            print(note, file=sys.stderr)


def mirroring_warning(run: str | Path) -> str | None:
    """A warning when ``run``'s training config (``config.yaml`` of the run directory, also found from
    ``RUN/weights/*.pt`` or ``RUN/export/*``) says the networks never saw a mirrored slice; None
    when they did or when it is unknown (a model file without its run)."""
    from ..config import load_yaml_mapping  # pydantic imports slowly; only --tta / --uncertainty get here

    path = Path(run)
    config = path / "config.yaml" if path.is_dir() else path.parent.parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        augment = load_yaml_mapping(config, "training config", empty_ok=True).get("augment")
    except ConfigError:
        return None
    return f"warning: the networks of {path} {UNMIRRORED_NOTE}" if augment is False else None


def constant_value(image: np.ndarray) -> float | None:
    """The value of an image that holds one value in every voxel (e.g. a blank export), else None."""
    if image.size and float(np.min(image)) == float(np.max(image)):
        return float(np.min(image))
    return None


def constant_warning(case_id: str, source, value: float) -> str:
    return (f"warning: case {case_id!r}: {source} has the same value ({value:g}) in every voxel: there is no "
            "image to segment")


def _predict_all(found, out_dir: Path, runner: Engine, preprocessing: dict, post: str | dict[str, str],
                 threshold: float, save_probabilities: bool, tta: bool, progress: bool, about: dict,
                 network_modality: str | None = None, regions: Target | None = None,
                 regions_as_files: bool = False) -> list[Path]:
    modality = about["modality"]
    network_modality = network_modality or modality  # the name its normalisation was recorded under
    written, coarse, constant = [], {}, {}
    with tqdm(found, desc=f"predict {modality}", unit="case", disable=not progress) as bar:
        for case_id, load in bar:
            case: Case = load()
            image = next(iter(case.images.values()))
            note = coarse_input_note(case.affine, preprocessing)
            if note:
                coarse[case_id] = note
                bar.write(f"warning: case {case_id!r} is {note}: expect a less accurate mask", file=sys.stderr)
            value = constant_value(image)
            if value is not None:
                constant[case_id] = value
                bar.write(constant_warning(case_id, next(iter(case.sources.values()), "its image"), value),
                          file=sys.stderr)
            channels = len(regions.classes) if regions else 1
            if about.get("uncertainty"):
                probs, spread = flip_spread(runner, image, case.affine, preprocessing, network_modality,
                                            about["window"], about["margin"], channels=channels)
            else:
                probs = probabilities_on_grid(None, image, case.affine, preprocessing, None, None, tta=tta,
                                              engine=runner, window=about["window"], margin=about["margin"],
                                              modality=network_modality, channels=channels)
            header = case.header.copy() if case.header is not None else None
            if regions is None:
                mask = apply_postprocess((probs > threshold).astype(np.uint8), post, case.spacing)
                path = out_dir / f"{case_id}.nii.gz"
                atomic_save_nifti(nib.Nifti1Image(mask, case.affine, header), path, dtype=np.uint8)
                written.append(path)
            else:
                written.extend(write_region_masks(probs, threshold, post, regions, regions_as_files, case, case_id,
                                                  header, out_dir))
            if save_probabilities:  # region targets: 4D, the regions along the last axis
                stack = probs if regions is None else np.moveaxis(probs, 0, -1)
                atomic_save_nifti(nib.Nifti1Image(stack.astype(np.float32), case.affine, header),
                                  out_dir / f"{case_id}_prob.nii.gz", dtype=np.float32)
            if about.get("uncertainty"):  # region targets: 4D like the probabilities
                spread = spread if regions is None else np.moveaxis(spread, 0, -1)
                atomic_save_nifti(nib.Nifti1Image(spread, case.affine, header),
                                  out_dir / f"{case_id}{UNCERTAINTY_SUFFIX}", dtype=np.float32)
    atomic_write_text(out_dir / "predict.json", json.dumps({**about, "cases": [str(p.relative_to(out_dir))
                                                                               for p in written],
                                                           "threshold": threshold, "tta": tta,
                                                           "postprocessing": post, "coarse_inputs": coarse,
                                                           "constant_inputs": constant},
                                                          indent=1))
    return written


def write_region_masks(probs: np.ndarray, threshold: float, post: dict[str, str], regions: Target, as_files: bool,
                       case: Case, case_id: str, header, out_dir: Path) -> list[Path]:
    """(C, ...) region probabilities -> each region thresholded and post-processed alone -> one
    painted label map, or one mask per region in ``<out>/<region>/``."""
    masks = np.stack([apply_postprocess((probs[k] > threshold).astype(np.uint8), post[r], case.spacing)
                      for k, r in enumerate(regions.classes)]).astype(bool)
    if not as_files:
        label = label_map_from_regions(masks, regions)
        path = out_dir / f"{case_id}.nii.gz"
        atomic_save_nifti(nib.Nifti1Image(label, case.affine, header), path, dtype=label.dtype)
        return [path]
    paths = []
    for k, r in enumerate(regions.classes):
        path = out_dir / r / f"{case_id}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        atomic_save_nifti(nib.Nifti1Image(masks[k].astype(np.uint8), case.affine, header), path, dtype=np.uint8)
        paths.append(path)
    return paths
