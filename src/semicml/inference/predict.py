"""``semicml predict``: segment cases for which only ONE modality exists.

Everything is derived from that modality alone: the axial axis from its affine, the normalisation
from its own intensities. The network sees the WHOLE slice (it is fully convolutional), so no
tumour outside the training crop is lost; post-processing is the one chosen on validation and
stored with the weights. Masks are written on the original grid with the original affine and
header.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.case import Case
from ..data.preprocess import network_frame
from ..data.readers import read_single_modality
from ..checkpoint import load_checkpoint
from ..errors import DataError
from ..hardware import Precision, resolve_device, resolve_precision
from ..io_utils import atomic_write_bytes, atomic_write_text
from ..locking import exclusive
from ..models import build_network
from .postprocess import NONE, apply_postprocess, check_spec
from .predictor import predict_planes


def atomic_save_nifti(image: nib.Nifti1Image, path: Path, dtype) -> None:
    """Write a .nii.gz without ever leaving a half-written file at ``path``."""
    image.set_data_dtype(dtype)
    atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))  # mtime 0: same bytes twice


def load_weights(run: str | Path, modality: str, device: torch.device):
    """Network of ``modality`` from a run directory (or a weights file) -> (net, payload)."""
    run = Path(run)
    if run.is_file():
        path = run
    else:
        if not run.is_dir():
            raise DataError("run directory not found", run)
        weights = {p.stem.lower(): p for p in (run / "weights").glob("*.pt")}
        if modality.lower() not in weights:
            have = ", ".join(sorted(p.stem for p in weights.values())) or "none"
            raise DataError(f"no network for modality {modality!r} in this run (has: {have})", run)
        path = weights[modality.lower()]
    payload = load_checkpoint(path, "cpu")
    if payload.get("format") != "semicml-weights-v1":
        raise DataError("not a semicml weights file", path)
    net = build_network(payload["network"])
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval(), payload


def probabilities_on_grid(net: torch.nn.Module, image: np.ndarray, affine: np.ndarray, preprocessing: dict,
                          device: torch.device, precision: Precision, channels_last: bool = True,
                          tta: bool = False, modality: str | None = None) -> np.ndarray:
    """Foreground probability of a single-modality 3D image, on the image's own voxel grid.

    The image is normalised as its modality was at training and its planes resampled to the
    training spacing (runs made before spacing was recorded: its own grid); stores made by
    cropping are predicted on the whole slice (padded to the network's down-sampling factor),
    stores made by resizing in the same box as at training. Probabilities go back to the input
    grid linearly (see :func:`semicml.data.preprocess.network_frame`).
    """
    frame = network_frame(image, affine, preprocessing, modality or "", 2 ** getattr(net, "levels", 4))
    probs = predict_planes(net, frame.planes, device, precision, channels_last=channels_last, tta=tta)
    return frame.restore(probs)


def predict_cases(run: str | Path, modality: str, input_path: str | Path, out_dir: str | Path,
                  device: str = "auto", precision: str = "auto", save_probabilities: bool = False,
                  threshold: float = 0.5, progress: bool = True, cases: list[str] | None = None,
                  tta: bool = False, postprocess: str | None = None) -> list[Path]:
    """Segment every case of ``input_path`` that has ``modality`` with that modality's network.

    ``postprocess``: None uses the choice stored with the weights (made on validation); or
    ``none``, ``largest``, ``min-size:<mm^3>``.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    net, payload = load_weights(run, modality, dev)
    try:
        post = check_spec(postprocess if postprocess is not None else payload.get("postprocessing", NONE))
    except ValueError as err:
        raise DataError(str(err)) from None
    found = read_single_modality(input_path, modality)
    if cases is not None:
        ids = {cid for cid, _ in found}
        for cid in cases:
            if cid not in ids:
                raise DataError(f"case {cid!r} with modality {modality!r} not found", input_path)
        found = [(cid, load) for cid, load in found if cid in set(cases)]
    if not found:
        raise DataError(f"no case with modality {modality!r} found", input_path)
    out_dir = Path(out_dir)
    with exclusive(out_dir, "prediction folder"):  # one writer per folder (another fails naming this PID)
        out_dir.mkdir(parents=True, exist_ok=True)
        return _predict_all(found, out_dir, net, payload, post, dev, prec, threshold, save_probabilities, tta,
                            progress, {"run": str(run), "modality": modality, "input": str(input_path)})


def _predict_all(found, out_dir: Path, net, payload: dict, post, dev, prec, threshold: float,
                 save_probabilities: bool, tta: bool, progress: bool, about: dict) -> list[Path]:
    modality = about["modality"]
    written = []
    with tqdm(found, desc=f"predict {modality}", unit="case", disable=not progress) as bar:
        for case_id, load in bar:
            case: Case = load()
            image = next(iter(case.images.values()))
            probs = probabilities_on_grid(net, image, case.affine, payload["preprocessing"], dev, prec, tta=tta,
                                          modality=payload.get("modality", modality))
            mask = apply_postprocess((probs > threshold).astype(np.uint8), post, case.spacing)
            header = case.header.copy() if case.header is not None else None
            path = out_dir / f"{case_id}.nii.gz"
            atomic_save_nifti(nib.Nifti1Image(mask, case.affine, header), path, dtype=np.uint8)
            written.append(path)
            if save_probabilities:
                atomic_save_nifti(nib.Nifti1Image(probs.astype(np.float32), case.affine, header),
                                  out_dir / f"{case_id}_prob.nii.gz", dtype=np.float32)
    atomic_write_text(out_dir / "predict.json", json.dumps({**about, "cases": [p.name for p in written],
                                                           "threshold": threshold, "tta": tta,
                                                           "postprocessing": post}, indent=1))
    return written
