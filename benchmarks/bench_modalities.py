"""Benchmark: how training cost grows with the number of modalities (2, 3, 4 phantom contrasts).

Semi-CML + PReL trains one network per modality, so the networks' work grows linearly with the
count M; ASC and the mutual MSE are computed over every pair of modalities, M (M - 1) / 2 pairs
(1, 3, 6), i.e. quadratically. This script measures both, on one store of four-contrast phantom
slices (T2, T1ce, FLAIR, T1):

* seconds per optimisation step (forward, backward, update) of the Semi-CML stage and of the PReL
  stage, every count measured in ONE process, interleaved round by round (median of the steps);
* the pair terms alone (ASC + MSE over every pair, forward and backward on the unlabelled maps
  of one batch), timed the same way, to show their share;
* peak resident memory (Linux VmHWM) of a fresh process per count that builds the trainer and
  runs the same steps (memory cannot be separated inside one process: freed pages stay with the
  allocator), minus its RSS before the first step.

    python benchmarks/bench_modalities.py [--width 16] [--size 96] [--steps 4] [--rounds 3]
                                          [--out benchmarks/results/modalities]

Prints a table and writes ``modalities.json`` (with the CPU's name) into --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's shared helpers
from host import cpu_model  # noqa: E402
from timing import step_times  # noqa: E402

ALL = ("T2", "T1ce", "FLAIR", "T1")
COUNTS = (2, 3, 4)



def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_store(work: Path, size: int) -> Path:
    from semicml.data.phantom import write_phantom
    from semicml.data.store import PrepareOptions, prepare_store

    data = write_phantom(work / "data", cases=6, seed=0, shape=(size, size, 16), modalities=ALL)
    return prepare_store(data, work / "store", PrepareOptions(modalities=ALL, size=size, workers=1), progress=False)


def trainer(store: Path, out: Path, n: int, args):
    from semicml.config import build_config
    from semicml.engine.trainer import Trainer

    cfg = build_config(overrides={"method": "semicml-prel", "modalities": list(ALL[:n]),
                                  "model": {"base_width": args.width}, "labeled_batch": args.batch,
                                  "unlabeled_batch": args.batch, "iterations": 100, "labeled_fraction": 0.3,
                                  "val_fraction": 0.2, "test_fraction": 0.2, "device": "cpu", "precision": "fp32",
                                  "num_workers": 0})
    return Trainer(cfg, store, out, progress=False)


def batches(tr, count: int):
    from semicml.data.sampler import PairedSliceDataset, TwoStreamBatchSampler, collate_two_stream

    ds = PairedSliceDataset(tr.store, tr.subset.labeled, tr.subset.unlabeled, tr.modalities, context=tr.cfg.model.context)
    sampler = TwoStreamBatchSampler(ds.n_labeled, len(ds.keys) - ds.n_labeled, tr.cfg.labeled_batch,
                                    tr.cfg.unlabeled_batch, 0, 0, count)
    return [{k: tr._to_device(v) for k, v in collate_two_stream([ds[i] for i in idx]).items()} for idx in sampler]


def step_seconds(tr, stage: str, data: list) -> list[float]:
    """Seconds of each full optimisation step over ``data`` (the first is a warm-up, dropped)."""
    return step_times(tr.method, tr.optimizer, data, stage)[1:]


def pair_term_seconds(n: int, batch: int, size: int, repeats: int) -> float:
    """ASC + MSE over every pair of ``n`` unlabelled probability maps, forward + backward."""
    from itertools import combinations

    import torch

    from semicml.losses import multi_asc_loss, mutual_mse

    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(batch, 1, size, size, generator=gen, requires_grad=True) for _ in range(n)]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        probs = [torch.sigmoid(lg) for lg in logits]
        pairs = list(combinations(probs, 2))
        loss = multi_asc_loss(probs) + sum(mutual_mse(a, b) for a, b in pairs) / len(pairs)
        loss.backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def memory_child(store: str, n: int, args, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    tr = trainer(Path(store), Path(tempfile.mkdtemp(prefix="bench_mod_mem_")), n, args)
    data = batches(tr, args.steps + 1)
    before = status_mb("VmRSS")
    step_seconds(tr, "semicml", data)
    step_seconds(tr, "prel", data)
    queue.put({"rss_before_mb": round(before, 1), "peak_rss_mb": round(status_mb("VmHWM"), 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4, help="labelled and unlabelled slices per step (each)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per count, stage and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "modalities")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench_modalities_"))
    store = make_store(work, args.size)
    trainers = {n: trainer(store, work / f"run{n}", n, args) for n in COUNTS}
    data = {n: batches(trainers[n], args.steps + 1) for n in COUNTS}
    times: dict[int, dict[str, list[float]]] = {n: {"semicml": [], "prel": [], "pairs": []} for n in COUNTS}
    t_start = time.time()
    for r in range(args.rounds):  # interleaved: every count sees the same machine state
        for n in COUNTS:
            for stage in ("semicml", "prel"):
                times[n][stage] += step_seconds(trainers[n], stage, data[n])
            times[n]["pairs"].append(pair_term_seconds(n, args.batch, args.size, args.steps))
        print(f"  round {r + 1}/{args.rounds} done ({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)

    memory: dict[int, dict] = {}
    ctx = multiprocessing.get_context("spawn")
    for n in COUNTS:  # one fresh process per count
        queue = ctx.Queue()
        proc = ctx.Process(target=memory_child, args=(str(store), n, args, queue))
        proc.start()
        memory[n] = queue.get(timeout=900)
        proc.join()
        memory[n]["growth_mb"] = round(memory[n]["peak_rss_mb"] - memory[n]["rss_before_mb"], 1)

    rows = {}
    for n in COUNTS:
        rows[n] = {"modalities": list(ALL[:n]), "pairs": n * (n - 1) // 2,
                   "semicml_s_per_step": round(statistics.median(times[n]["semicml"]), 4),
                   "prel_s_per_step": round(statistics.median(times[n]["prel"]), 4),
                   "pair_terms_s": round(statistics.median(times[n]["pairs"]), 5), **memory[n]}
    base = rows[COUNTS[0]]
    for n in COUNTS:
        for key in ("semicml_s_per_step", "prel_s_per_step", "pair_terms_s", "growth_mb"):
            rows[n][key.replace("_s_per_step", "").replace("_s", "").replace("_mb", "") + "_ratio_vs_2"] = \
                round(rows[n][key] / base[key], 2) if base[key] else None
        rows[n]["semicml_pair_share"] = round(rows[n]["pair_terms_s"] / rows[n]["semicml_s_per_step"], 4)
    result = {"cpu": cpu_model(), "load_average_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__,
              "threads": args.threads, "width": args.width, "size": args.size, "batch": [args.batch, args.batch],
              "steps_per_round": args.steps, "rounds": args.rounds, "seconds_total": round(time.time() - t_start, 1),
              "counts": {str(n): rows[n] for n in COUNTS}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "modalities.json").write_text(json.dumps(result, indent=1))
    print(f"cpu={result['cpu']} threads={args.threads} width={args.width} size={args.size} "
          f"batch={args.batch}+{args.batch}")
    keys = [k for k in rows[COUNTS[0]] if k != "modalities"]
    print(f"{'modalities':28s}" + "".join(f"{n:>12d}" for n in COUNTS))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{str(rows[n][k]):>12s}" for n in COUNTS))


if __name__ == "__main__":
    main()
