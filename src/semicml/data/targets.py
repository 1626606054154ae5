"""Which label values the networks learn to segment: a small spec language -> :class:`Target`.

Spec grammar (case-insensitive):

* ``wt``   whole tumour = every non-background label (works for any dataset as "foreground").
* ``tc``   tumour core, ``et`` enhancing tumour. BraTS layout: tc = {1, 4}, et = {4}. nnU-Net / MSD:
  resolved from label names: enhancing = names containing "enhanc" (but not "non-enhanc");
  core = enhancing + names containing "necro", "ncr", "non-enhanc" or "core".
* ``raw``  multi-class: every non-background label its own class, in value order.
* ``edema`` or ``necrosis+enhancing``: one or more label names joined by ``+`` -> one binary class.
* ``1,4`` (or ``1+4``): label values -> one binary class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from semicml.data.readers import DatasetInfo
from semicml.errors import DataError

__all__ = ["KEYWORDS", "Target", "apply_target", "resolve_target"]

KEYWORDS = ("wt", "tc", "et", "raw")


@dataclass(frozen=True)
class Target:
    """Output classes of a segmentation task.

    Attributes:
        name: the spec it came from, normalised (e.g. ``"wt"``).
        classes: output class names excluding background (``["wt"]``; for ``raw`` one per label).
        values: per output class, the raw label values that belong to it.
    """

    name: str
    classes: list[str]
    values: list[list[int]]

    @property
    def binary(self) -> bool:
        return len(self.classes) == 1


def _foreground(info: DatasetInfo) -> dict[str, int]:
    return {n: v for n, v in info.label_names.items() if v != 0}


def _norm(name: str) -> str:
    # "Non-Enhancing Tumor", "non_enhancing", "nonenhancing" all become "nonenhancing tumor"
    return re.sub(r"[\s_\-/]+", " ", name.lower()).replace("non ", "non").replace("not ", "not")


def _is_enhancing(name: str) -> bool:
    n = _norm(name)
    return "enhanc" in n and "nonenhanc" not in n and "notenhanc" not in n


def _is_core_only(name: str) -> bool:
    n = _norm(name)
    return any(k in n for k in ("necro", "nonenhanc", "notenhanc", "core")) or re.search(r"\bncr\b", n) is not None


def _named_values(info: DatasetInfo) -> dict[str, list[int]]:
    """Lower-case label (and nnU-Net region) name -> values, for name lookup."""
    table = {n.lower(): [v] for n, v in info.label_names.items()}
    for n, vals in info.label_regions.items():
        table.setdefault(n.lower(), sorted(set(vals)))
    return table


def _brats_region(info: DatasetInfo, key: str) -> list[int]:
    if info.format == "brats":
        return {"tc": [1, 4], "et": [4]}[key]
    names = _foreground(info)
    regions = info.label_regions  # nnU-Net region entries such as "tumor core": [2, 3]
    enhancing = {v for n, v in names.items() if _is_enhancing(n)}
    enhancing |= {v for n, vals in regions.items() if _is_enhancing(n) for v in vals}
    if not enhancing:
        raise DataError(
            f"target '{key}' cannot be resolved: no label name contains 'enhanc' "
            f"(labels: {', '.join(f'{n}={v}' for n, v in info.label_names.items())}); "
            "give label names or values instead, e.g. '1,3'",
            info.root,
        )
    if key == "et":
        return sorted(enhancing)
    core = set(enhancing) | {v for n, v in names.items() if _is_core_only(n)}
    core |= {v for n, vals in regions.items() if _is_core_only(n) for v in vals}
    return sorted(core)


def _choices(info: DatasetInfo) -> str:
    names = [n for n in _named_values(info) if n not in ("background",)]
    return f"wt, tc, et, raw, label names ({', '.join(names)}) joined by '+', or values like '1,4'"


def resolve_target(info: DatasetInfo, spec: str) -> Target:
    """Turn a target spec (see module doc) into the label values of each output class."""
    text = str(spec).strip()
    key = text.lower()
    fg = _foreground(info)
    if not fg:
        raise DataError("the dataset declares no foreground label", info.root)
    if key == "wt":
        return Target("wt", ["wt"], [sorted(fg.values())])
    if key in ("tc", "et"):
        return Target(key, [key], [_brats_region(info, key)])
    if key == "raw":
        items = sorted(fg.items(), key=lambda kv: kv[1])
        return Target("raw", [n for n, _ in items], [[v] for _, v in items])

    tokens = [t.strip() for t in re.split(r"[+,]", text)]
    if not text or any(not t for t in tokens):
        raise DataError(f"invalid target '{spec}'; valid: {_choices(info)}", info.root)
    table = _named_values(info)
    declared = set(fg.values())
    values: set[int] = set()
    for tok in tokens:
        if re.fullmatch(r"-?\d+", tok):
            v = int(tok)
            if v not in declared:
                raise DataError(
                    f"target '{spec}': label value {v} is not a declared foreground value "
                    f"{sorted(declared)}",
                    info.root,
                )
            values.add(v)
        elif tok.lower() in table and tok.lower() != "background" and 0 not in table[tok.lower()]:
            values.update(table[tok.lower()])
        else:
            raise DataError(f"unknown target '{tok}'; valid: {_choices(info)}", info.root)
    if all(re.fullmatch(r"-?\d+", t) for t in tokens):
        name = "labels_" + "_".join(str(v) for v in sorted(values))
    else:
        name = "+".join(t.lower() for t in tokens)
    return Target(name, [name], [sorted(values)])


def apply_target(label: np.ndarray, target: Target) -> np.ndarray:
    """Map a raw label volume to the target: uint8, 0 = background, k = k-th class (1-based).

    Raw values that belong to no class become background.
    """
    label = np.asarray(label)
    out_dtype = np.uint8
    if len(target.values) > 255:
        raise ValueError("apply_target: more than 255 classes do not fit uint8")
    all_vals = [v for vals in target.values for v in vals]
    if label.size == 0:
        return np.zeros(label.shape, out_dtype)
    if np.issubdtype(label.dtype, np.integer) and int(label.min()) >= 0 and all(v >= 0 for v in all_vals):
        # Lookup table: one gather instead of one np.isin per class.
        size = max(int(label.max()), max(all_vals, default=0)) + 1
        lut = np.zeros(size, out_dtype)
        for k, vals in enumerate(target.values, start=1):
            lut[vals] = k
        return lut[label]
    out = np.zeros(label.shape, out_dtype)
    for k, vals in enumerate(target.values, start=1):
        out[np.isin(label, vals)] = k
    return out
