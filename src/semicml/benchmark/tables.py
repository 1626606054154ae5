"""Benchmark results: ``results.csv`` / ``.json`` (one row per run and modality), the Markdown
summary (mean ± std over seeds, paired Δ Dice vs supervised) and the calls to the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from semicml.evaluation.metrics import METRICS
from semicml.evaluation.plots import finite_number, plot_metric_bars, plot_val_curves
from semicml.evaluation.report import format_metric, rows_to_csv
from semicml.io_utils import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from semicml.benchmark.config import BenchmarkConfig

__all__ = ["RESULT_COLUMNS", "TABLE_METRICS", "combine_folds", "results_csv", "summarize_rows", "summary_line", "write_results",
           "write_tables"]

RESULT_COLUMNS: tuple[str, ...] = (
    "method", "method_id", "modality", "seed", "fold", "labeled_fraction", *METRICS, "n_test_cases", "n_labeled_slices",
    "best_val_dice", "best_val_iteration", "teacher", "iterations", "status", "action", "seconds",
    "train_threads", "train_precision", "compute_changes", "run_dir",
)
TABLE_METRICS: tuple[tuple[str, str, bool], ...] = (  # (key, label, higher is better)
    ("dice", "Dice", True), ("jaccard", "Jaccard", True), ("hd95", "HD95 (mm)", False), ("asd", "ASD (mm)", False),
    ("components", "Islands", False))


def summary_line(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "not run (excluded by --only)"
    first = rows[0]
    if first["action"] == "failed":
        return first["status"].upper()[:6] + first["status"][6:]
    dice = ", ".join(f"{r['modality']} Dice {_f4(r['dice'])}" for r in rows)
    if first["action"] == "skipped":
        when = "finished earlier (skipped)"
    else:
        when = f"{first['action']} in {first['seconds']:.0f} s"
    teacher = f" | teacher {first['teacher']}" if first.get("teacher") else ""
    return f"{when} | {dice}{teacher}"


def _f4(v: Any) -> str:
    x = finite_number(v)
    return "n/a" if x is None else f"{x:.4f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(RESULT_COLUMNS) + [k for r in rows for k in r if k not in RESULT_COLUMNS]
    return rows_to_csv(rows, list(dict.fromkeys(columns)))


def write_tables(rows: Sequence[dict[str, Any]], out: Path, extra: dict[str, Any] | None = None) -> None:
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_json(out / "results.json", {**(extra or {}), "rows": list(rows)})


def _ok(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _ordered(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{modality: {method: {"n", "labeled_fraction", "method_id", "seconds", metric: {"mean", "std", "seeds"}}}}``
    over the successful runs (sample std, ddof=1, as in the evaluation reports; 0 for one seed)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for mod in _ordered(r["modality"] for r in rows):
        out[mod] = {}
        for name in _ordered(r["method"] for r in rows):
            sel = [r for r in _ok(rows) if r["modality"] == mod and r["method"] == name]
            allr = [r for r in rows if r["modality"] == mod and r["method"] == name]
            if not allr:
                continue
            entry: dict[str, Any] = {"n": len(sel), "n_failed": sum(r.get("status") != "ok" for r in allr),
                                     "labeled_fraction": allr[0]["labeled_fraction"], "method_id": allr[0]["method_id"]}
            secs = [s for s in (finite_number(r.get("seconds")) for r in sel) if s is not None]
            entry["seconds"] = float(np.mean(secs)) if secs else None
            n_lab = sorted({int(v) for v in (finite_number(r.get("n_labeled_slices")) for r in sel) if v is not None})
            entry["n_labeled_slices"] = n_lab  # the real count: a min_labeled floor can lift it above the fraction
            for key in METRICS:
                vals = {r["seed"]: finite_number(r.get(key)) for r in sel}
                vals = {s: v for s, v in vals.items() if v is not None}
                arr = np.asarray(list(vals.values()), dtype=np.float64)
                entry[key] = {"mean": float(arr.mean()) if arr.size else None,
                              "std": (float(arr.std(ddof=1)) if arr.size > 1 else 0.0) if arr.size else None,
                              "seeds": vals}
            out[mod][name] = entry
    return out


def _reference(summary: dict[str, dict[str, Any]], fraction: float) -> str | None:
    for name, s in summary.items():
        if s["method_id"] == "supervised" and finite_number(s["labeled_fraction"]) is not None \
                and abs(float(s["labeled_fraction"]) - fraction) < 1e-9:
            return name
    return None


def _paired_delta(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int] | None:
    seeds = [s for s in a if s in b]
    if not seeds:
        return None
    d = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    return float(d.mean()), (float(d.std(ddof=1)) if d.size > 1 else 0.0), d.size


def _labelled_cell(summary: dict[str, Any]) -> str:
    """'10% (66 sl.)': the nominal fraction and the real slice count (a range when seeds differ)."""
    text = _pct(float(summary["labeled_fraction"]))
    counts = summary.get("n_labeled_slices") or []
    if counts:
        text += f" ({counts[0]} sl.)" if len(counts) == 1 else f" ({counts[0]}-{counts[-1]} sl.)"
    return text


def _markdown(rows: Sequence[dict[str, Any]], labeled_fraction: float | None, title: str) -> str:
    summary = summarize_rows(rows)
    if labeled_fraction is None:  # the most common fraction among the runs
        fracs = [r["labeled_fraction"] for r in rows]
        labeled_fraction = max(set(fracs), key=fracs.count) if fracs else 0.1
    seeds = _ordered(r["seed"] for r in rows)
    lines = [f"# {title}", "",
             f"Seeds: {', '.join(map(str, seeds))}. Each cell: mean ± sample std (ddof=1) over the seeds whose run "
             "succeeded (n); test cases only, each modality's network alone, 3D metrics on the original grid.",
             f"**Bold**: best value per column among the methods at the grid's labelled fraction "
             f"({_pct(labeled_fraction)}); rows at another fraction (e.g. the 100% upper bound) are not ranked.",
             "Δ Dice: mean ± std over seeds of the paired per-seed difference (same seed = same split and same "
             "labelled subset) to supervised training on the same slices; positive = better.",
             "Labelled: the nominal fraction of the training slices and, in brackets, the number of labelled slices "
             "actually used (a `min_labeled` floor can raise it).", "", *_compute_line(rows)]
    for mod, per_method in summary.items():
        ref_lo = _reference(per_method, labeled_fraction)
        ref_hi = _reference(per_method, 1.0) if labeled_fraction < 1.0 else None
        deltas = [(ref, f"Δ Dice vs sup-{_pct(frac)}") for ref, frac in ((ref_lo, labeled_fraction), (ref_hi, 1.0))
                  if ref is not None]
        best: dict[str, str] = {}
        for key, _, higher in TABLE_METRICS:
            cands = [format_metric(key, s[key]["mean"]) for s in per_method.values()
                     if s[key]["mean"] is not None and abs(float(s["labeled_fraction"]) - labeled_fraction) < 1e-9]
            if cands:
                best[key] = (max if higher else min)(cands, key=float)
        header = ["Method", "Labelled", "n", *(label for _, label, _ in TABLE_METRICS), *(h for _, h in deltas),
                  "s/run"]
        lines += [f"## {mod} {'fused' if '+' in mod else 'alone'}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---", "---:", "---:"] + ["---:"] * (len(TABLE_METRICS) + len(deltas) + 1)) + "|"]
        for name, s in per_method.items():
            n = f"{s['n']}" + (f" ({s['n_failed']} failed)" if s["n_failed"] else "")
            cells = [name.replace("|", "\\|"), _labelled_cell(s), n]
            for key, _, _ in TABLE_METRICS:
                m, sd = s[key]["mean"], s[key]["std"]
                if m is None:
                    cells.append("failed" if s["n_failed"] else "n/a")
                    continue
                text = f"{format_metric(key, m)} ± {format_metric(key, sd)}"
                in_rank = abs(float(s["labeled_fraction"]) - labeled_fraction) < 1e-9
                cells.append(f"**{text}**" if in_rank and best.get(key) == format_metric(key, m) else text)
            for ref, _ in deltas:
                if ref == name:
                    cells.append("—")
                    continue
                d = _paired_delta(s["dice"]["seeds"], per_method[ref]["dice"]["seeds"])
                cells.append("n/a" if d is None else f"{d[0]:+.4f} ± {d[1]:.4f}")
            cells.append("n/a" if s["seconds"] is None else f"{s['seconds']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        missing = [h for frac, h in ((labeled_fraction, "sup-" + _pct(labeled_fraction)), (1.0, "sup-100%"))
                   if _reference(per_method, frac) is None and (frac < 1.0 or labeled_fraction < 1.0)]
        if missing:
            lines.append("")
            lines.append(f"(no Δ column for {', '.join(dict.fromkeys(missing))}: no successful 'supervised' run at "
                         "that labelled fraction in the grid)")
        lines.append("")
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed runs", ""]
        seen = set()
        for r in failed:
            key = (r["method"], r["seed"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- {r['method']} seed {r['seed']} (`{r['run_dir']}`): {r['status']}")
        lines.append("")
    teachers = [(r["method"], r["seed"], r["teacher"]) for r in _ok(rows) if r.get("teacher")]
    if teachers:
        lines += ["PReL teacher per run: " + ", ".join(f"{m} s{s}: {t}" for m, s, t in _ordered(teachers)), ""]
    return "\n".join(lines)


def combine_folds(rows: Sequence[dict[str, Any]], n_folds: int) -> list[dict[str, Any]]:
    """Cross-validated grids: one row per (method, modality, seed) with every metric averaged over
    ALL test patients of the folds (fold means weighted by their test-case counts). A seed whose
    folds are not all finished and successful is reported as incomplete, never as a partial mean."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["modality"], r["seed"]), []).append(r)
    combined = []
    for parts in groups.values():
        row = {**parts[0], "fold": None, "run_dir": parts[0]["run_dir"]}
        ok = [p for p in parts if p.get("status") == "ok"]
        if len(ok) < n_folds:
            failed = [p for p in parts if p.get("status") != "ok"]
            row.update({k: None for k in METRICS},
                       status=failed[0]["status"] if failed else f"incomplete: {len(ok)} of {n_folds} folds",
                       action="failed" if failed else "incomplete")
        else:
            weights = np.asarray([p["n_test_cases"] for p in ok], dtype=np.float64)
            for key in METRICS:
                vals = [finite_number(p.get(key)) for p in ok]
                row[key] = None if any(v is None for v in vals) else float(np.average(vals, weights=weights))
            row.update(n_test_cases=int(weights.sum()), seconds=float(sum(p["seconds"] or 0 for p in ok)),
                       best_val_dice=float(np.mean([p["best_val_dice"] or 0 for p in ok])),
                       teacher=",".join(dict.fromkeys(p["teacher"] for p in ok if p.get("teacher"))) or None,
                       **{k: _joined(p.get(k) for p in ok) for k in ("train_threads", "train_precision")},
                       compute_changes="; ".join(p["compute_changes"] for p in ok if p.get("compute_changes")) or None)
        combined.append(row)
    return combined


