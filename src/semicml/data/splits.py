"""Patient-level train / val / test splits and the labelled subset of the training slices.

The test split never enters training, model selection or the teacher: only ``val`` is used for
selection. The labelled subset is drawn by seed, at slice level (the paper's protocol: a fraction
of the training slices) or case level, and persisted as JSON so a run can be reproduced exactly.
Cases without a label file are always unlabelled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io_utils import atomic_write_json
from .store import SliceStore


@dataclass
class Splits:
    train: list[str]
    val: list[str]
    test: list[str]

    def to_json(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test}


def load_splits(path: str | Path, store: SliceStore) -> Splits:
    """Read a ``splits.json`` ({"train": [...], "val": [...], "test": [...]}) and check it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("splits file not found", path) from None
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg})", path) from None
    for key in ("train", "val", "test"):
        if not isinstance(data.get(key), list):
            raise DataError(f"missing list {key!r}", path)
    splits = Splits(list(data["train"]), list(data["val"]), list(data["test"]))
    check_splits(splits, store, path)
    return splits


def check_splits(splits: Splits, store: SliceStore, path: str | Path | None = None) -> None:
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        for case in getattr(splits, name):
            if case in seen:
                raise DataError(f"case {case!r} is in both {seen[case]!r} and {name!r}", path)
            seen[case] = name
            if case not in store.cases:
                raise DataError(f"case {case!r} ({name}) is not in the store {store.root}", path)
            if name != "train" and not store.cases[case].labeled:
                raise DataError(f"case {case!r} in {name!r} has no label", path)
    if not splits.train:
        raise DataError("the train split is empty", path)


def make_splits(store: SliceStore, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.25) -> Splits:
    """Random patient-level split of the labelled cases; unlabelled cases all go to train."""
    labeled = sorted(c for c, m in store.cases.items() if m.labeled)
    unlabeled = sorted(c for c, m in store.cases.items() if not m.labeled)
    order = list(np.random.default_rng(seed).permutation(labeled))
    n_test = max(1, round(test_fraction * len(order))) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * len(order))) if val_fraction > 0 else 0
    if n_test + n_val >= len(order):
        raise DataError(f"too few labelled cases ({len(order)}) for a val/test split", store.root)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Splits(sorted(train) + unlabeled, sorted(val), sorted(test))


def make_cv_splits(store: SliceStore, folds: int, val_cases: int = 2, seed: int = 0) -> list[Splits]:
    """k-fold cross-validation at patient level: every labelled case is a TEST case exactly once.

    The labelled cases are shuffled by ``seed`` and dealt into ``folds`` test folds (sizes differ
    by at most one). For each fold, ``val_cases`` of the remaining labelled cases (seeded) form the
    validation split used for model selection; the rest, plus every unlabelled case, train.
    """
    labeled = sorted(c for c, m in store.cases.items() if m.labeled)
    unlabeled = sorted(c for c, m in store.cases.items() if not m.labeled)
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(labeled) < folds:
        raise DataError(f"{len(labeled)} labelled cases cannot make {folds} test folds", store.root)
    order = [str(c) for c in np.random.default_rng([seed, 11]).permutation(labeled)]
    out = []
    for k in range(folds):
        test = order[k::folds]
        rest = [c for c in order if c not in test]
        val = [str(c) for c in np.random.default_rng([seed, 13, k]).permutation(rest)[:val_cases]]
        if len(rest) - len(val) < 1:
            raise DataError(f"fold {k}: no training case left after {len(test)} test and {len(val)} val cases",
                            store.root)
        train = [c for c in rest if c not in val]
        splits = Splits(sorted(train) + unlabeled, sorted(val), sorted(test))
        check_splits(splits, store)
        out.append(splits)
    return out


SliceKey = tuple[str, int]


