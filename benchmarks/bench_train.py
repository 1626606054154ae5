"""Benchmark: training throughput (paired slices/s) of the Semi-CML and PReL steps, side by side
for precision/memory-format settings, inference seconds per 240x240x155 volume, and the test
Dice of a short phantom run per setting (so a faster setting cannot silently cost accuracy).

All settings are measured in ONE process, interleaved, so ratios are comparable on a noisy machine.

    python benchmarks/bench_train.py [--width 32] [--size 160] [--steps 6] [--dice-iterations 300]
                                     [--device cuda] [--settings default,fp32_nchw,bf16_cl,compile]

On CUDA the timings synchronize the device and the table adds the peak GPU memory per setting.
A setting that fails (e.g. no compiler for torch.compile) is reported and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SETTINGS = {
    "default": {"precision": "auto", "channels_last": True},
    "fp32_nchw": {"precision": "fp32", "channels_last": False},
    "bf16_cl": {"precision": "bf16", "channels_last": True},
    # torch.compile of the trained networks (config ``compile``); its first step compiles.
    "compile": {"precision": "auto", "channels_last": True, "compile": True},
}
WARMUP = {"compile": 3}  # untimed steps: compilation, and recompilation for other batch shapes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(store, out: Path, setting: dict, width: int, lb: int, ub: int, iterations: int = 100, seed: int = 0,
             device: str = "auto"):
    from semicml.config import build_config
    from semicml.engine.trainer import Trainer

    cfg = build_config(overrides={"method": "semicml-prel", "model": {"base_width": width}, "labeled_batch": lb,
                                  "unlabeled_batch": ub, "iterations": iterations, "seed": seed, "device": device,
                                  "labeled_fraction": 0.3, "val_fraction": 0.2, "test_fraction": 0.2,
                                  "optim": {"lr": 3e-3, "milestones": [0.7, 0.9]}, **setting})
    return Trainer(cfg, store, out, progress=False)


def _step_rate(trainer, stage: str, steps: int, warmup: int = 1) -> tuple[float, float]:
    """Paired slices per second of full optimisation steps (forward, backward, update), and the
    seconds of the first step (kernel warm-up; with ``compile``, the compilation)."""
    from timing import step_times  # same folder

    from semicml.data.sampler import PairedSliceDataset, TwoStreamBatchSampler, collate_two_stream

    ds = PairedSliceDataset(trainer.store, trainer.subset.labeled, trainer.subset.unlabeled, trainer.modalities,
                            context=trainer.cfg.model.context)
    sampler = TwoStreamBatchSampler(len(ds.keys[: ds.n_labeled]), len(ds.keys) - ds.n_labeled,
                                    trainer.cfg.labeled_batch, trainer.cfg.unlabeled_batch, 0, 0, steps + warmup)
    batches = ({key: trainer._to_device(v) for key, v in collate_two_stream([ds[i] for i in idx]).items()}
               for idx in sampler)
    times = step_times(trainer.method, trainer.optimizer, batches, stage, trainer.precision.autocast,
                       lambda: _sync(trainer.device))
    n = trainer.cfg.labeled_batch + trainer.cfg.unlabeled_batch
    # the first steps warm up kernels / allocator / compiler
    return n / float(np.median(times[warmup:])), float(sum(times[:warmup]))


def _inference_seconds(trainer, repeats: int = 2) -> float:
    from semicml.inference.predict import probabilities_on_grid

    rng = np.random.default_rng(0)
    vol = np.zeros((240, 240, 155), np.float32)
    vol[40:200, 30:210, 10:145] = rng.normal(100, 20, (160, 180, 135))  # brain-sized non-zero block
    modality, net = next(iter(trainer.method.predictors().items()))
    prep = trainer._preprocessing()
    prep["size"] = trainer.store.size
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        probabilities_on_grid(net, vol, affine, prep, trainer.device, trainer.precision,
                              channels_last=trainer.cfg.channels_last, modality=modality)
        _sync(trainer.device)
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32, help="U-Net base width (paper: 32)")
    ap.add_argument("--size", type=int, default=160, help="slice size (paper: 160)")
    ap.add_argument("--labeled-batch", type=int, default=20)
    ap.add_argument("--unlabeled-batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--settings", default="default,fp32_nchw,bf16_cl", help=f"comma-separated: {', '.join(SETTINGS)}")
    ap.add_argument("--no-inference", action="store_true", help="skip the inference timing (see bench_infer.py)")
    ap.add_argument("--dice-iterations", type=int, default=0, help="short phantom run per setting (0: skip)")
    ap.add_argument("--dice-settings", default="default,fp32_nchw", help="settings that get the short run")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    torch.manual_seed(0)

    from semicml.data.phantom import write_phantom
    from semicml.data.store import PrepareOptions, prepare_store
    from semicml.hardware import cpu_has_fast_bf16, resolve_device, resolve_precision
    from semicml.pipeline import evaluate_run

    names = [s for s in args.settings.split(",") if s]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {', '.join(unknown)} (choose from {', '.join(SETTINGS)})")
    work = Path(tempfile.mkdtemp(prefix="semicml-bench-train-"))
    shape = (max(args.size, 96), max(args.size, 96), 32)
    data = write_phantom(work / "phantom", cases=10, seed=0, shape=shape)
    store = prepare_store(data, work / "store", PrepareOptions(modalities=("T2", "T1ce"), size=args.size),
                          progress=False)
    device = resolve_device(args.device)
    rows = {n: {"precision": resolve_precision(SETTINGS[n]["precision"], device).name,
                "channels_last": SETTINGS[n]["channels_last"], "compile": SETTINGS[n].get("compile", False)}
            for n in names}
    trainers = {n: _trainer(store, work / f"r_{n}", SETTINGS[n], args.width, args.labeled_batch,
                            args.unlabeled_batch, device=args.device) for n in names}
    for stage in ("semicml", "prel"):
        for n in names:  # interleaved: every setting sees the same machine state
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                rate, first = _step_rate(trainers[n], stage, args.steps, WARMUP.get(n, 1))
            except Exception as err:  # noqa: BLE001 - e.g. no compiler for torch.compile: report, go on
                rows[n][f"{stage}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                rows[n][f"{stage}_slices_per_s"] = float("nan")
                continue
            if device.type == "cuda":
                rows[n][f"{stage}_peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            rows[n][f"{stage}_slices_per_s"] = round(rate, 2)
            rows[n][f"{stage}_first_step_s"] = round(first, 1)
            print(f"  {stage} {n}: {rate:.2f} slices/s (first step {first:.1f} s)", file=sys.stderr, flush=True)
    for n in names if not args.no_inference else []:
        rows[n]["inference_s_per_volume"] = round(_inference_seconds(trainers[n]), 2)
    if args.dice_iterations:
        for n in [s for s in args.dice_settings.split(",") if s in names]:
            run = work / f"dice_{n}"
            tr = _trainer(store, run, SETTINGS[n], 8, 8, 8, iterations=args.dice_iterations, device=args.device)
            t0 = time.perf_counter()
            tr.fit()
            rows[n]["short_run_seconds"] = round(time.perf_counter() - t0, 1)
            res = evaluate_run(run, data, work / f"eval_{n}", progress=False)
            rows[n]["short_run_test_dice"] = {m: round(r["dice"], 4) for m, r in res.items()}
    base = rows.get("fp32_nchw")
    if base:
        for n in names:
            for stage in ("semicml", "prel"):
                rows[n][f"{stage}_speedup_vs_fp32_nchw"] = round(rows[n][f"{stage}_slices_per_s"]
                                                                 / base[f"{stage}_slices_per_s"], 2)
    from host import cpu_info  # same folder

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result = {"device": str(device), "gpu": gpu, "cpu": cpu_info(), "load_average_1min": round(os.getloadavg()[0], 2),
              "cpu_fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "width": args.width, "size": args.size,
              "batch": [args.labeled_batch, args.unlabeled_batch], "settings": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(result, indent=1))
    keys = sorted({k for r in rows.values() for k in r})
    print(f"device={device} fast_bf16={result['cpu_fast_bf16']} width={args.width} size={args.size} "
          f"batch={args.labeled_batch}+{args.unlabeled_batch}")
    print(f"{'':34s}" + "".join(f"{n:>22s}" for n in names))
    for k in keys:
        print(f"{k:34s}" + "".join(f"{str(rows[n].get(k, '')):>22s}" for n in names))


if __name__ == "__main__":
    main()
