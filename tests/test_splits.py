"""Splits and labelled subsets on a hand-made store stand-in (no phantom, no preparation).

Counts are worked out by hand from the documented rules (``round``, ``ceil``, ``max(1, ...)``);
written against the surviving mutants of benchmarks/mutation.py (data/splits.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from semicml.data.splits import (
    LabeledSubset,
    Splits,
    check_splits,
    load_or_make_subset,
    load_splits,
    make_cv_splits,
    make_splits,
    select_labeled,
    subset_file,
    training_slices,
)
from semicml.errors import ConfigError, DataError


@dataclass
class Meta:
    labeled: bool
    foreground_slices: list[int]
    nonempty_slices: list[int] = field(default_factory=list)


class Store:
    """What splits.py reads of a SliceStore: ``cases`` (id -> meta) and ``root``."""

    def __init__(self, root: Path, labelled: int, unlabelled: int = 0, fg: int = 2, nonempty: int = 5):
        self.root = root
        self.cases = {f"c{i:02d}": Meta(True, list(range(1, 1 + fg)), list(range(nonempty)))
                      for i in range(labelled)}
        self.cases.update({f"u{i:02d}": Meta(False, [], list(range(nonempty))) for i in range(unlabelled)})


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path, labelled=10, unlabelled=2)


def error(exc, fn, *args, **kw) -> str:
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    return str(info.value)


# ------------------------------------------------------------------------------ splits files
def test_splits_to_json_and_load_round_trip(store, tmp_path):
    splits = Splits(train=["c00", "c01", "u00"], val=["c02"], test=["c03"])
    assert splits.to_json() == {"train": ["c00", "c01", "u00"], "val": ["c02"], "test": ["c03"]}
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits.to_json()))
    assert load_splits(path, store) == splits


@pytest.mark.parametrize("content, problem", [
    (None, "splits file not found"),
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes)"),
    ('{"train": ["c00"], "test": []}', "missing list 'val'"),
    ('{"train": ["c00"], "val": "c01", "test": []}', "missing list 'val'"),
    ('{"train": ["c00"], "val": [], "test": ["c00"]}', "case 'c00' is in both 'train' and 'test'"),
])
def test_load_splits_names_the_file_and_the_problem(store, tmp_path, content, problem):
    path = tmp_path / "splits.json"
    if content is not None:
        path.write_text(content)
    assert error(DataError, load_splits, path, store) == f"{path}: {problem}"


@pytest.mark.parametrize("splits, problem", [
    (Splits(["c00"], ["c01"], ["c01"]), "case 'c01' is in both 'val' and 'test'"),
    (Splits(["c00", "x"], [], []), "case 'x' (train) is not in the store {root}"),
    (Splits(["c00"], ["u00"], []), "case 'u00' in 'val' has no label"),
    (Splits(["c00"], [], ["u01"]), "case 'u01' in 'test' has no label"),
    (Splits([], ["c00"], ["c01"]), "the train split is empty"),
])
def test_check_splits_refuses(store, splits, problem):
    assert error(DataError, check_splits, splits, store) == problem.format(root=store.root)
    assert error(DataError, check_splits, splits, store, "s.json") == "s.json: " + problem.format(root=store.root)


def test_check_splits_accepts_unlabelled_cases_in_train(store):
    check_splits(Splits(["c00", "u00", "u01"], ["c01"], ["c02"]), store)


# ------------------------------------------------------------------------------ random splits
@pytest.mark.parametrize("val, test, n_val, n_test", [
    (0.15, 0.25, 2, 2),  # round(1.5) = 2, round(2.5) = 2 (half to even)
    (0.3, 0.4, 3, 4),
    (0.01, 0.01, 1, 1),  # at least one case as soon as the fraction is > 0
    (0.0, 0.2, 0, 2),
    (0.2, 0.0, 2, 0),
])
def test_make_splits_sizes_and_partition(store, val, test, n_val, n_test):
    s = make_splits(store, seed=0, val_fraction=val, test_fraction=test)
    assert (len(s.val), len(s.test)) == (n_val, n_test)
    labelled = {c for c in store.cases if c.startswith("c")}
    assert set(s.train) | set(s.val) | set(s.test) == set(store.cases)
    assert len(s.train) + len(s.val) + len(s.test) == 12
    assert s.train[-2:] == ["u00", "u01"] and sorted(s.train[:-2]) == s.train[:-2]  # unlabelled: train, last
    assert set(s.val) | set(s.test) <= labelled and s.val == sorted(s.val) and s.test == sorted(s.test)


def test_make_splits_depends_on_the_seed_only(store):
    a, b = make_splits(store, seed=1), make_splits(store, seed=1)
    assert a == b
    assert any(make_splits(store, seed=k).test != a.test for k in range(2, 6))
    assert make_splits(store).test == make_splits(store, seed=0, val_fraction=0.15, test_fraction=0.25).test


def test_make_splits_refuses_too_few_cases(tmp_path):
    small = Store(tmp_path, labelled=2)
    assert error(DataError, make_splits, small) == f"{tmp_path}: too few labelled cases (2) for a val/test split"
    three = Store(tmp_path, labelled=3)
    s = make_splits(three)  # 1 test + 1 val + 1 train is enough
    assert (len(s.train), len(s.val), len(s.test)) == (1, 1, 1)


# ------------------------------------------------------------------------------ cross-validation
def test_cv_every_labelled_case_is_tested_exactly_once(store):
    folds = make_cv_splits(store, folds=4, val_cases=2, seed=3)
    assert len(folds) == 4
    tested = [c for f in folds for c in f.test]
    assert sorted(tested) == sorted(c for c in store.cases if c.startswith("c"))  # once each
    assert sorted(len(f.test) for f in folds) == [2, 2, 3, 3]  # 10 cases dealt into 4 folds
    for f in folds:
        assert len(f.val) == 2 and not set(f.val) & set(f.test)
        assert f.train[-2:] == ["u00", "u01"] and len(f.train) == 12 - len(f.test) - 2
        assert not set(f.train) & (set(f.val) | set(f.test))
        assert f.val == sorted(f.val) and f.test == sorted(f.test) and f.train[:-2] == sorted(f.train[:-2])
    assert make_cv_splits(store, folds=4, val_cases=2, seed=3) == folds
    assert make_cv_splits(store, folds=4, val_cases=2, seed=4) != folds
    assert [f.val for f in make_cv_splits(store, folds=4, seed=3)] == [f.val for f in folds]  # default 2


def test_cv_validation_cases_differ_between_folds(tmp_path):
    store = Store(tmp_path, labelled=12)
    folds = make_cv_splits(store, folds=3, val_cases=3, seed=0)
    assert len({tuple(f.val) for f in folds}) > 1 and all(len(f.val) == 3 for f in folds)


@pytest.mark.parametrize("labelled, folds, val_cases, exc, problem", [
    (10, 1, 2, ConfigError, "cross-validation needs at least 2 folds, got 1"),
    (3, 4, 1, DataError, "{root}: 3 labelled cases cannot make 4 test folds"),
    (4, 2, 2, DataError, "{root}: fold 0: no training case left after 2 test and 2 val cases"),
])
def test_cv_refuses(tmp_path, labelled, folds, val_cases, exc, problem):
    store = Store(tmp_path, labelled=labelled)
    assert error(exc, make_cv_splits, store, folds, val_cases) == problem.format(root=tmp_path)


def test_cv_with_one_training_case_left_is_allowed(tmp_path):
    folds = make_cv_splits(Store(tmp_path, labelled=4), folds=2, val_cases=1)
    assert [len(f.train) for f in folds] == [1, 1]


# ------------------------------------------------------------------------------ slices and subsets
def test_training_slices_filters(tmp_path):
    store = Store(tmp_path, labelled=1, unlabelled=1, fg=2, nonempty=3)
    assert training_slices(store, ["c00", "u00"]) == [("c00", 1), ("c00", 2), ("u00", 0), ("u00", 1), ("u00", 2)]
    assert training_slices(store, ["c00"], "nonempty") == [("c00", 0), ("c00", 1), ("c00", 2)]
    keys = training_slices(store, ["c00"])
    assert all(type(z) is int for _, z in keys)
    assert error(ConfigError, training_slices, store, ["c00"], "all") == \
        "slice_filter must be 'foreground' or 'nonempty', not 'all'"


@pytest.mark.parametrize("fraction, min_labeled, n", [(0.1, 0, 2), (0.25, 0, 5), (0.25, 7, 7), (0.01, 50, 20),
                                                      (1.0, 0, 20)])
def test_slice_level_subset_size(store, fraction, min_labeled, n):
    train = [f"c{i:02d}" for i in range(10)] + ["u00"]
    sub = select_labeled(store, train, fraction, "slice", seed=0, min_labeled=min_labeled)
    assert len(sub.labeled) == n  # max(min_labeled, ceil(fraction * 20)), at most the 20 slices
    assert len(sub.unlabeled) == 20 - n + 5  # the rest, plus every slice of u00
    assert not set(sub.labeled) & set(sub.unlabeled)
    assert (sub.fraction, sub.level, sub.seed) == (fraction, "slice", 0)
    order = [k for k in training_slices(store, train) if k in set(sub.labeled)]
    assert sub.labeled == order  # kept in store order


def test_slice_level_subset_depends_on_the_seed(store):
    train = [f"c{i:02d}" for i in range(10)]
    a = select_labeled(store, train, 0.2, seed=4)
    assert a.labeled == select_labeled(store, train, 0.2, "slice", 4).labeled
    assert any(select_labeled(store, train, 0.2, seed=k).labeled != a.labeled for k in range(5, 9))
    assert select_labeled(store, train, 0.2).labeled == select_labeled(store, train, 0.2, seed=0).labeled


@pytest.mark.parametrize("fraction, n_cases", [(0.25, 3), (0.01, 1), (1.0, 10)])
def test_case_level_subset_takes_whole_cases(store, fraction, n_cases):
    train = [f"c{i:02d}" for i in range(10)] + ["u00"]
    sub = select_labeled(store, train, fraction, "case", seed=1)
    cases = {c for c, _ in sub.labeled}
    assert len(cases) == n_cases and len(sub.labeled) == 2 * n_cases  # 2 foreground slices each
    assert not cases & {c for c, _ in sub.unlabeled} and "u00" not in cases
    assert len(sub.unlabeled) == 2 * (10 - n_cases) + 5


def test_subset_uses_the_slice_filter(store):
    sub = select_labeled(store, ["c00", "u00"], 1.0, slice_filter="nonempty")
    assert sub.labeled == [("c00", z) for z in range(5)] and len(sub.unlabeled) == 5


@pytest.mark.parametrize("fraction, level, train, exc, problem", [
    (0.0, "slice", ["c00"], ConfigError, "labeled fraction must be in (0, 1], got 0.0"),
    (1.5, "slice", ["c00"], ConfigError, "labeled fraction must be in (0, 1], got 1.5"),
    (0.5, "patient", ["c00"], ConfigError, "label level must be 'slice' or 'case', not 'patient'"),
    (0.5, "slice", ["u00"], DataError, "{root}: no labelled case in the train split"),
])
def test_select_labeled_refuses(store, fraction, level, train, exc, problem):
    assert error(exc, select_labeled, store, train, fraction, level) == problem.format(root=store.root)


def test_subset_json(store):
    sub = LabeledSubset(labeled=[("c00", 1)], unlabeled=[("c00", 2), ("u00", 0)], fraction=0.5, level="case",
                        seed=3)
    assert sub.to_json() == {"fraction": 0.5, "level": "case", "seed": 3, "n_labeled": 1, "n_unlabeled": 2,
                             "labeled": [["c00", 1]], "unlabeled": [["c00", 2], ["u00", 0]]}


def test_subset_file_name_records_every_choice(store):
    splits = Splits(["c00", "c01"], ["c02"], ["c03"])
    digest = hashlib.sha1(b'["c00", "c01"]').hexdigest()[:8]
    path = subset_file(store, splits, 0.25, "case", 7, 3, "nonempty")
    assert path == store.root / "subsets" / f"labeled_case_0.25_min3_nonempty_seed7_{digest}.json"


def test_subset_is_persisted_and_reused(store):
    splits = Splits([f"c{i:02d}" for i in range(8)] + ["u00"], ["c08"], ["c09"])
    sub, path = load_or_make_subset(store, splits, 0.25, "slice", seed=2, min_labeled=1, slice_filter="foreground")
    assert path == subset_file(store, splits, 0.25, "slice", 2, 1, "foreground") and path.is_file()
    assert json.loads(path.read_text()) == sub.to_json()
    assert sub.labeled == select_labeled(store, splits.train, 0.25, "slice", 2, 1, "foreground").labeled
    again, path2 = load_or_make_subset(store, splits, 0.25, "slice", seed=2, min_labeled=1)
    assert path2 == path and again == sub  # read back: tuples, the same fields
    path.write_text(json.dumps(dict(sub.to_json(), labeled=[["c05", 9]])))
    assert load_or_make_subset(store, splits, 0.25, "slice", 2, 1)[0].labeled == [("c05", 9)]  # the file wins
    default, _ = load_or_make_subset(store, splits, 0.25)
    assert default == select_labeled(store, splits.train, 0.25)


def test_subset_on_a_read_only_store_is_kept_in_memory(store):
    (store.root / "subsets").write_text("a file where the folder should be")  # mkdir fails: OSError
    splits = Splits(["c00", "c01"], ["c02"], ["c03"])
    sub, path = load_or_make_subset(store, splits, 0.5)
    assert path is None and len(sub.labeled) == 2


def test_cv_folds_deal_the_seeded_shuffle_and_default_to_seed_0(store):
    """The documented deal: the labelled cases shuffled by ``default_rng([seed, 11])`` and dealt
    round-robin; fold k's validation cases are the first of ``default_rng([seed, 13, k])``'s
    shuffle of the rest. Pinned so that a run's folds can be rebuilt by a later version."""
    import numpy as np

    labelled = sorted(c for c in store.cases if c.startswith("c"))
    order = [str(c) for c in np.random.default_rng([0, 11]).permutation(labelled)]
    folds = make_cv_splits(store, folds=3)
    for k, f in enumerate(folds):
        assert f.test == sorted(order[k::3])
        rest = [c for c in order if c not in f.test]
        assert f.val == sorted(str(c) for c in np.random.default_rng([0, 13, k]).permutation(rest)[:2])
    assert make_cv_splits(store, folds=3, seed=0) == folds


