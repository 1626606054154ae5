"""End-to-end pipelines built from the stage functions (used by ``semicml demo``).

files -> cases -> slice store -> batches -> method -> engine -> weights -> predict -> evaluate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import build_config
from .data.phantom import write_phantom
from .data.geometry import resample_to_grid
from .data.phantom_headneck import write_headneck_phantom
from .data.store import PrepareOptions, SliceStore, prepare_store
from .engine.trainer import Trainer
from .errors import DataError
from .evaluation.evaluate import evaluate_predictions, on_reference_grid
from .evaluation.plots import plot_overlays, plot_training_curves
from .inference.fusion import fused_name, predict_fused
from .inference.predict import predict_cases
from .io_utils import atomic_write_json

# The demo's budget: a 2-core laptop CPU, under 10 minutes end to end.
DEMO_SHAPE = (128, 128, 40)
DEMO_SIZE = 128
DEMO_TRAIN: dict[str, Any] = {
    "method": "semicml-prel",
    "model": {"base_width": 8},
    "iterations": 400,
    "labeled_batch": 8,
    "unlabeled_batch": 8,
    "labeled_fraction": 0.1,
    "min_labeled": 60,  # the paper's protocol: 10% of the training slices, at least 60
    "val_every": 25,
    "optim": {"lr": 3e-3, "milestones": [0.5, 0.75]},
    "val_fraction": 0.15,
    "test_fraction": 0.25,
}


def overlay_rows(store: SliceStore, case: str, predictions: dict[str, Path], run_info: dict,
                 uncertainty: dict[str, Path] | None = None) -> list[dict]:
    """One row per modality (or fused ``T2+T1ce``, shown on its first modality's image): the stored
    slice with most tumour, its label, the prediction and, when given, the uncertainty map."""
    import nibabel as nib

    meta = store.cases[case]
    label = np.asarray(store.label(case))
    z = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(1)))
    rows = []
    for m, pred_path in predictions.items():
        img = nib.load(str(pred_path))
        pred = np.asanyarray(img.dataobj) > 0
        if pred.shape != tuple(meta.shape) or not np.allclose(img.affine, meta.affine, atol=1e-3):
            pred = on_reference_grid(pred, img.affine, meta.shape, meta.affine, pred_path)  # e.g. PET's own grid
        pred_planes = meta.to_stored_frame(pred.astype(np.uint8), nearest=True)
        shown = store.modality_index(m.split("+")[0])
        row = {"title": f"{case} z={z} {m}", "image": np.asarray(store.images(case)[z, shown], dtype=np.float32),
               "label": label[z] > 0, "pred": pred_planes[:, :, z] > 0}
        if uncertainty and m in uncertainty:
            u_img = nib.load(str(uncertainty[m]))
            u = np.asarray(u_img.dataobj, dtype=np.float32)
            if u.shape != tuple(meta.shape) or not np.allclose(u_img.affine, meta.affine, atol=1e-3):
                u = resample_to_grid(u, u_img.affine, meta.shape, meta.affine, order=1)
            row["uncertainty"] = meta.to_stored_frame(u)[:, :, z]
        rows.append(row)
    return rows


def evaluate_run(run_dir: Path, dataset: Path, out: Path, progress: bool = True,
                 split: str = "test", fused: bool = False, singles: bool = True) -> dict[str, dict[str, float]]:
    """Predict every case of ``split`` (test; train to check the fit) with each modality's network
    ALONE and evaluate it in 3D; with ``fused`` (and two or more modalities), also the fused
    prediction of all of them, under the key ``T2+T1ce`` (see :mod:`semicml.inference.fusion`).
    ``singles=False`` evaluates only the fused one."""
    info = json.loads((run_dir / "run.json").read_text())
    test = info["splits"].get(split)
    if not test:
        raise DataError(f"the run has no {split} split to evaluate", run_dir)
    target = info["target"]["name"]
    results: dict[str, dict[str, float]] = {}
    for m in info["modalities"] if singles else []:
        pred_dir = out / "predictions" / m
        predict_cases(run_dir, m, dataset, pred_dir, cases=test, progress=progress)
        summary = evaluate_predictions(pred_dir, dataset, target, out / "evaluation" / m, cases=test,
                                       title=f"{info['method']} - {m} alone", progress=progress)
        results[m] = summary["mean"]
    if fused and len(info["modalities"]) >= 2:
        name = fused_name(info["modalities"])
        pred_dir = out / "predictions" / name
        predict_fused(run_dir, info["modalities"], dataset, pred_dir, cases=test, progress=progress)
        summary = evaluate_predictions(pred_dir, dataset, target, out / "evaluation" / name, cases=test,
                                       title=f"{info['method']} - {name} fused", progress=progress)
        results[name] = summary["mean"]
    return results


#: What the demo prepares for each phantom kind: modalities (the first is the reference grid) and target.
DEMO_KINDS: dict[str, dict[str, Any]] = {
    "brain": {"modalities": ("T2", "T1ce"), "target": "wt"},
    "headneck": {"modalities": ("CT", "PT"), "target": "GTVt"},  # PET resampled onto the CT grid at prepare
}


def run_demo(out: Path, cases: int = 24, iterations: int | None = None, seed: int = 0, kind: str = "brain") -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError("demo output folder exists and is not empty; choose another --out", out)
    t0 = time.time()
    setting = DEMO_KINDS[kind]
    print(f"[1/5] {kind} phantom: {cases} cases {DEMO_SHAPE} -> {out / 'phantom'}")
    if kind == "headneck":
        dataset = write_headneck_phantom(out / "phantom", cases=cases, seed=seed, shape=DEMO_SHAPE)
    else:
        dataset = write_phantom(out / "phantom", cases=cases, seed=seed, shape=DEMO_SHAPE)
    print(f"[2/5] prepare slice store -> {out / 'store'}")
    store_path = prepare_store(dataset, out / "store", PrepareOptions(modalities=setting["modalities"],
                                                                     target=setting["target"], size=DEMO_SIZE))
    names = " + ".join(setting["modalities"])
    print(f"[3/5] train Semi-CML + PReL ({names}, 10% of training slices labelled, at least 60)")
    overrides = dict(DEMO_TRAIN, seed=seed)
    if iterations is not None:
        overrides["iterations"] = iterations
    cfg = build_config(overrides=overrides)
    run_dir = out / "run"
    info = Trainer(cfg, store_path, run_dir).fit()
    print(f"      teacher: {info.get('teacher', {}).get('modality')} (by {info.get('teacher', {}).get('chosen_by')}), "
          f"best val Dice {({m: round(v['dice'], 4) for m, v in info['best_val'].items()})}")
    print("[4/5] predict each modality ALONE on the held-out test cases, evaluate in 3D")
    metrics = evaluate_run(run_dir, dataset, out, fused=True)
    atomic_write_json(out / "metrics.json", metrics)
    print("[5/5] plots (overlays: each network alone, and fused with its uncertainty map)")
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    plot_training_curves(rows, out / "training_curves.png")
    store = SliceStore(store_path)
    test_case = info["splits"]["test"][0]
    preds = {m: out / "predictions" / m / f"{test_case}.nii.gz" for m in info["modalities"]}
    fused = fused_name(info["modalities"])
    predict_fused(run_dir, info["modalities"], dataset, out / "uncertainty", cases=[test_case], uncertainty=True,
                  progress=False)
    preds[fused] = out / "uncertainty" / f"{test_case}.nii.gz"  # the flip mean the map describes
    maps = {fused: out / "uncertainty" / f"{test_case}_uncertainty.nii.gz"}
    plot_overlays(overlay_rows(store, test_case, preds, info, uncertainty=maps), out / "overlays.png")
    print()
    print("test metrics (mean over held-out phantom cases, each modality's network alone, then fused):")
    print(f"{'modality':10s} {'dice':>7s} {'jaccard':>8s} {'hd95 mm':>8s} {'asd mm':>7s} {'prec':>6s} {'sens':>6s}")
    for m, r in metrics.items():
        print(f"{m:10s} {r['dice']:7.4f} {r['jaccard']:8.4f} {r['hd95']:8.2f} {r['asd']:7.2f} "
              f"{r['precision']:6.3f} {r['sensitivity']:6.3f}")
    print(f"\ndone in {time.time() - t0:.0f} s -> {out} (metrics.json, training_curves.png, overlays.png)")
    return metrics