def _joined(values) -> str | None:
    """The distinct values, in order, as one cell ('1', or '1,2' when the folds differed); cells
    already joined (a cross-validated row) are split first."""
    parts = (p for v in values if v is not None for p in str(v).split(","))
    return ",".join(dict.fromkeys(parts)) or None


def _compute_line(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Threads and precision the runs trained with: a CPU grid repeats bit for bit only with the same."""
    threads, precision = (_joined(r.get(k) for r in rows) for k in ("train_threads", "train_precision"))
    if not threads and not precision:  # runs recorded before this was kept
        return []
    changed = list(dict.fromkeys(f"{r['method']} seed {r['seed']}" for r in rows if r.get("compute_changes")))
    moved = (f" Changed threads, processes, CPU or precision on a resume (column `compute_changes`): "
             f"{', '.join(changed)}." if changed else "")
    return [f"Runs trained with {threads or '?'} CPU thread(s) each, precision {precision or '?'} "
            "(run.json `compute`; on a CPU the same threads, CPU and precision repeat a run bit for bit)." + moved,
            ""]


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return records


def write_results(rows: Sequence[dict[str, Any]], out: str | Path, labeled_fraction: float | None = None,
                  benchmark: BenchmarkConfig | None = None, title: str | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json``, ``results.md``, ``dice.png`` and ``val_curves.png``.

    ``labeled_fraction`` is the grid's labelled fraction (default: the most common one in the
    rows); validation curves are read from ``out/<row run_dir>/log.jsonl``. Returns the paths.
    A plot with nothing to show (every run failed) is skipped, not an error.
    """
    from semicml.benchmark.paired import (
        collect_case_rows,
        fusion_comparison,
        fusion_markdown,
        paired_comparison,
        paired_markdown,
        region_markdown,
    )

    out = Path(out)
    rows = list(rows)
    cv = benchmark.cross_validation if benchmark is not None else None
    table_rows = combine_folds(rows, cv.folds) if cv is not None else rows
    case_rows = collect_case_rows(rows, out)
    reference = benchmark.reference_name() if benchmark is not None else None
    comparison = paired_comparison(case_rows, reference) if reference and case_rows else []
    fusion = fusion_comparison(case_rows) if case_rows else []
    extra: dict[str, Any] = {"summary": summarize_rows(table_rows), "paired": comparison, "fusion": fusion}
    if benchmark is not None:
        extra = {"benchmark": benchmark.model_dump(mode="json"), **extra}
    write_tables(rows, out, extra)
    atomic_write_text(out / "cases.csv", rows_to_csv(case_rows, list(dict.fromkeys(k for c in case_rows for k in c))))
    title = title or f"Benchmark: {out.name}"
    text = _markdown(table_rows, labeled_fraction, title)
    if cv is not None:
        text += (f"\n{cv.folds}-fold cross-validation (seed {cv.seed}, {cv.val_cases} validation patients per fold): "
                 "each row pools every test patient of all folds; folds in `splits/`.\n")
    region_md = region_markdown(case_rows)
    text += "\n" + (region_md + "\n" if region_md else "")
    fusion_md = fusion_markdown(fusion)
    text += (fusion_md + "\n" if fusion_md else "")
    atomic_write_text(out / "results.md", text + paired_markdown(comparison))
    paths = {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md",
             "cases": out / "cases.csv"}
    rows = table_rows
    ok = _ok(rows)
    if any(finite_number(r.get("dice")) is not None for r in ok):
        paths["dice"] = plot_metric_bars(ok, "dice", out / "dice.png")
    curves: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in ok:
        per_seed = curves.setdefault(r["method"], {})
        if r["seed"] not in per_seed:
            per_seed[r["seed"]] = read_log(out / r["run_dir"] / "log.jsonl")
    if curves:
        paths["val_curves"] = plot_val_curves(curves, out / "val_curves.png")
    return paths