def test_cv_with_as_many_folds_as_labelled_cases(tmp_path):
    folds = make_cv_splits(Store(tmp_path, labelled=4), folds=4, val_cases=1)
    assert [len(f.test) for f in folds] == [1, 1, 1, 1] and all(len(f.train) == 2 for f in folds)


def test_unlabelled_pool_uses_the_same_slice_filter(store):
    sub = select_labeled(store, ["c00", "u00"], 0.5, slice_filter="nonempty", seed=3)
    assert len(sub.labeled) == 3  # ceil(0.5 * 5) of c00's five non-empty slices
    c00_rest = [k for k in sub.unlabeled if k[0] == "c00"]
    assert sorted(sub.labeled + c00_rest) == [("c00", z) for z in range(5)]  # not its 2 foreground slices
    assert len(sub.unlabeled) == 2 + 5


def test_persisted_subsets_keep_their_slice_filter_and_share_the_folder(store):
    splits = Splits(["c00", "c01", "u00"], ["c02"], ["c03"])
    a, path_a = load_or_make_subset(store, splits, 0.5, slice_filter="nonempty")
    assert a == select_labeled(store, splits.train, 0.5, slice_filter="nonempty")
    b, path_b = load_or_make_subset(store, splits, 0.5, seed=1)  # the subsets folder exists now
    assert path_a is not None and path_b is not None and path_a != path_b and path_b.is_file()
