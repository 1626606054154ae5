"""Benchmark: seconds to predict ONE modality of a 240x240x155 volume on this CPU, per engine and setting.

Every setting runs the same code as ``semicml predict`` (``probabilities_on_grid``: normalisation,
slice windows, network, paste back; reading and writing NIfTI excluded), on one real BraTS volume
(T2, or ``--modality``) when ``../shared/data/brats18`` exists (else a synthetic brain-shaped
volume), side by side in ONE process, interleaved round by round so that a busy machine slows
every setting alike; the minimum over rounds is reported. Widths: 16 (cpu profile) and 32 (paper). Each row also gives
the largest probability difference and the number of mask voxels that differ from today's path
(meaningful with ``--run``: a trained network; otherwise weights are random).

    python benchmarks/bench_infer.py [--widths 16,32] [--rounds 3] [--run RUN --modality t2] [--settings ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's shared helpers
from host import cpu_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# name: (engine, window, channels_last, compile, batch)
SETTINGS = {
    "eager (today)": ("torch", "whole", True, False, 32),
    "eager NCHW": ("torch", "whole", False, False, 32),
    "eager batch 1": ("torch", "whole", True, False, 1),
    "torch.compile": ("torch", "whole", True, True, 32),
    "onnxruntime": ("onnxruntime", "whole", True, False, 32),
    "openvino": ("openvino", "whole", True, False, 32),
    "openvino batch 8": ("openvino", "whole", True, False, 8),
    "eager + brain window": ("torch", "brain", True, False, 32),
    "onnxruntime + brain window": ("onnxruntime", "brain", True, False, 32),
    "openvino + brain window": ("openvino", "brain", True, False, 32),
    "onnxruntime + brain window 16": ("onnxruntime", "brain", True, False, 32),
    "openvino + brain window 16": ("openvino", "brain", True, False, 32),
    # int8: `semicml export --quantize int8` (static, calibrated on the run's training slices; needs --run)
    "onnxruntime int8": ("onnxruntime", "whole", True, False, 32),
    "onnxruntime int8 + brain window": ("onnxruntime", "brain", True, False, 32),
    "openvino int8 + brain window": ("openvino", "brain", True, False, 32),
    "onnxruntime int8 + brain window 16": ("onnxruntime", "brain", True, False, 32),
}
INT8 = {n for n in SETTINGS if " int8" in n}
# pixels of margin around the brain window (predict --margin); settings not named here use 0
MARGINS = {"onnxruntime + brain window 16": 16, "openvino + brain window 16": 16,
           "onnxruntime int8 + brain window 16": 16}



def load_volume(path: str | None, modality: str = "t2") -> tuple[np.ndarray, np.ndarray, str]:
    import nibabel as nib

    data = Path(os.environ.get("SEMICML_BRATS18", REPO.parent / "shared/data/brats18"))
    if path is None:
        found = sorted(glob.glob(str(data / "*" / f"*_{modality.lower()}.nii.gz")))
        path = found[0] if found else None
    if path is not None:
        img = nib.load(path)
        return np.asarray(img.dataobj, dtype=np.float32), img.affine, str(path)
    # Brain-like: an ellipsoid of noisy tissue in 138 of 155 slices, as in BraTS.
    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[:240, :240, :155]
    inside = ((x - 120) / 70) ** 2 + ((y - 120) / 85) ** 2 + ((z - 77) / 69) ** 2 <= 1
    vol = np.where(inside, rng.normal(300, 60, (240, 240, 155)), 0).astype(np.float32)
    return vol, np.diag([-1.0, -1.0, 1.0, 1.0]), "synthetic ellipsoid 240x240x155"


def make_engine(setting: tuple, net, onnx: bytes, multiple: int):
    from semicml.hardware import resolve_precision
    from semicml.inference.engines import OnnxRuntimeEngine, OpenVinoEngine, TorchEngine

    engine, _, channels_last, compile_, _ = setting
    cpu = torch.device("cpu")
    if engine == "torch":
        return TorchEngine(net, cpu, resolve_precision("fp32", cpu), channels_last, compile=compile_)
    cls = OnnxRuntimeEngine if engine == "onnxruntime" else OpenVinoEngine
    return cls(onnx, multiple)


def bench_width(width: int, names: list[str], rounds: int, vol, affine, run: str | None, modality: str) -> dict:
    from semicml.inference.export import onnx_model_bytes
    from semicml.inference.predict import load_weights, probabilities_on_grid
    from semicml.models import UNet2D, unet_widths

    if run is not None:
        net, payload = load_weights(run, modality, torch.device("cpu"))
        prep, weights = payload["preprocessing"], f"trained ({run})"
    else:
        torch.manual_seed(0)
        net = UNet2D(widths=unet_widths(width)).eval()
        prep, weights = {"in_plane": "crop", "size": 160, "normalisation": "zscore_nonzero"}, "random init"
    levels, width = net.levels, int(net.widths[0])
    t0 = time.perf_counter()
    onnx = onnx_model_bytes(net, levels)
    export_s = time.perf_counter() - t0
    int8 = None
    if INT8 & set(names):
        from semicml.inference.quantize import calibration_slices, quantize_onnx

        if run is None:
            raise SystemExit("int8 settings need --run (calibration slices come from the run's store)")
        int8 = quantize_onnx(onnx_model_bytes(net, levels, optimize=True),
                             calibration_slices(Path(run), payload.get("modality", modality), multiple=2 ** levels))
    engines, setup = {}, {}
    for n in names:
        t0 = time.perf_counter()
        engines[n] = make_engine(SETTINGS[n], net, int8 if n in INT8 else onnx, 2 ** levels)
        if SETTINGS[n][3]:  # torch.compile: the first call compiles (timed apart)
            probabilities_on_grid(None, vol, affine, prep, None, None, engine=engines[n], window=SETTINGS[n][1],
                                  margin=MARGINS.get(n, 0), batch_size=SETTINGS[n][4], modality=modality)
        setup[n] = round(time.perf_counter() - t0, 2)
    times = {n: [] for n in names}
    probs = {}
    for r in range(rounds):
        for n in names:  # interleaved
            _, window, _, _, batch = SETTINGS[n]
            t0 = time.perf_counter()
            probs[n] = probabilities_on_grid(None, vol, affine, prep, None, None, engine=engines[n], window=window,
                                             margin=MARGINS.get(n, 0), batch_size=batch, modality=modality)
            times[n].append(time.perf_counter() - t0)
            print(f"  width {width} round {r + 1}/{rounds} {n:28s} {times[n][-1]:7.2f} s", file=sys.stderr, flush=True)
    base_name = names[0]
    base, base_t = probs[base_name], min(times[base_name])
    rows = {}
    for n in names:
        rows[n] = {"engine": SETTINGS[n][0], "window": SETTINGS[n][1], "channels_last": SETTINGS[n][2],
                   "compile": SETTINGS[n][3], "batch": SETTINGS[n][4], "margin": MARGINS.get(n, 0),
                   "int8": n in INT8,
                   "seconds_per_volume": round(min(times[n]), 3), "seconds_all_rounds": [round(t, 3) for t in times[n]],
                   "speedup_vs_" + base_name: round(base_t / min(times[n]), 2),
                   "setup_seconds": setup[n],
                   "max_abs_prob_diff": float(np.abs(probs[n] - base).max()),
                   "mask_voxels_differing": int(((probs[n] > 0.5) != (base > 0.5)).sum()),
                   "mask_voxels": int((base > 0.5).sum())}
    return {"width": width, "weights": weights, "preprocessing": prep, "onnx_export_seconds": round(export_s, 2),
            "settings": rows}




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,32", help="U-Net base widths (random weights)")
    ap.add_argument("--run", default=None, help="a trained run: its --modality network replaces the widths")
    ap.add_argument("--modality", default="t2", help="with --run: the network of the volume's modality")
    ap.add_argument("--volume", default=None, help="NIfTI volume (default: first BraTS T2, else synthetic)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names (first = baseline)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/inference/<cpu>")
    args = ap.parse_args()

    names = [s for s in args.settings.split(",") if s]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    load_before = os.getloadavg()
    vol, affine, source = load_volume(args.volume, args.modality)
    nonempty = int(np.count_nonzero(vol.reshape(-1, vol.shape[2]).any(axis=0)))
    cpu = cpu_info()
    results = []
    widths = [None] if args.run else [int(w) for w in args.widths.split(",")]
    for width in widths:
        results.append(bench_width(width or 0, names, args.rounds, vol, affine, args.run, args.modality))
    result = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "volume": {"source": source, "shape": list(vol.shape), "nonzero_slices": nonempty},
              "rounds": args.rounds, "timing": "min over interleaved rounds, one process",
              # other work on a shared machine slows every setting: the load says how busy it was
              "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
              "results": results}
    for mod in ("onnxruntime", "openvino"):
        try:
            result[mod] = __import__(mod).__version__
        except ImportError:
            result[mod] = None
    best_isa = next((f for f in ("amx_tile", "avx512f", "avx2") if f in cpu["isa"]), "generic")
    slug = "-".join(cpu["model"].lower().replace("(r)", "").replace("(tm)", "").split()[:3]) + "-" + best_isa
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / "inference" / slug
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_infer_trained.json" if args.run else f"bench_infer_w{'-'.join(str(w) for w in widths)}.json"
    (out / name).write_text(json.dumps(result, indent=1) + "\n")
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores, {', '.join(cpu['isa'])}), torch {torch.__version__}, "
          f"{result['threads']} threads; volume {source} ({nonempty} non-empty slices)")
    for res in results:
        print(f"\nwidth {res['width']} ({res['weights']}); "
              f"ONNX export {res['onnx_export_seconds']} s")
        print(f"{'setting':30s} {'s/volume':>9s} {'speedup':>8s} {'max|dp|':>9s} {'mask diff':>10s}")
        for n, row in res["settings"].items():
            speed = row[f"speedup_vs_{names[0]}"]
            print(f"{n:30s} {row['seconds_per_volume']:9.2f} {speed:8.2f} {row['max_abs_prob_diff']:9.1e} "
                  f"{row['mask_voxels_differing']:10d}")
    print(f"\nwritten {out / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
