"""Benchmark: training throughput of one process vs torchrun DDP processes on this machine.

Every setting trains the same run (method semicml, the ``cpu`` profile: width 16, global batch
8 labelled + 8 unlabelled, 160x160 phantom slices, no validation split, so the timed loop is
training only) through the real command line, interleaved and repeated so that ratios are
comparable on a noisy machine:

    1 process, all threads    python -m semicml train ...
    1 process, 1 thread       OMP_NUM_THREADS=1 python -m semicml train ...
    N processes (DDP, gloo)   torchrun --standalone --nproc_per_node N -m semicml train ...

The time is ``run.json: seconds_last_session`` (rank 0's training loop, start-up excluded).

    python benchmarks/bench_ddp.py [--iterations 8] [--repeats 2] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's shared helpers
from host import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]



def run_setting(name: str, nproc: int, threads: int | None, store: Path, config: Path, out: Path,
                iterations: int) -> float:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    train = ["-m", "semicml", "train", str(store), "--out", str(out), "--config", str(config), "--method", "semicml",
             "--iterations", str(iterations), "--device", "cpu"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *train]
    else:
        cmd = [sys.executable, *train]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    return float(json.loads((out / "run.json").read_text())["seconds_last_session"])


def write_result(args, settings, seconds: dict[str, list[float]], wall: float) -> list[dict]:
    slices = 16 * args.iterations  # paired slices per run (global batch 8 + 8)
    base = statistics.median(seconds[settings[0][0]])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for name, nproc, threads in settings:
        if not seconds[name]:
            continue
        med = statistics.median(seconds[name])
        rows.append({"setting": name, "processes": nproc, "threads_per_process": threads or torch.get_num_threads(),
                     "seconds": seconds[name], "median_seconds": med, "paired_slices_per_s": slices / med,
                     "speed_vs_1_process": base / med, "load_average_at_end": load})
    result = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
              "platform": platform.platform(), "iterations": args.iterations, "global_batch": "8 labelled + 8 unlabelled",
              "slice_size": 160, "width": 16, "method": "semicml", "repeats_done": len(seconds[settings[-1][0]]),
              "wall_minutes": round(wall / 60, 1), "rows": rows,
              "note": "1-minute load average of the shared host at the end of the run; other jobs compete for the cores"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_ddp.json").write_text(json.dumps(result, indent=2) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ddp-cpu-amd-epyc-avx2")
    args = parser.parse_args()

    from semicml.data.phantom import write_phantom
    from semicml.data.store import PrepareOptions, prepare_store

    settings = [("1 process, all threads", 1, None), ("1 process, 1 thread", 1, 1),
                (f"{args.nproc} processes (DDP), 1 thread each", args.nproc, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_phantom(work / "data", cases=8, seed=0, shape=(160, 160, 32))
        store = prepare_store(data, work / "store", PrepareOptions(modalities=("T2", "T1ce"), size=160),
                              progress=False)
        config = work / "bench.yaml"
        # cpu profile, no validation split (training only is timed), labelled share large enough
        # that both streams are never short; post-processing is chosen on validation: none here.
        config.write_text("model: {base_width: 16}\nlabeled_batch: 8\nunlabeled_batch: 8\nlabeled_fraction: 0.3\n"
                          "val_fraction: 0.0\ntest_fraction: 0.125\npostprocess: none\nlog_every: 5\n")
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in settings}
        t0 = time.time()
        for rep in range(args.repeats):
            for i, (name, nproc, threads) in enumerate(settings):
                seconds[name].append(run_setting(name, nproc, threads, store, config, work / f"run-{rep}-{i}",
                                                 args.iterations))
                print(f"repeat {rep + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
            rows = write_result(args, settings, seconds, time.time() - t0)  # after every repeat: partial is kept
    print(f"\n{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, 1-min load average at the end "
          f"{rows[0]['load_average_at_end']}; semicml stage 1, cpu profile, 160x160, global batch 8+8, "
          f"{args.iterations} iterations, {args.repeats} repeats (median)\n")
    print(f"{'setting':40s} {'s / run':>9s} {'slices/s':>9s} {'vs 1 proc':>9s}")
    for r in rows:
        print(f"{r['setting']:40s} {r['median_seconds']:9.1f} {r['paired_slices_per_s']:9.2f} "
              f"{r['speed_vs_1_process']:9.2f}")
    print(f"\n-> {args.out / 'bench_ddp.json'}")


if __name__ == "__main__":
    main()
