"""Per-patient paired comparison of one method against every other: the statistics a reader
needs to tell a real difference from seed and patient noise.

For each modality and method, each test patient's metric is first averaged over the seeds both
methods finished; the paired differences (reference - other) then give the mean difference, a
percentile bootstrap 95% confidence interval (resampling patients) and the two-sided Wilcoxon
signed-rank p-value (``scipy.stats.wilcoxon``). With k-fold cross-validation every patient of
the dataset is a test patient once, so n is the whole dataset.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semicml.evaluation.plots import finite_number

__all__ = ["PAIRED_METRICS", "collect_case_rows", "fusion_comparison", "fusion_markdown", "paired_comparison",
           "paired_markdown", "region_markdown", "regions_of"]

PAIRED_METRICS: tuple[str, ...] = ("dice", "hd95")
TEXT_COLUMNS = ("case", "region")
REGION_SUMMARY = "mean"  # metrics.csv's row averaging the regions of one patient
BOOTSTRAP_SAMPLES = 10_000


def collect_case_rows(rows: Sequence[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """Per-patient test metrics of every successful run, read from its evaluation folder."""
    case_rows: list[dict[str, Any]] = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        path = out / r["run_dir"] / "eval" / "evaluation" / r["modality"] / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as fh:
            for c in csv.DictReader(fh):
                values = {k: (v if k in TEXT_COLUMNS else _number(v)) for k, v in c.items()}
                values["region"] = values.get("region") or None  # a binary target has no region
                case_rows.append({"method": r["method"], "modality": r["modality"], "seed": r["seed"],
                                  "fold": r.get("fold"), **values})
    return case_rows


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def regions_of(case_rows: Sequence[dict[str, Any]]) -> list[str | None]:
    """The regions the rows are scored on, in order ([None] for a binary target); the per-patient
    mean over regions is left out: each region is compared on its own."""
    found = list(dict.fromkeys(c.get("region") for c in case_rows))
    regions = [r for r in found if r not in (None, REGION_SUMMARY)]
    return regions or [None]


def _per_patient(case_rows: Sequence[dict[str, Any]], method: str, modality: str, metric: str,
                 seeds: set, region: str | None = None) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for c in case_rows:
        if (c["method"] == method and c["modality"] == modality and c["seed"] in seeds
                and c.get("region") == region):
            v = finite_number(c.get(metric))
            if v is not None:
                values.setdefault(c["case"], []).append(v)
    return {case: float(np.mean(v)) for case, v in values.items()}


def _bootstrap_ci(d: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(BOOTSTRAP_SAMPLES, d.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_comparison(case_rows: Sequence[dict[str, Any]], reference: str,
                      metrics: Sequence[str] = PAIRED_METRICS) -> list[dict[str, Any]]:
    """One entry per (modality, other method, metric): n, mean difference reference - other, CI, p."""
    from scipy.stats import wilcoxon

    out = []
    modalities = list(dict.fromkeys(c["modality"] for c in case_rows))
    methods = [m for m in dict.fromkeys(c["method"] for c in case_rows) if m != reference]
    regions = regions_of(case_rows)
    for mod, region, other in ((m, r, o) for m in modalities for r in regions for o in methods):
        seeds = ({c["seed"] for c in case_rows if c["method"] == reference and c["modality"] == mod}
                 & {c["seed"] for c in case_rows if c["method"] == other and c["modality"] == mod})
        for metric in metrics:
            a = _per_patient(case_rows, reference, mod, metric, seeds, region)
            b = _per_patient(case_rows, other, mod, metric, seeds, region)
            cases = sorted(set(a) & set(b))
            entry: dict[str, Any] = {"modality": mod, "region": region, "reference": reference, "other": other,
                                     "metric": metric, "n_patients": len(cases), "seeds": sorted(seeds)}
            if cases:
                d = np.asarray([a[c] - b[c] for c in cases])
                lo, hi = _bootstrap_ci(d)
                p = float(wilcoxon(d).pvalue) if len(cases) >= 2 and np.any(d != 0) else 1.0
                entry.update(reference_mean=float(np.mean([a[c] for c in cases])),
                             other_mean=float(np.mean([b[c] for c in cases])), mean_diff=float(d.mean()),
                             ci_low=lo, ci_high=hi, wilcoxon_p=p,
                             reference_better=int(np.sum(d > 0) if metric != "hd95" else np.sum(d < 0)))
            out.append(entry)
    return out


def paired_markdown(comparison: Sequence[dict[str, Any]]) -> str:
    if not comparison:
        return ""
    ref = comparison[0]["reference"]
    lines = [f"## Paired per-patient comparison: {ref} vs each method", "",
             "Per patient, the metric averaged over the seeds both methods finished; Δ = "
             f"{ref} - other (Dice: positive = {ref} better; HD95: negative = {ref} better); 95% CI: percentile "
             "bootstrap over patients; p: two-sided Wilcoxon signed-rank; wins: patients where "
             f"{ref} is better.", ""]
    for mod, region in dict.fromkeys((e["modality"], e.get("region")) for e in comparison):
        part = [e for e in comparison if e["modality"] == mod and e.get("region") == region]
        lines += [f"### {mod} {'fused' if is_fused(mod) else 'alone'}{f', {region}' if region else ''}", "",
                  "| other | n | Dice Δ [95% CI] | p | wins | HD95 Δ mm [95% CI] | p |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for other in dict.fromkeys(e["other"] for e in part):
            cells = [other]
            by_metric = {e["metric"]: e for e in part if e["other"] == other}
            dice, hd = by_metric.get("dice"), by_metric.get("hd95")
            cells.append(str(dice["n_patients"]) if dice else "0")
            for e, fmt in ((dice, "{:+.4f} [{:+.4f}, {:+.4f}]"), (hd, "{:+.2f} [{:+.2f}, {:+.2f}]")):
                if not e or "mean_diff" not in e:
                    cells += ["n/a", "n/a"] + (["n/a"] if e is dice else [])
                    continue
                cells.append(fmt.format(e["mean_diff"], e["ci_low"], e["ci_high"]))
                cells.append(f"{e['wilcoxon_p']:.3f}")
                if e is dice:
                    cells.append(f"{e['reference_better']}/{e['n_patients']}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def is_fused(modality: str) -> bool:
    """A fused prediction's label joins the modalities with ``+`` (``T2+T1ce``)."""
    return "+" in modality


