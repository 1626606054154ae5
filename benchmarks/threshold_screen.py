"""Would a probability threshold chosen on validation beat 0.5? An offline screen of finished runs.

Every network of each run on its validation and test cases (the stored slice frame, 3D Dice per
case, the run's recorded post-processing applied), at several thresholds; then the rule a trainer
could apply — the best mean validation Dice, thresholds within ``--tolerance`` of it counting as
equal, the one nearest 0.5 among those — and what that choice would have changed on the test cases.

    python benchmarks/threshold_screen.py RUN [RUN ...] --out threshold.json

Prints one row per run and modality; writes every per-case Dice to ``--out``. Test cases are only
read to report the consequence of the validation choice, never to make it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT = 0.5


def screen(run: Path, thresholds: list[float]) -> dict:
    """{"val"|"test": {modality: {threshold: [Dice per case]}}} for a binary-target run."""
    import torch

    from semicml.data.store import SliceStore
    from semicml.engine.validation import val_probabilities
    from semicml.errors import DataError
    from semicml.evaluation.metrics import dice_score
    from semicml.hardware import resolve_device, resolve_precision
    from semicml.inference.postprocess import apply_postprocess
    from semicml.inference.weights import load_weights

    torch.set_num_threads(1)
    info_path = run / "run.json"
    if not info_path.is_file():
        raise DataError("not a finished run (no run.json)", run)
    info = json.loads(info_path.read_text())
    if info.get("target", {}).get("regions"):
        raise DataError("region targets are not screened here (one threshold per channel)", run)
    store = SliceStore(info["store"])
    device = resolve_device("cpu")
    nets = {m: load_weights(run, m, device)[0] for m in info["modalities"]}
    post = {m: (info.get("postprocessing") or {}).get(m, {}).get("choice", "none") for m in nets}
    out: dict = {}
    for part in ("val", "test"):
        probs, labels, spacings = val_probabilities(store, info["splits"][part], nets, device,
                                                    resolve_precision("fp32", device))
        for m in nets:
            out.setdefault(part, {})[m] = {
                str(t): [dice_score(apply_postprocess(p[:, 0] > t, post[m], sp), y[:, 0])
                         for p, y, sp in zip(probs[m], labels, spacings)] for t in thresholds}
    return out


def rule(val: dict[str, list[float]], tolerance: float) -> float:
    """The validation choice: best mean Dice, within ``tolerance`` equal, then nearest 0.5."""
    means = {float(t): float(np.mean(d)) for t, d in val.items()}
    best = max(means.values())
    return min((t for t, v in means.items() if v >= best - tolerance), key=lambda t: (abs(t - DEFAULT), t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--thresholds", default="0.2,0.3,0.4,0.5,0.6")
    ap.add_argument("--tolerance", type=float, default=0.005, help="validation Dice differences that count as equal")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if DEFAULT not in thresholds:
        raise SystemExit("--thresholds must include 0.5 (the default it is compared with)")
    results, gains = {}, {}
    print(f"{'run':40s} {'modality':8s} " + " ".join(f"val@{t:<4}" for t in thresholds)
          + " " + " ".join(f"test@{t:<4}" for t in thresholds) + "  chosen  test change")
    for run in args.runs:
        res = screen(run, thresholds)
        results[str(run)] = res
        for m, val in res["val"].items():
            pick = rule(val, args.tolerance)
            test = res["test"][m]
            change = float(np.mean(test[str(pick)]) - np.mean(test[str(DEFAULT)]))
            gains.setdefault(m, []).append(change)
            print(f"{str(run)[-40:]:40s} {m:8s} " + " ".join(f"{np.mean(val[str(t)]):8.3f}" for t in thresholds)
                  + " " + " ".join(f"{np.mean(test[str(t)]):9.3f}" for t in thresholds)
                  + f"  {pick:6.2f}  {change:+.3f}", flush=True)
    summary = {m: float(np.mean(g)) for m, g in gains.items()}
    print("mean test change of the validation choice per run: "
          + ", ".join(f"{m} {g:+.3f}" for m, g in summary.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"thresholds": thresholds, "tolerance": args.tolerance,
                                    "mean_test_change": summary, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
