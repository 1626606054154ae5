"""Choose the fusion weights of runs trained before they existed (issue 11).

Training now records, per set of modalities and per channel, which networks the fused prediction
trusts (``run.json: postprocessing_fused[<set>]["weights"]``, chosen on the validation cases; see
``semicml.inference.fusion_weights``). This script makes the same choice for a finished run from
its saved weights, its store and its validation split, and rewrites ``run.json`` (atomically; the
choice of each single network's post-processing is left as it was). It lets one compare, on the
same trained networks, the plain mean with the chosen weights.

    python benchmarks/refit_fusion.py RUN [RUN ...] [--device cpu] [--plain-mean] [--reset-benchmark]

Prints, per run and set, the candidate Dice per channel and the choice. ``--reset-benchmark``: the
run is part of a ``semicml benchmark`` grid; its fused evaluation and the fused rows of its marker
are removed, so the next ``semicml benchmark`` of that grid evaluates the fused prediction again
(and nothing else).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def refit(run: Path, device_name: str = "cpu", plain_mean: bool = False) -> tuple[dict, list[str]]:
    """(the new ``postprocessing_fused`` record, the run's region names; [] for a binary target)."""
    from semicml.data.store import SliceStore
    from semicml.engine.validation import choose_channel_postprocess, val_probabilities
    from semicml.errors import DataError
    from semicml.hardware import resolve_device, resolve_precision
    from semicml.inference.fusion import choose_fused_postprocessing
    from semicml.io_utils import atomic_write_json
    from semicml.inference.weights import load_weights

    info_path = run / "run.json"
    if not info_path.is_file():
        raise DataError("not a finished run (no run.json)", run)
    info = json.loads(info_path.read_text())
    store = SliceStore(info["store"])
    regions = list(info.get("target", {}).get("classes", [])) if info.get("target", {}).get("regions") else []
    device = resolve_device(device_name)
    nets = {m: load_weights(run, m, device)[0] for m in info["modalities"]}
    # the trainer's own helper, so the refit sees exactly what training's choice saw (fp32 here)
    probs, labels, spacings = val_probabilities(store, info["splits"]["val"], nets, device,
                                                resolve_precision("fp32", device))
    fused = choose_fused_postprocessing(probs, labels, spacings,
                                        choose=lambda p, y, sp: choose_channel_postprocess(p, y, sp, regions),
                                        weights=not plain_mean)
    info["postprocessing_fused"] = fused
    atomic_write_json(info_path, info)
    return fused, regions


def reset_fused_evaluation(run: Path) -> int:
    """Drop the fused rows of the run's benchmark marker and its fused prediction and evaluation
    folders; returns the number of rows dropped."""
    import shutil

    from semicml.io_utils import atomic_write_json

    marker = run / "result.json"
    if not marker.is_file():
        return 0
    done = json.loads(marker.read_text())
    fused = [r["modality"] for r in done["rows"] if "+" in r["modality"]]
    for name in fused:
        for part in ("predictions", "evaluation"):
            shutil.rmtree(run / "eval" / part / name, ignore_errors=True)
    done["rows"] = [r for r in done["rows"] if "+" not in r["modality"]]
    atomic_write_json(marker, done)
    return len(fused)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plain-mean", action="store_true",
                    help="record the plain mean's post-processing and no weights (the behaviour before them)")
    ap.add_argument("--reset-benchmark", action="store_true",
                    help="also drop the run's fused evaluation so `semicml benchmark` redoes it")
    args = ap.parse_args()
    for run in args.runs:
        fused, regions = refit(run, args.device, args.plain_mean)
        if args.reset_benchmark:
            print(f"{run}: {reset_fused_evaluation(run)} fused row(s) dropped from its benchmark marker")
        for name, rec in fused.items():
            if "weights_val_dice" not in rec:
                print(f"{run} {name}: plain mean, post-processing {rec['choice']}")
                continue
            cells = [f"{(regions or ['mask'])[i]}: {', '.join(f'{k} {v:.3f}' for k, v in d.items())} -> "
                     f"{rec['weights_chosen'][i]}" for i, d in enumerate(rec["weights_val_dice"])]
            print(f"{run} {name}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
