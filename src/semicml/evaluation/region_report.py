"""Evaluation report of a region target: every metric per region plus the mean over regions.

Files (written atomically, like the binary report of :mod:`semicml.evaluation.report`):

- ``metrics.csv``: per case one row per region (``region`` column) and a ``mean`` row, the mean
  over the regions of that case's metrics.
- ``summary.json``: ``mean`` / ``std`` over cases of the per-case region means (so
  ``mean.dice`` is the mean Dice over regions, the number model selection uses), and
  ``regions``: the binary summary of each region (mean, std, empty-mask counts).
- ``summary.md``: a table of every metric per region and their mean (mean ± sample std over
  cases), then each region's per-case table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semicml.evaluation.metrics import EMPTY_MASK_RULE, METRICS
from semicml.evaluation.report import (
    METRIC_LABELS,
    RESERVED_SUMMARY_KEYS,
    STD_DDOF,
    coverage_line,
    format_metric,
    md_cell,
    rows_to_csv,
    summarize,
)
from semicml.io_utils import atomic_write_json, atomic_write_text

__all__ = ["MEAN_ROW", "region_mean_rows", "write_region_report"]

MEAN_ROW = "mean"  # the ``region`` of the per-case mean over regions


def region_mean_rows(rows_by_region: dict[str, Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per case, the mean over regions of every metric (cases in the order of the first region)."""
    regions = list(rows_by_region)
    by_case = [{row["case"]: row for row in rows_by_region[r]} for r in regions]
    out = []
    for row in rows_by_region[regions[0]]:
        case = row["case"]
        metrics = [m for m in METRICS if m in row]
        out.append({"case": case, **{m: float(np.mean([float(t[case][m]) for t in by_case])) for m in metrics}})
    return out


def _markdown(rows_by_region: dict[str, Sequence[dict[str, Any]]], summary: dict[str, Any], title: str,
              coverage: dict[str, Any] | None) -> str:
    metrics = list(summary["mean"])
    head = "| " + " | ".join(["Region", *(METRIC_LABELS.get(m, m) for m in metrics)]) + " |"
    rule = "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|"
    lines = [f"# {title}", "",
             f"{summary['n_cases']} cases; every metric per region and the mean over regions, "
             f"mean ± sample std (ddof={STD_DDOF}) over cases.", *coverage_line(coverage),
             f"Empty masks: {EMPTY_MASK_RULE}.", "", head, rule]
    for name, s in [*summary["regions"].items(), ("**mean over regions**", summary)]:
        cells = [f"{format_metric(m, s['mean'][m])} ± {format_metric(m, s['std'][m])}" for m in metrics]
        lines.append("| " + " | ".join([md_cell(name), *cells]) + " |")
    for region, rows in rows_by_region.items():
        lines += ["", f"## {region}", "", head.replace("Region", "Case", 1), rule]
        for row in rows:
            lines.append("| " + " | ".join([md_cell(row["case"]), *(format_metric(m, row[m]) for m in metrics)]) + " |")
    return "\n".join(lines) + "\n"


def write_region_report(rows_by_region: dict[str, Sequence[dict[str, Any]]], out_dir: str | Path, title: str,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``metrics.csv``, ``summary.json``, ``summary.md`` (see the module doc) into ``out_dir``.

    ``rows_by_region``: region -> per-case rows as :func:`~semicml.evaluation.report.evaluate_pairs`
    makes them, the same cases in the same order for every region. Returns the summary (the
    :func:`summarize` of the per-case region means, with ``regions``).
    """
    extra = dict(extra or {})
    clash = sorted((RESERVED_SUMMARY_KEYS | {"regions"}) & set(extra))
    if clash:
        raise ValueError(f"extra may not overwrite report keys: {', '.join(clash)}")
    cases = [[row["case"] for row in rows] for rows in rows_by_region.values()]
    if any(c != cases[0] for c in cases):
        raise ValueError("every region must list the same cases in the same order")
    means = region_mean_rows(rows_by_region)
    summary = {**summarize(means), "regions": {r: summarize(rows) for r, rows in rows_by_region.items()}}
    table = []
    for i, mean_row in enumerate(means):
        table += [{**rows[i], "region": r} for r, rows in rows_by_region.items()]
        table.append({**mean_row, "region": MEAN_ROW})
    metrics = [m for m in METRICS if m in means[0]]
    others = [k for k in table[0] if k not in ("case", "region", *metrics)]
    others += [k for row in table for k in row if k not in ("case", "region", *metrics, *others)]
    atomic_write_text(Path(out_dir) / "metrics.csv", rows_to_csv(table, ["case", "region", *metrics,
                                                                         *dict.fromkeys(others)]))
    atomic_write_json(Path(out_dir) / "summary.json", {"title": title, **summary, "std_ddof": STD_DDOF,
                                                       "empty_mask_rule": EMPTY_MASK_RULE,
                                                       "region_order": list(rows_by_region), **extra})
    atomic_write_text(Path(out_dir) / "summary.md", _markdown(rows_by_region, summary, title, extra.get("coverage")))
    return summary
