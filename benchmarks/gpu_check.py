"""The GPU path, proven end to end: the documented commands (`semicml prepare`, `semicml train`)
with the paper recipe on the shared BraTS cases, then each network alone on the test patients.

Records into benchmarks/results/gpu-<name>/ (summary.json, summary.md, bench_train.json):
training throughput (paired slices/s: fp32, bf16 autocast + channels_last, and the same compiled
with torch.compile), peak GPU memory, wall time of prepare / train / evaluation, and the test Dice,
HD95 and islands per modality. Run through benchmarks/gpu_check.sh; CI runs it on the CPU with a
tiny budget (--profile tiny) so the script cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _cli(*args: str) -> float:
    """Run one `semicml` command (as a user would) and return its wall time."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "semicml.cli", *args], check=True)
    return round(time.perf_counter() - t0, 1)


def _environment(device: str) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": device}
    if torch.cuda.is_available() and device != "cpu":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported())
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "brats18")
    ap.add_argument("--name", default=None, help="results folder suffix (default: the GPU's name)")
    ap.add_argument("--results", type=Path, default=None, help="default: benchmarks/results/gpu-<name>")
    ap.add_argument("--work", type=Path, default=Path("gpu_check_work"), help="store and run (not committed)")
    ap.add_argument("--modalities", default="t2,t1ce")
    ap.add_argument("--profile", default="paper", help="paper (the check) | tiny (CI dry run)")
    ap.add_argument("--method", default="semicml-prel")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--bench-steps", type=int, default=20, help="timed steps per setting (0: skip)")
    ap.add_argument("--bench-settings", default="fp32_nchw,default,compile")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args()

    from semicml.config import PROFILES
    from semicml.hardware import resolve_device

    device = str(resolve_device(args.device))
    env = _environment(device)
    name = args.name or (env.get("gpu") or "cpu").lower().replace(" ", "-")
    results = args.results or HERE / "results" / f"gpu-{name}"
    results.mkdir(parents=True, exist_ok=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"environment": env, "profile": args.profile, "method": args.method}

    store, run = work / "store", work / "run"
    if not store.exists():
        summary["prepare_seconds"] = _cli("prepare", str(args.data), str(store), "--modalities", args.modalities,
                                          "--size", str(args.size), "--workers", str(args.workers))
    width = PROFILES[args.profile].get("model", {}).get("base_width", 32)
    if args.bench_steps:
        bench = work / "bench"
        lb, ub = (PROFILES[args.profile].get(k, d) for k, d in (("labeled_batch", 20), ("unlabeled_batch", 4)))
        subprocess.run([sys.executable, str(HERE / "bench_train.py"), "--device", device, "--width", str(width),
                        "--size", str(args.size), "--labeled-batch", str(lb), "--unlabeled-batch", str(ub),
                        "--steps", str(args.bench_steps), "--settings", args.bench_settings, "--out", str(bench)],
                       check=False)
        if (bench / "bench_train.json").is_file():
            data = json.loads((bench / "bench_train.json").read_text())
            (results / "bench_train.json").write_text(json.dumps(data, indent=1))
            summary["throughput"] = data["settings"]
        else:  # a failed bench must not cost the end-to-end check
            (bench / "bench_train.json").write_text("{}")
            summary["throughput"] = None

    train = ["train", str(store), "--out", str(run), "--profile", args.profile, "--method", args.method,
             "--device", device]
    if (args.data / "splits.json").is_file():
        train += ["--splits", str(args.data / "splits.json")]
    if (run / "run.json").is_file():
        summary["train_seconds"] = None  # finished earlier: keep its numbers
    elif (run / "checkpoint.pt").is_file():
        summary["train_seconds"] = _cli("train", str(store), "--out", str(run), "--resume", "--device", device)
    else:
        summary["train_seconds"] = _cli(*train)
    summary["train_command"] = "semicml " + " ".join(train)
    info = json.loads((run / "run.json").read_text())
    summary.update(iterations=info["iterations"], precision=info["precision"], network=info["network"],
                   peak_gpu_memory_mib=info.get("peak_gpu_memory_mib"), teacher=info.get("teacher"),
                   postprocessing=info.get("postprocessing"), best_val=info.get("best_val"))
    if summary["train_seconds"]:  # includes validation, PReL's teacher choice and post-processing choice
        summary["train_iterations_per_s"] = round(info["iterations"] / summary["train_seconds"], 2)

    from semicml.pipeline import evaluate_run

    t0 = time.perf_counter()
    metrics = evaluate_run(run, args.data, work / "eval", progress=False)
    summary["evaluate_seconds"] = round(time.perf_counter() - t0, 1)
    summary["test"] = {m: {k: v.get(k) for k in ("dice", "hd95", "precision", "sensitivity", "components")}
                       for m, v in metrics.items()}
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# GPU check: {env.get('gpu', device)} (torch {env['torch']}, {args.profile} profile)", "",
             f"- train: `{summary['train_command']}`: {summary['train_seconds']} s for {info['iterations']} iterations "
             f"({info['precision']}), peak GPU memory {summary['peak_gpu_memory_mib']} MiB",
             f"- prepare {summary.get('prepare_seconds')} s, evaluation {summary['evaluate_seconds']} s", "",
             "| modality | test Dice | HD95 (mm) | islands |", "|---|---|---|---|"]
    lines += [f"| {m} | {v['dice']:.3f} | {v['hd95']:.1f} | {v.get('components')} |" for m, v in summary["test"].items()]
    if summary.get("throughput"):
        lines += ["", "| setting | Semi-CML slices/s | PReL slices/s | peak MiB |", "|---|---|---|---|"]
        lines += [f"| {k} | {v.get('semicml_slices_per_s')} | {v.get('prel_slices_per_s')} | "
                  f"{v.get('semicml_peak_gpu_mib')} |" for k, v in summary["throughput"].items()]
    (results / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
