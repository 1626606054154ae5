"""Per-case evaluation rows -> summary statistics and report files.

A *row* is one case: ``{"case": id, "dice": ..., "hd95": ..., ...}`` (any subset of
:data:`~semicml.evaluation.metrics.METRICS`, the same subset in every row; extra columns such
as voxel counts are carried into ``metrics.csv``).

Summary convention: ``mean`` over all cases (cases that hit the empty-mask rule included) and
the *sample* standard deviation (``ddof=1``) when there are at least 2 cases, else 0.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semicml.evaluation.metrics import DISTANCE_METRICS, EMPTY_MASK_RULE, METRICS, case_metrics
from semicml.io_utils import atomic_write_json, atomic_write_text

STD_DDOF = 1  # sample std (n - 1) for n > 1; 0.0 for a single case

METRIC_LABELS: dict[str, str] = {
    "dice": "Dice",
    "jaccard": "Jaccard",
    "hd95": "HD95 (mm)",
    "asd": "ASD (mm)",
    "precision": "Precision",
    "sensitivity": "Sensitivity",
}

# Keys summary.json writes itself; ``extra`` may not overwrite them.
RESERVED_SUMMARY_KEYS = frozenset(
    {"title", "n_cases", "mean", "std", "std_ddof", "empty_mask_rule", "n_empty_pred", "n_empty_ref"}
)


def _metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {k for row in rows for k in row}
    return [m for m in METRICS if m in present]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std of every metric over the cases.

    Returns ``{"n_cases": n, "mean": {metric: float}, "std": {metric: float}}``; when the rows
    carry ``pred_voxels`` / ``ref_voxels`` (as :func:`evaluate_pairs` writes them) it also has
    ``n_empty_pred`` and ``n_empty_ref``, how many cases fell under the empty-mask rule.

    Raises:
        ValueError: no rows, or a metric present in some rows but missing from others.
    """
    if not rows:
        raise ValueError("no cases to summarize")
    metrics = _metric_columns(rows)
    n = len(rows)
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for m in metrics:
        missing = [str(row.get("case", i)) for i, row in enumerate(rows) if m not in row]
        if missing:
            # A silently shorter mean would flatter (or hide) exactly the failing cases.
            raise ValueError(f"metric {m!r} missing for case(s): {', '.join(missing[:5])}")
        values = np.asarray([float(row[m]) for row in rows], dtype=np.float64)
        mean[m] = float(values.mean())
        std[m] = float(values.std(ddof=STD_DDOF)) if n > 1 else 0.0
    summary: dict[str, Any] = {"n_cases": n, "mean": mean, "std": std}
    if all("pred_voxels" in row and "ref_voxels" in row for row in rows):
        summary["n_empty_pred"] = sum(int(row["pred_voxels"]) == 0 for row in rows)
        summary["n_empty_ref"] = sum(int(row["ref_voxels"]) == 0 for row in rows)
    return summary


def format_metric(metric: str, value: Any) -> str:
    value = float(value)
    if math.isnan(value):
        return "nan"
    return f"{value:.2f}" if metric in DISTANCE_METRICS else f"{value:.4f}"


def md_cell(text: Any) -> str:
    # A '|' in a case id would split the Markdown table cell.
    return str(text).replace("|", "\\|").replace("\n", " ")