def training_slices(store: SliceStore, cases: list[str], slice_filter: str = "foreground") -> list[SliceKey]:
    """Slices used for training. ``foreground`` (paper): slices containing target; cases without a
    label fall back to non-empty (brain) slices. ``nonempty``: every slice with image content."""
    if slice_filter not in ("foreground", "nonempty"):
        raise ConfigError(f"slice_filter must be 'foreground' or 'nonempty', not {slice_filter!r}")
    keys: list[SliceKey] = []
    for case in cases:
        meta = store.cases[case]
        zs = meta.foreground_slices if (slice_filter == "foreground" and meta.labeled) else meta.nonempty_slices
        keys.extend((case, int(z)) for z in zs)
    return keys


@dataclass
class LabeledSubset:
    labeled: list[SliceKey]
    unlabeled: list[SliceKey]
    fraction: float
    level: str
    seed: int

    def to_json(self) -> dict:
        return {
            "fraction": self.fraction, "level": self.level, "seed": self.seed,
            "n_labeled": len(self.labeled), "n_unlabeled": len(self.unlabeled),
            "labeled": [list(k) for k in self.labeled], "unlabeled": [list(k) for k in self.unlabeled],
        }


def select_labeled(store: SliceStore, train_cases: list[str], fraction: float, level: str = "slice",
                   seed: int = 0, min_labeled: int = 0, slice_filter: str = "foreground") -> LabeledSubset:
    """Choose which training slices keep their label.

    ``level="slice"``: ``max(min_labeled, ceil(fraction * n))`` slices of the labelled cases;
    ``level="case"``: that fraction of the labelled cases, all their slices. The rest of the
    training slices (and every slice of an unlabelled case) form the unlabelled pool.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"labeled fraction must be in (0, 1], got {fraction}")
    if level not in ("slice", "case"):
        raise ConfigError(f"label level must be 'slice' or 'case', not {level!r}")
    rng = np.random.default_rng(seed)
    labelled_cases = [c for c in train_cases if store.cases[c].labeled]
    if not labelled_cases:
        raise DataError("no labelled case in the train split", store.root)
    pool = training_slices(store, labelled_cases, slice_filter)
    if level == "slice":
        n = min(len(pool), max(min_labeled, math.ceil(fraction * len(pool))))
        chosen_idx = set(rng.choice(len(pool), size=n, replace=False).tolist())
        labeled = [k for i, k in enumerate(pool) if i in chosen_idx]
    else:
        n_cases = max(1, math.ceil(fraction * len(labelled_cases)))
        chosen = set(rng.choice(labelled_cases, size=n_cases, replace=False).tolist())
        labeled = [k for k in pool if k[0] in chosen]
    chosen_set = set(labeled)
    unlabeled = [k for k in training_slices(store, train_cases, slice_filter) if k not in chosen_set]
    return LabeledSubset(labeled=labeled, unlabeled=unlabeled, fraction=fraction, level=level, seed=seed)


def subset_file(store: SliceStore, splits: Splits, fraction: float, level: str, seed: int, min_labeled: int,
                slice_filter: str) -> Path:
    import hashlib

    digest = hashlib.sha1(json.dumps(splits.train).encode()).hexdigest()[:8]
    name = f"labeled_{level}_{fraction:g}_min{min_labeled}_{slice_filter}_seed{seed}_{digest}.json"
    return store.root / "subsets" / name


def load_or_make_subset(store: SliceStore, splits: Splits, fraction: float, level: str = "slice", seed: int = 0,
                        min_labeled: int = 0, slice_filter: str = "foreground") -> tuple[LabeledSubset, Path | None]:
    """Reuse the persisted subset next to the store if present, else draw and persist it.

    A read-only store still works: the subset is then only kept in the run directory.
    """
    path = subset_file(store, splits, fraction, level, seed, min_labeled, slice_filter)
    if path.is_file():
        data = json.loads(path.read_text())
        subset = LabeledSubset([tuple(k) for k in data["labeled"]], [tuple(k) for k in data["unlabeled"]],
                               data["fraction"], data["level"], data["seed"])
        return subset, path
    subset = select_labeled(store, splits.train, fraction, level, seed, min_labeled, slice_filter)
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write_json(path, subset.to_json())
    except OSError:
        return subset, None
    return subset, path
