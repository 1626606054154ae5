"""What a run was started with, so that a resumed run cannot silently drift.

Recorded in every checkpoint (and in run.json): the semicml version, the store's content hash,
the patient-level splits, the labelled fraction and level, and a hash of the exact labelled
subset of training slices. ``--resume`` compares the saved record with what it would use now and
refuses, naming the difference, when anything changed (an edited splits.json or config.yaml, a
store prepared again, another store, a new semicml version).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError
from ..hardware import compute_difference

__all__ = ["check_provenance", "compute_changes", "provenance"]


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def provenance(store, splits, subset, cfg) -> dict[str, Any]:
    """The record for a run on ``store`` with these splits, labelled subset and configuration."""
    return {
        "semicml_version": __version__,
        "store_sha256": store.content_hash,
        "splits": {k: [str(c) for c in v] for k, v in splits.to_json().items()},  # plain str: weights_only loads
        "labeled_fraction": float(cfg.labeled_fraction),
        "label_level": str(cfg.label_level),
        "labeled_subset_sha256": _sha256([[str(c), int(z)] for c, z in subset.labeled]),
    }


_WHAT = {
    "semicml_version": "semicml version",
    "store_sha256": "slice store (content hash; prepared again, or another store)",
    "splits": "splits",
    "labeled_fraction": "labelled fraction",
    "label_level": "label level",
    "labeled_subset_sha256": "labelled subset of the training slices",
}


def _splits_difference(old: dict, new: dict) -> str:
    where_old = {c: k for k, cases in old.items() for c in cases}
    where_new = {c: k for k, cases in new.items() for c in cases}
    moved = [f"{c!r} {where_old.get(c, 'absent')} -> {where_new.get(c, 'absent')}"
             for c in sorted(set(where_old) | set(where_new)) if where_old.get(c) != where_new.get(c)]
    if not moved:
        return "same cases, different order"
    more = f" and {len(moved) - 3} more" if len(moved) > 3 else ""
    return "case " + ", ".join(moved[:3]) + more


def check_provenance(saved: dict[str, Any] | None, current: dict[str, Any], run_dir: str | Path) -> None:
    """Raise ConfigError naming the first thing that differs; a checkpoint without a record
    (written by an older semicml) is accepted as is."""
    if not saved:
        return
    for key, what in _WHAT.items():
        if key not in saved or saved[key] == current.get(key):
            continue
        if key == "splits":
            detail = _splits_difference(saved[key], current[key])
        elif key.endswith("sha256"):
            detail = f"{str(saved[key])[:12]} -> {str(current.get(key))[:12]}"
        else:
            detail = f"{saved[key]!r} -> {current.get(key)!r}"
        raise ConfigError(f"cannot resume: the {what} changed since this run started ({detail}); "
                          "restore it or start a new run with another --out", run_dir)


def compute_changes(state: dict[str, Any], compute: dict[str, Any], run_dir: str | Path, say: bool = True) -> list[str]:
    """The run's record of resumes on other threads, processes, CPU or precision, this one's
    appended. Allowed (a run may change machines), but said once: the numbers will not repeat."""
    changed = compute_difference(state.get("compute"), compute)
    if not changed:
        return list(state.get("compute_changes", []))
    if say:
        print(f"note: {run_dir}: resumed with {changed}; from here its numbers differ from an uninterrupted "
              "run's (on a CPU the same threads, CPU and precision repeat a run bit for bit)", file=sys.stderr)
    return [*state.get("compute_changes", []), f"iteration {state['iteration']}: {changed}"]
