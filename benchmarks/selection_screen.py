"""Which weights should a run keep? Checkpoint-selection rules screened on retrained grid runs.

A run keeps, per modality, the weights of its best validation (2 patients in the CV grids). With
one validation every 50 iterations that is the maximum of ~40 noisy scores, and it can land on a
spike: fold 2 of `semicml-prel+aug` seed 2 kept T2 from iteration 500 (validation 0.889; the
scores around it 0.77-0.87, later a steady 0.85) and missed one test patient almost entirely.

This retrains given grid runs (same configuration; ``--seed`` as ``rerun_seeds.py``) saving every
validated network (``snapshots/<modality>@<iteration>.pt``), then tests the weights each rule picks
from the run's validation curve, exactly as the grid tests (post-processing chosen again on the
validation patients for those weights, each modality alone, 3D on the test patients):

* ``max``: the best validation (semicml's rule; the run's own weights);
* ``ema0.7``, ``ema0.9``: the best exponential moving average of the validation Dice
  (s = a s + (1 - a) dice; nnU-Net keeps its best checkpoint by an average like it, a = 0.9);
* ``mean3``: the best mean of the last three validations (weights of the last of them);
* ``late-max``: the best validation in the second half of training;
* ``final``: the last validation's weights.

Every rule but ``max`` can be applied during training from the past alone. Writes per-patient rows
(``cases.csv``, one method per rule, for ``paired_from_cases.py``) and ``selection.json``.

    python benchmarks/selection_screen.py benchmarks/results/brats18-cv-2mm/runs/ROW/seed0/fold{0,1,2,3} \\
        --store runs/benchmark-brats18-cv-2mm/store --data ../shared/data/brats18 --seed 0 \\
        --out runs/selection-screen

Resumable: a finished run (``selection.json`` inside) is skipped, an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_check import COPIED  # noqa: E402
from rerun_seeds import rerun  # noqa: E402

import semicml.engine.trainer as trainer_module  # noqa: E402

RULES = ("max", "ema0.7", "ema0.9", "mean3", "late-max", "final")
METRICS = ("dice", "jaccard", "hd95", "asd", "precision", "sensitivity", "components")


class SnapshotTrainer(trainer_module.Trainer):
    """The engine's trainer, also keeping every validated network (as ``_save_weights`` keeps the best)."""

    def _update_best(self, val: dict[str, float]) -> None:
        super()._update_best(val)
        if self.dist.is_main:
            nets = self._predictors()
            for m in val:
                self._save_weights(m, nets[m], self.run_dir / "snapshots" / f"{m}@{self.iteration:05d}.pt")


def validation_curve(run: Path, modality: str) -> list[tuple[int, float]]:
    """(iteration, val Dice) of every validation, in order; a repeated iteration (a resume
    validates again at the checkpoint's iteration) keeps its last value."""
    curve: dict[int, float] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = f"val_dice/{modality}"
        if key in record:
            curve[int(record["iteration"])] = float(record[key])
    return sorted(curve.items())


def pick(curve: list[tuple[int, float]], rule: str, total: int) -> int:
    """The iteration whose weights ``rule`` keeps (the first of equal scores, as training does)."""
    iterations = [it for it, _ in curve]
    if rule == "final":
        return iterations[-1]
    if rule == "max":
        scores = [d for _, d in curve]
    elif rule.startswith("ema"):
        a, s, scores = float(rule[3:]), None, []
        for _, d in curve:
            s = d if s is None else a * s + (1 - a) * d
            scores.append(s)
    elif rule == "mean3":
        dice = [d for _, d in curve]
        scores = [sum(dice[max(0, i - 2): i + 1]) / len(dice[max(0, i - 2): i + 1]) for i in range(len(dice))]
    elif rule == "late-max":
        scores = [d if it > total / 2 else float("-inf") for it, d in curve]
    else:
        raise ValueError(rule)
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return iterations[best]


