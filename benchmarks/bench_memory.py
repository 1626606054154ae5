"""Benchmark: memory (RSS) of a long training run. A 2,000-iteration Semi-CML + PReL run on the
phantom (tiny width) with the process's resident set size sampled every 50 iterations; after a
warm-up (the first 20% of the run: allocator pools, the PReL teachers, cuDNN/oneDNN caches), RSS
must not grow by more than 5%. A leak of one batch per iteration (~100 KB at this size) would add
~160 MB over the run and fail.

    python benchmarks/bench_memory.py [--iterations 2000] [--every 50] [--threads 1] [--out benchmarks/results/memory]

Prints a table and writes memory.json and memory.png into --out. Linux (reads /proc/self/status);
elsewhere the peak RSS from ``resource`` is used, which can only show growth.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

MAX_GROWTH = 0.05
WARMUP = 0.2


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from semicml.config import build_config
    from semicml.data.phantom import write_phantom
    from semicml.data.store import PrepareOptions, prepare_store
    from semicml.engine.trainer import Trainer
    from semicml.evaluation.plots import plot_training_curves  # noqa: F401 (matplotlib warm, as in a real run)

    work = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    data = write_phantom(work / "data", cases=8, seed=0, shape=(64, 64, 24))
    store = prepare_store(data, work / "store", PrepareOptions(modalities=("T2", "T1ce"), size=64, workers=1),
                          progress=False)
    cfg = build_config(overrides={"method": "semicml-prel", "model": {"base_width": args.width, "levels": 3},
                                  "iterations": args.iterations, "labeled_batch": 4, "unlabeled_batch": 4,
                                  "labeled_fraction": 0.3, "val_every": 100, "log_every": args.every,
                                  "num_workers": 0, "device": "cpu", "postprocess": "none"})
    trainer = Trainer(cfg, store, work / "run", progress=False)
    samples: list[dict] = []
    done = threading.Event()

    def sample() -> None:  # the loop has no per-iteration hook: watch the iteration counter instead
        last = -1
        while not done.is_set():
            it = trainer.iteration
            if it // args.every != last and it % args.every == 0 and it > 0:
                last = it // args.every
                samples.append({"iteration": it, "rss_mb": round(rss_mb(), 1), "seconds": round(time.time() - t0, 1)})
            time.sleep(0.005)

    t0 = time.time()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    trainer.fit()
    done.set()
    watcher.join()
    seconds = time.time() - t0

    warm = [s for s in samples if s["iteration"] >= WARMUP * args.iterations]
    base = warm[0]["rss_mb"]
    peak = max(s["rss_mb"] for s in warm)
    growth = (peak - base) / base
    result = {"iterations": args.iterations, "every": args.every, "width": args.width, "warmup_fraction": WARMUP,
              "rss_after_warmup_mb": base, "rss_peak_after_warmup_mb": peak, "rss_final_mb": samples[-1]["rss_mb"],
              "growth_after_warmup": round(growth, 4), "threads": args.threads, "max_growth": MAX_GROWTH, "passed": growth <= MAX_GROWTH,
              "seconds": round(seconds, 1), "torch": torch.__version__, "platform": platform.platform(),
              "processor": platform.processor() or platform.machine(), "samples": samples}
    print(f"{'iteration':>9s} {'RSS MB':>8s} {'s':>7s}")
    for s in samples:
        print(f"{s['iteration']:9d} {s['rss_mb']:8.1f} {s['seconds']:7.1f}")
    print(f"\nRSS after warm-up (it {warm[0]['iteration']}): {base:.1f} MB; peak after: {peak:.1f} MB; "
          f"growth {growth * 100:+.2f}% (limit {MAX_GROWTH * 100:.0f}%): {'PASS' if result['passed'] else 'FAIL'}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s["iteration"] for s in samples], [s["rss_mb"] for s in samples], marker=".", lw=1)
    ax.axvline(warm[0]["iteration"], color="grey", ls=":", label="end of warm-up")
    ax.axhline(base * (1 + MAX_GROWTH), color="red", ls="--", lw=0.8, label="+5% limit")
    ax.set_xlabel("iteration")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"semicml-prel, width {args.width}, phantom 64x64: RSS every {args.every} iterations")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out / "memory.png", dpi=110)
    print(f"-> {args.out / 'memory.json'}, {args.out / 'memory.png'}")


if __name__ == "__main__":
    main()