def rows_to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` with these columns; a missing or None value is an empty cell.

    Full precision (repr) in the CSV; rounding is for the human-readable Markdown only.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buf.getvalue()


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    metrics = _metric_columns(rows)
    others: list[str] = []
    for row in rows:
        for key in row:
            if key != "case" and key not in metrics and key not in others:
                others.append(key)
    return rows_to_csv(rows, ["case", *metrics, *others])


def coverage_line(coverage: dict[str, Any] | None) -> list[str]:
    if not coverage:
        return []
    text = (f"Cases expected: {coverage['n_expected']}, found: {coverage['n_found']}, "
            f"missing: {coverage['n_missing']}")
    if coverage["n_missing"]:
        text += (f" ({', '.join(map(md_cell, coverage['cases_missing'][:10]))}"
                 f"{' ...' if coverage['n_missing'] > 10 else ''}; scored as the worst case: Dice 0, "
                 "distances = volume diagonal)")
    return [text + "."]


def _markdown_text(rows: Sequence[dict[str, Any]], summary: dict[str, Any], title: str,
                   coverage: dict[str, Any] | None = None) -> str:
    metrics = list(summary["mean"])
    header = ["Case", *(METRIC_LABELS.get(m, m) for m in metrics)]
    lines = [
        f"# {title}",
        "",
        f"{summary['n_cases']} cases; last row: mean ± sample std (ddof={STD_DDOF}) over all cases.",
        *coverage_line(coverage),
        f"Empty masks: {EMPTY_MASK_RULE}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|",
    ]
    for i, row in enumerate(rows):
        cells = [md_cell(row.get("case", i)), *(format_metric(m, row[m]) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    stats = [f"{format_metric(m, summary['mean'][m])} ± {format_metric(m, summary['std'][m])}" for m in metrics]
    lines.append("| **mean ± std** | " + " | ".join(stats) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    title: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.csv``, ``summary.json`` and ``summary.md`` into ``out_dir`` (atomically).

    - ``metrics.csv``: one line per case (no summary lines); columns ``case``, the metrics in
      :data:`METRICS` order, then any other row keys.
    - ``summary.json``: ``title``, the :func:`summarize` result, ``std_ddof``,
      ``empty_mask_rule``, and the keys of ``extra`` merged at the top level (an ``extra``
      ``coverage`` dict, as :func:`~semicml.evaluation.evaluate.evaluate_predictions` passes it, is
      also stated in ``summary.md``: cases expected, found, missing).
    - ``summary.md``: a Markdown table with per-case lines and a final ``mean ± std`` line;
      4 decimals for fractions, 2 for distances (mm).

    Returns the :func:`summarize` dict.

    Raises:
        ValueError: see :func:`summarize`; or ``extra`` reuses a key the report writes itself.
    """
    out_dir = Path(out_dir)
    summary = summarize(rows)
    extra = dict(extra or {})
    clash = sorted(RESERVED_SUMMARY_KEYS & set(extra))
    if clash:
        raise ValueError(f"extra may not overwrite report keys: {', '.join(clash)}")
    payload = {
        "title": title,
        **summary,
        "std_ddof": STD_DDOF,
        "empty_mask_rule": EMPTY_MASK_RULE,
        **extra,
    }
    atomic_write_text(out_dir / "metrics.csv", _csv_text(rows))
    atomic_write_json(out_dir / "summary.json", payload)
    atomic_write_text(out_dir / "summary.md", _markdown_text(rows, summary, title, extra.get("coverage")))
    return summary


def _progress(items: Iterable[Any], enabled: bool, total: int | None) -> Iterable[Any]:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a declared dependency, but a bar is not worth failing over
        return items
    return tqdm(items, total=total, desc="evaluate", unit="case")


def evaluate_pairs(
    pairs: Iterable[tuple[Hashable, np.ndarray, np.ndarray, Sequence[float]]],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Compute :func:`case_metrics` for ``(case_id, pred, ref, spacing)`` tuples.

    ``pred`` and ``ref`` are 3D masks of the same shape; ``spacing`` is in mm per array axis.
    Returns one row per case, in input order: ``{"case": str(case_id), <metrics>,
    "pred_voxels": int, "ref_voxels": int}`` (voxel counts make empty-mask cases visible).

    Raises:
        ValueError: duplicate case ids (they would be counted twice), or a bad pair
        (message prefixed with the case id).
    """
    total = len(pairs) if hasattr(pairs, "__len__") else None  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for case_id, pred, ref, spacing in _progress(pairs, progress, total):
        case = str(case_id)
        if case in seen:
            raise ValueError(f"duplicate case id {case!r}")
        seen.add(case)
        try:
            values = case_metrics(pred, ref, spacing)
        except ValueError as err:
            raise ValueError(f"case {case!r}: {err}") from err
        rows.append(
            {
                "case": case,
                **values,
                "pred_voxels": int(np.count_nonzero(pred)),
                "ref_voxels": int(np.count_nonzero(ref)),
            }
        )
    return rows
