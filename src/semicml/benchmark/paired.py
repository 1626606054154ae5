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

__all__ = ["PAIRED_METRICS", "collect_case_rows", "paired_comparison", "paired_markdown"]

PAIRED_METRICS: tuple[str, ...] = ("dice", "hd95")
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
                values = {k: (v if k == "case" else _number(v)) for k, v in c.items()}
                case_rows.append({"method": r["method"], "modality": r["modality"], "seed": r["seed"],
                                  "fold": r.get("fold"), **values})
    return case_rows


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _per_patient(case_rows: Sequence[dict[str, Any]], method: str, modality: str, metric: str,
                 seeds: set) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for c in case_rows:
        if c["method"] == method and c["modality"] == modality and c["seed"] in seeds:
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
    for mod in modalities:
        for other in methods:
            seeds = ({c["seed"] for c in case_rows if c["method"] == reference and c["modality"] == mod}
                     & {c["seed"] for c in case_rows if c["method"] == other and c["modality"] == mod})
            for metric in metrics:
                a = _per_patient(case_rows, reference, mod, metric, seeds)
                b = _per_patient(case_rows, other, mod, metric, seeds)
                cases = sorted(set(a) & set(b))
                entry: dict[str, Any] = {"modality": mod, "reference": reference, "other": other, "metric": metric,
                                         "n_patients": len(cases), "seeds": sorted(seeds)}
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
    for mod in dict.fromkeys(e["modality"] for e in comparison):
        lines += [f"### {mod} alone", "", "| other | n | Dice Δ [95% CI] | p | wins | HD95 Δ mm [95% CI] | p |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for other in dict.fromkeys(e["other"] for e in comparison if e["modality"] == mod):
            cells = [other]
            by_metric = {e["metric"]: e for e in comparison if e["modality"] == mod and e["other"] == other}
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
