"""The budget study: where validation Dice stops rising, and whether the recipe can fit its own
training patients. Reads a finished (or partly finished) `semicml benchmark` output of
benchmarks/brats18-budget.yaml, whose entry names end in the iteration budget
(``supervised-100%-2000``), and writes plateau.json, plateau.md and plateau.png into it.

    python benchmarks/plateau.py OUT [--fit] [--fit-methods supervised-100%] [--jobs 4]

--fit predicts each chosen run's TRAINING patients with each modality alone (3D Dice, HD95,
precision, sensitivity): a recipe that cannot fit the patients it saw cannot generalise.
"""

from __future__ import annotations

import argparse
import json
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_NAME = re.compile(r"^(?P<method>.+)-(?P<iterations>\d+)$")
FIT_KEYS = ("dice", "hd95", "precision", "sensitivity", "components")


def _runs(out: Path) -> list[dict]:
    runs = []
    for marker in sorted(out.glob("runs/*/seed*/result.json")):
        done = json.loads(marker.read_text())
        match = _NAME.match(done["name"])
        if not match:
            continue
        run_dir = marker.parent
        log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
        rows = {r["modality"]: r for r in done["rows"]}
        runs.append({"name": done["name"], "method": match["method"], "iterations": int(match["iterations"]),
                     "run_dir": str(run_dir), "seconds": done.get("seconds"), "log": log, "rows": rows})
    return runs


def _fit_one(run_dir: str, dataset: str) -> dict:
    from semicml.pipeline import evaluate_run

    metrics = evaluate_run(Path(run_dir), Path(dataset), Path(run_dir) / "fit", progress=False, split="train")
    return {m: {k: v.get(k) for k in FIT_KEYS} for m, v in metrics.items()}


def _curves(log: list[dict], modality: str) -> tuple[list[int], list[float]]:
    key = f"val_dice/{modality}"
    points = [(r["iteration"], r[key]) for r in log if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(runs: list[dict], modalities: list[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = sorted({r["method"] for r in runs})
    colours = dict(zip(methods, ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00"]))
    budgets = sorted({r["iterations"] for r in runs})
    styles = dict(zip(budgets, [":", "-.", "--", "-", (0, (1, 1))]))
    fig = Figure(figsize=(6 * len(modalities), 8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(modalities), squeeze=False)
    for j, m in enumerate(modalities):
        ax = axes[0][j]
        for r in runs:
            xs, ys = _curves(r["log"], m)
            ax.plot(xs, ys, color=colours[r["method"]], linestyle=styles[r["iterations"]], label=r["name"])
        ax.set(title=f"{m}: validation Dice during training", xlabel="iteration", ylabel="val Dice (3D)")
        ax.legend(fontsize=6)
        ax = axes[1][j]
        for method in methods:
            pts = sorted((r["iterations"], r["rows"][m].get("dice")) for r in runs
                         if r["method"] == method and m in r["rows"] and r["rows"][m].get("dice") is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colours[method], label=method)
        ax.set(title=f"{m}: test Dice by budget", xlabel="iterations (own schedule each)", ylabel="test Dice (3D)",
               xscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output folder of the budget benchmark")
    ap.add_argument("--fit", action="store_true", help="also evaluate chosen runs on their training patients")
    ap.add_argument("--fit-methods", default="supervised-100%", help="comma-separated methods for --fit")
    ap.add_argument("--dataset", type=Path, default=None, help="default: the dataset in OUT/prepare.json")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    runs = _runs(args.out)
    if not runs:
        raise SystemExit(f"error: {args.out}: no finished runs named <method>-<iterations>")
    modalities = list(runs[0]["rows"])
    fits: dict[str, dict] = {}
    if args.fit:
        dataset = args.dataset or Path(json.loads((args.out / "prepare.json").read_text())["dataset"])
        chosen = [r for r in runs if r["method"] in args.fit_methods.split(",")]
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for r, fit in zip(chosen, pool.map(_fit_one, [r["run_dir"] for r in chosen],
                                                [str(dataset)] * len(chosen))):
                fits[r["name"]] = fit
    table = []
    for r in sorted(runs, key=lambda r: (r["method"], r["iterations"])):
        for m in modalities:
            row = r["rows"].get(m, {})
            xs, ys = _curves(r["log"], m)
            best = max(range(len(ys)), key=ys.__getitem__) if ys else None
            table.append({"method": r["method"], "iterations": r["iterations"], "modality": m,
                          "seconds": r["seconds"], "best_val_dice": ys[best] if ys else None,
                          "best_val_iteration": xs[best] if ys else None, "final_val_dice": ys[-1] if ys else None,
                          **{f"test_{k}": row.get(k) for k in FIT_KEYS},
                          **{f"fit_{k}": fits.get(r["name"], {}).get(m, {}).get(k) for k in FIT_KEYS}})
    (args.out / "plateau.json").write_text(json.dumps(table, indent=1))
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    cols = ["method", "iterations", "modality", "best_val_dice", "best_val_iteration", "final_val_dice",
            "test_dice", "test_hd95", "test_components", "fit_dice", "fit_precision", "fit_sensitivity", "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in cols) + " |" for row in table]
    (args.out / "plateau.md").write_text("\n".join(lines) + "\n")
    _plot(runs, modalities, args.out / "plateau.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