def rule_copy(run: Path, chosen: dict[str, int], dest: Path) -> Path:
    """A run folder whose weights are the chosen snapshots, post-processing chosen again on val."""
    from semicml.config import build_config
    from semicml.data.store import SliceStore
    from semicml.engine.validation import choose_postprocessing
    from semicml.hardware import resolve_precision
    from semicml.inference.weights import load_weights

    if dest.exists():
        shutil.rmtree(dest)
    (dest / "weights").mkdir(parents=True)
    for name in COPIED:
        shutil.copy2(run / name, dest / name)
    info = json.loads((run / "run.json").read_text())
    cfg = build_config(run / "config.yaml")
    store = SliceStore(info["store"])
    device = torch.device("cpu")
    nets, payloads = {}, {}
    for m, it in chosen.items():
        nets[m], payloads[m] = load_weights(run / "snapshots" / f"{m}@{it:05d}.pt", m, device)
    regions = list(store.target["classes"]) if store.regions else []
    fixed = None if cfg.postprocess == "auto" else cfg.postprocess
    with torch.no_grad():
        choices, _ = choose_postprocessing(store, info["splits"]["val"], nets, device,
                                           resolve_precision(cfg.precision, device), regions, fixed)
    for m, payload in payloads.items():
        torch.save({**payload, "postprocessing": choices[m]["choice"]}, dest / "weights" / f"{m}.pt")
    return dest


def screen(run_dir: Path, data: Path, seed: int) -> dict:
    from semicml.pipeline import evaluate_run

    info = json.loads((run_dir / "run.json").read_text())
    total = int(info["iterations"])
    picks = {rule: {m: pick(validation_curve(run_dir, m), rule, total) for m in info["modalities"]}
             for rule in RULES}
    for m in info["modalities"]:  # the engine's own rule must come out of the log as the engine applied it
        assert picks["max"][m] == info["best_val"][m]["iteration"], (run_dir, m, picks["max"][m], info["best_val"][m])
    rows, evaluated = [], {}
    for rule in RULES:
        for m in info["modalities"]:
            it = picks[rule][m]
            if (m, it) not in evaluated:
                if rule == "max":
                    folder = run_dir  # the run itself, tested by the grid's step already
                else:
                    folder = run_dir / "rules" / f"{m}@{it:05d}"
                    if not (folder / "eval" / "evaluation" / m / "metrics.csv").is_file():
                        rule_copy(run_dir, {m: it}, folder)
                        info_copy = json.loads((folder / "run.json").read_text())
                        info_copy["modalities"] = [m]
                        (folder / "run.json").write_text(json.dumps(info_copy))
                        evaluate_run(folder, data, folder / "eval", progress=False)
                with open(folder / "eval" / "evaluation" / m / "metrics.csv", newline="") as fh:
                    evaluated[(m, it)] = list(csv.DictReader(fh))
            for case in evaluated[(m, it)]:
                rows.append({"method": rule, "modality": m, "seed": seed, "fold": run_dir.name.removeprefix("fold"),
                             "case": case["case"], "iteration": it, **{k: case[k] for k in METRICS}})
    return {"picks": picks, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished grid run folders (config.yaml inside)")
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overrides", type=json.loads, default=None, help="JSON config overrides (smoke tests)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trainer_module.Trainer = SnapshotTrainer  # the grid's train-and-test step, with snapshots
    for run in args.runs:
        run_dir = args.out / run.parent.parent.name / f"seed{args.seed}" / run.name
        marker = run_dir / "selection.json"
        if not marker.is_file():
            rerun(run, args.seed, args.store, args.data, args.out, args.overrides)
            marker.write_text(json.dumps(screen(run_dir, args.data, args.seed), indent=1))
        result = json.loads(marker.read_text())
        print(json.dumps({"run": str(run_dir), "picks": result["picks"]}), flush=True)
    rows = []
    for marker in sorted(args.out.glob(f"*/seed{args.seed}/fold*/selection.json")):
        rows += json.loads(marker.read_text())["rows"]
    with open(args.out / f"cases-seed{args.seed}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
