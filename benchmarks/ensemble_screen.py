r"""Does an ensemble of trained runs (``predict --run A --run B``) segment better than its members?

For every fold of a cross-validation, the fold's test patients are segmented by each modality's
networks of the member runs TOGETHER (the mean probability, :mod:`semicml.inference.ensemble`),
exactly as a user would (the original scans, whole-slice prediction, post-processing as the
ensemble rule picks it), and evaluated in 3D on the original grid. A member is a run folder with
``{fold}`` in its path (a grid row's ``runs/ROW/seedS/fold{fold}``, or a seed retrained by
``benchmarks/rerun_seeds.py``); its own per-patient metrics are the ones its grid test wrote
(``eval/evaluation/<modality>/metrics.csv``: the same predict and evaluate code), so the comparison
is paired per patient, pooled over the folds: mean difference, 95% percentile-bootstrap CI,
two-sided Wilcoxon p, wins.

    G=runs/benchmark-brats18-cv-2mm/runs
    python benchmarks/ensemble_screen.py \
        --members "$G/semicml-prel+aug/seed0/fold{fold},$G/semicml-prel+t1ce-intensity-aug/seed0/fold{fold}" \
        --data ../shared/data/brats18 --out ens.json [--md ens.md] [--folds 0,1,2,3] [--name NAME] [--fused]

Resumable: finished folds are kept in the JSON and skipped. Costs one network pass per member per
slice; nothing is trained.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from semicml.benchmark.paired import paired_comparison, paired_markdown  # noqa: E402

METRICS = ("dice", "hd95", "components")


def member_label(template: str) -> str:
    """``.../ROW/seedS/fold{fold}`` -> ``ROW/seedS``."""
    parts = Path(template).parts
    return "/".join(parts[-3:-1]) if len(parts) >= 3 else template


def fold_runs(members: list[str], folds: list[int]) -> dict[int, list[Path]]:
    """fold -> the members' run folders, for every fold all members finished (tested)."""
    out: dict[int, list[Path]] = {}
    for fold in folds:
        runs = [Path(m.format(fold=fold)) for m in members]
        if all((r / "eval" / "evaluation").is_dir() and (r / "run.json").is_file() for r in runs):
            out[fold] = runs
    return out


def screen_fold(runs: list[Path], data: Path, work: Path, name: str, fold: int, fused: bool = False) -> list[dict]:
    from semicml.evaluation.evaluate import evaluate_predictions
    from semicml.inference.fusion import fused_name, predict_fused
    from semicml.inference.predict import predict_cases

    infos = [json.loads((r / "run.json").read_text()) for r in runs]
    test = infos[0]["splits"]["test"]
    if any(i["splits"]["test"] != test for i in infos[1:]):
        raise SystemExit(f"fold {fold}: the members were tested on different patients")
    rows = []
    modalities = list(infos[0]["modalities"])
    # the grid's folder name of the fused prediction (eval/evaluation/t2+t1ce)
    for modality in [fused_name(modalities)] if fused else modalities:
        pred, ev = work / modality / "pred", work / modality / "eval"
        start = time.perf_counter()
        if "+" in modality:
            predict_fused(runs, modalities, data, pred, cases=test, progress=False)
        else:
            predict_cases(runs, modality, data, pred, cases=test, progress=False)
        seconds = time.perf_counter() - start
        evaluate_predictions(pred, data, infos[0]["target"]["name"], ev, cases=test, progress=False)
        with open(ev / "metrics.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append({"method": name, "modality": modality, "seed": 0, "fold": fold, "case": row["case"],
                             "region": row.get("region") or None, "predict_seconds": seconds,
                             **{k: float(row[k]) for k in METRICS}})
    return rows


def member_rows(members: list[str], folds: list[int]) -> list[dict]:
    """Each member's own per-patient test metrics, as its grid test wrote them."""
    rows = []
    for template in members:
        for fold in folds:
            for path in sorted((Path(template.format(fold=fold)) / "eval" / "evaluation").glob("*/metrics.csv")):
                with open(path, newline="") as fh:
                    for row in csv.DictReader(fh):
                        rows.append({"method": member_label(template), "modality": path.parent.name, "seed": 0,
                                     "fold": fold, "case": row["case"], "region": row.get("region") or None,
                                     **{k: float(row[k]) for k in METRICS}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", required=True, help="comma-separated run folders with {fold} in the path")
    ap.add_argument("--folds", default="0,1,2,3", help="comma-separated folds")
    ap.add_argument("--name", help="the ensemble's label (default: the members' labels joined by ' + ')")
    ap.add_argument("--data", type=Path, required=True, help="the dataset the runs were prepared from")
    ap.add_argument("--out", type=Path, required=True, help="JSON: per-case rows, the comparison (resumable)")
    ap.add_argument("--md", type=Path, help="also write the paired table as Markdown")
    ap.add_argument("--fused", action="store_true", help="instead of each modality alone, the fused prediction of "
                    "all the runs' modalities (against the members' fused rows)")
    args = ap.parse_args()
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    if len(members) < 2 or any("{fold}" not in m for m in members):
        raise SystemExit("--members: two or more run folders, each with {fold} in its path")
    labels = [member_label(m) for m in members]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"--members: two members share the label ROW/seedS ({', '.join(labels)}); the paired rows "
                         "would merge")
    name = args.name or "ensemble(" + " + ".join(labels) + ")"
    state = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if state and (state.get("members"), state.get("name")) != (members, name):
        raise SystemExit(f"{args.out} holds another screen ({state.get('name')}: {state.get('members')})")
    done: dict[str, list] = state.get("folds", {})
    for fold, runs in fold_runs(members, [int(f) for f in args.folds.split(",")]).items():
        if str(fold) in done:
            continue
        with tempfile.TemporaryDirectory(prefix="ensemble-screen-") as tmp:
            done[str(fold)] = screen_fold(runs, args.data, Path(tmp), name, fold, args.fused)
        print(f"fold {fold}: " + ", ".join(f"{r['modality']} {r['case']} {r['dice']:.3f}" for r in done[str(fold)]),
              flush=True)
        _save(args.out, {"members": members, "name": name, "folds": done})
    rows = [r for fold_rows in done.values() for r in fold_rows]
    # only the members' rows of what the ensemble predicted (each modality alone, or fused with --fused)
    predicted = {r["modality"] for r in rows}
    rows += [r for r in member_rows(members, [int(f) for f in done]) if r["modality"] in predicted]
    comparison = paired_comparison(rows, name, metrics=METRICS)
    table = paired_markdown(comparison)
    print(table)
    _save(args.out, {"members": members, "name": name, "folds": done, "comparison": comparison})
    if args.md:
        args.md.write_text(f"# {name} vs each member ({', '.join(labels)})\n\n{table}\n")


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