def fusion_comparison(case_rows: Sequence[dict[str, Any]],
                      metrics: Sequence[str] = PAIRED_METRICS) -> list[dict[str, Any]]:
    """Per method and fused prediction: fused - best single modality, per patient (seeds both
    finished, averaged per patient first, as in :func:`paired_comparison`).

    The best single modality is the one with the highest mean test Dice over those patients: the
    choice a reader would make with hindsight, so fusion is compared with the hardest single
    opponent (a choice on validation could only pick a weaker one).
    """
    from scipy.stats import wilcoxon

    out = []
    regions = regions_of(case_rows)
    for method in dict.fromkeys(c["method"] for c in case_rows):
        mods = list(dict.fromkeys(c["modality"] for c in case_rows if c["method"] == method))
        singles = [m for m in mods if not is_fused(m)]
        for fused, region in ((f, r) for f in mods if is_fused(f) for r in regions):
            parts = [m for m in singles if m in fused.split("+")] or singles
            seeds = {c["seed"] for c in case_rows if c["method"] == method and c["modality"] == fused}
            for m in parts:
                seeds &= {c["seed"] for c in case_rows if c["method"] == method and c["modality"] == m}
            f_dice = _per_patient(case_rows, method, fused, "dice", seeds, region)
            single_dice = {m: _per_patient(case_rows, method, m, "dice", seeds, region) for m in parts}
            cases = sorted(set(f_dice).intersection(*single_dice.values())) if single_dice else []
            if not cases:
                continue
            best = max(parts, key=lambda m: np.mean([single_dice[m][c] for c in cases]))
            for metric in metrics:
                a = _per_patient(case_rows, method, fused, metric, seeds, region)
                b = _per_patient(case_rows, method, best, metric, seeds, region)
                both = [c for c in cases if c in a and c in b]
                entry: dict[str, Any] = {"method": method, "fused": fused, "region": region, "best_single": best,
                                         "metric": metric, "n_patients": len(both), "seeds": sorted(seeds)}
                if both:
                    d = np.asarray([a[c] - b[c] for c in both])
                    lo, hi = _bootstrap_ci(d)
                    better = np.sum(d > 0) if metric != "hd95" else np.sum(d < 0)
                    entry.update(fused_mean=float(np.mean([a[c] for c in both])),
                                 single_mean=float(np.mean([b[c] for c in both])), mean_diff=float(d.mean()),
                                 ci_low=lo, ci_high=hi,
                                 wilcoxon_p=float(wilcoxon(d).pvalue) if len(both) >= 2 and np.any(d != 0) else 1.0,
                                 fused_better=int(better))
                out.append(entry)
    return out


