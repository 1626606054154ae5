"""Can the recipe fit the patients it saw? Each modality's network of a finished run, on the run's
TRAINING patients (3D, original grid, the run's post-processing), twice: with the weights chosen on
validation (what `predict` uses) and with the final weights of the last iteration (the training
checkpoint). Issue 9 asks supervised-100% to reach T2 Dice >= 0.90 on its own training patients;
the selected weights answer "what does the user get", the final ones "can this network and budget
fit at all" (model selection keeps early weights when validation Dice peaks early).

    python benchmarks/fit_check.py RUN [RUN ...] --data ../shared/data/brats18 --out fit.json [--md fit.md]

``--split test``: the same two weight sets on the run's TEST patients (does model selection on the
few validation patients pick weights that generalise worse than the last ones?).

The final weights are written into a scratch copy of the run (``OUT.parent/fit-scratch``); the run
itself is not touched. Rows are printed as they finish; the JSON holds per-run means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from semicml.pipeline import evaluate_run

KEYS = ("dice", "hd95", "precision", "sensitivity", "components")
COPIED = ("run.json", "config.yaml", "splits.json", "labeled_subset.json")


def final_weights_copy(run: Path, scratch: Path) -> tuple[Path, int]:
    """A copy of ``run`` whose weights/<modality>.pt carry the checkpoint's last networks."""
    info = json.loads((run / "run.json").read_text())
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    if scratch.exists():
        shutil.rmtree(scratch)
    (scratch / "weights").mkdir(parents=True)
    for name in COPIED:
        if (run / name).exists():
            shutil.copy2(run / name, scratch / name)
    for i, m in enumerate(info["modalities"]):
        record = torch.load(run / "weights" / f"{m}.pt", map_location="cpu", weights_only=False)
        prefix = f"students.{i}."
        state = {k[len(prefix):]: v for k, v in ckpt["networks"].items() if k.startswith(prefix)}
        missing = set(record["state_dict"]) ^ set(state)
        if missing:
            raise SystemExit(f"{run}: checkpoint network {i} does not match weights/{m}.pt ({sorted(missing)[:3]})")
        record = {**record, "state_dict": state, "iteration": int(ckpt["iteration"])}
        torch.save(record, scratch / "weights" / f"{m}.pt")
    return scratch, int(ckpt["iteration"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="JSON written here (resumable: finished runs are kept)")
    ap.add_argument("--md", type=Path, help="Markdown table")
    ap.add_argument("--split", choices=("train", "test"), default="train", help="the run's patients to evaluate on")
    args = ap.parse_args()
    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run in args.runs:
        key = str(run)
        if key in done:
            continue
        info = json.loads((run / "run.json").read_text())
        scratch, last = final_weights_copy(run, args.out.parent / f"fit-scratch-{args.split}")
        row = {"selected_iteration": {m: info["best_val"][m].get("iteration") if isinstance(info["best_val"].get(m), dict)
                                      else None for m in info["modalities"]},
               "final_iteration": last, "split": args.split}
        for label, folder in (("selected", run), ("final", scratch)):
            grid_test = run / "eval" / "evaluation"
            if label == "selected" and args.split == "test" and grid_test.is_dir():
                # the grid's own test of these weights (the same predict and evaluate code)
                row[label] = {m: {k: json.loads((grid_test / m / "summary.json").read_text())["mean"].get(k)
                                  for k in KEYS} for m in info["modalities"]}
                continue
            out = args.out.parent / f"fit-eval-{args.split}" / "-".join(run.parts[-3:]) / label  # ROW-seedS-foldF
            metrics = evaluate_run(folder, args.data, out, progress=False, split=args.split)
            row[label] = {m: {k: metrics[m].get(k) for k in KEYS} for m in metrics}
            print(run, label, {m: round(v["dice"], 3) for m, v in row[label].items()}, flush=True)
        done[key] = row
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1))
        tmp.replace(args.out)
    if args.md:
        mods = list(dict.fromkeys(m for row in done.values() for m in row["selected"]))
        shown = ("dice", "precision", "sensitivity")
        lines = ["| run | weights | " + " | ".join(f"{m} {k}" for m in mods for k in shown) + " |",
                 "|---|---|" + "---:|" * (len(mods) * len(shown))]
        for key, row in done.items():
            for label in ("selected", "final"):
                cells = [f"{row[label].get(m, {}).get(k, float('nan')):.3f}" for m in mods for k in shown]
                lines.append(f"| {key} | {label} | " + " | ".join(cells) + " |")
        args.md.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
