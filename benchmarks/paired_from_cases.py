"""Paired per-patient comparison of any method of a grid against others, from its ``cases.csv``.

The grid's own report compares its ``reference`` method with every other; this answers a question
about two other rows (e.g. a 2.5D variant against the same method in 2D) with the same statistics
(mean difference, 95% percentile-bootstrap CI over patients, two-sided Wilcoxon signed-rank).

    python benchmarks/paired_from_cases.py benchmarks/results/brats18-cv/cases.csv \
        --reference supervised+lowres+context1 --others supervised+lowres [--json OUT.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from semicml.benchmark.paired import paired_comparison, paired_markdown  # noqa: E402

TEXT = {"method", "modality", "case", "prediction", "region"}


def read_cases(path: Path, methods: set[str]) -> list[dict]:
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["method"] not in methods:
                continue
            values = {}
            for k, v in row.items():
                if k in TEXT:
                    values[k] = v or None
                elif k in ("seed", "fold"):
                    values[k] = int(v) if v not in ("", None) else None
                else:
                    try:
                        values[k] = float(v)
                    except (TypeError, ValueError):
                        values[k] = None
            rows.append(values)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", type=Path)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--others", required=True, help="comma-separated method names")
    ap.add_argument("--json", type=Path, help="also write the comparison as JSON")
    args = ap.parse_args()
    others = [o for o in args.others.split(",") if o]
    rows = read_cases(args.cases, {args.reference, *others})
    missing = [m for m in (args.reference, *others) if not any(r["method"] == m for r in rows)]
    if missing:
        sys.exit(f"error: {args.cases}: no rows for {', '.join(missing)}")
    comparison = paired_comparison(rows, args.reference)
    print(paired_markdown(comparison))
    if args.json:
        args.json.write_text(json.dumps(comparison, indent=1))


if __name__ == "__main__":
    main()