def fusion_verdict(entry: dict[str, Any]) -> str:
    """Dice: 'yes' when the 95% CI of fused - best single lies above 0, 'no' when below, else 'not shown'."""
    if "mean_diff" not in entry:
        return "n/a"
    if entry["ci_low"] > 0:
        return "yes"
    if entry["ci_high"] < 0:
        return "no (worse)"
    return "not shown (CI spans 0)"


def fusion_markdown(comparison: Sequence[dict[str, Any]]) -> str:
    dice = [e for e in comparison if e["metric"] == "dice"]
    if not dice:
        return ""
    lines = ["## Fused prediction vs the best single modality", "",
             "Fused: `predict --modality a,b` with every modality (per region, the mean of the networks or one "
             "alone, as chosen on validation; the plain mean for runs trained before that choice). Best single: the "
             "modality with the highest mean test Dice of that method (chosen with hindsight: the hardest "
             "opponent). Per patient, averaged over seeds; Δ = fused - best single; 95% CI: bootstrap over "
             "patients; p: two-sided Wilcoxon; wins: patients where fusion is better. Beats: the Dice CI above 0.",
             "", "| method | fused | best single | n | Dice fused | Dice single | Dice Δ [95% CI] | p | wins | "
             "HD95 Δ mm [95% CI] | beats |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in dice:
        hd = next((h for h in comparison if h["metric"] == "hd95" and h["method"] == e["method"]
                   and h["fused"] == e["fused"] and h.get("region") == e.get("region")), None)
        if "mean_diff" not in e:
            continue
        hd_cell = "n/a" if not hd or "mean_diff" not in hd else \
            f"{hd['mean_diff']:+.2f} [{hd['ci_low']:+.2f}, {hd['ci_high']:+.2f}]"
        fused = f"{e['fused']} {e['region']}" if e.get("region") else e["fused"]
        lines.append(f"| {e['method']} | {fused} | {e['best_single']} | {e['n_patients']} | "
                     f"{e['fused_mean']:.4f} | {e['single_mean']:.4f} | "
                     f"{e['mean_diff']:+.4f} [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}] | {e['wilcoxon_p']:.3f} | "
                     f"{e['fused_better']}/{e['n_patients']} | {hd_cell} | {fusion_verdict(e)} |")
    return "\n".join(lines + [""])


def region_markdown(case_rows: Sequence[dict[str, Any]]) -> str:
    """Region targets: mean ± sd over patients of Dice per region, each modality alone and fused
    (a patient's seeds averaged first); empty for a binary target."""
    regions = regions_of(case_rows)
    if regions == [None]:
        return ""
    lines = ["## Dice per region", "",
             "Each region scored on its own (the tables above average the regions of a patient); mean ± sd over "
             "patients, each patient averaged over its seeds first; n = patients.", "",
             "| method | prediction | n | " + " | ".join(regions) + " |",
             "|---|---|---:|" + "---:|" * len(regions)]
    for method, mod in dict.fromkeys((c["method"], c["modality"]) for c in case_rows):
        seeds = {c["seed"] for c in case_rows if c["method"] == method and c["modality"] == mod}
        cells, n = [], 0
        for region in regions:
            values = list(_per_patient(case_rows, method, mod, "dice", seeds, region).values())
            n = max(n, len(values))
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            cells.append(f"{np.mean(values):.3f} ± {sd:.3f}" if values else "n/a")
        kind = "fused" if is_fused(mod) else "alone"
        lines.append(f"| {method} | {mod} {kind} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])
