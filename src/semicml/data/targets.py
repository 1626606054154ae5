"""Which label values the networks learn to segment: a small spec language -> :class:`Target`.

Spec grammar (case-insensitive):

* ``wt``   whole tumour = every non-background label (works for any dataset as "foreground").
* ``tc``   tumour core, ``et`` enhancing tumour. BraTS layout: tc = {1, 4}, et = {4} (BraTS 2023
  names: {1, 3}, {3}). nnU-Net / MSD:
  resolved from label names: enhancing = names containing "enhanc" (but not "non-enhanc");
  core = enhancing + names containing "necro", "ncr", "non-enhanc" or "core".
* ``raw``  multi-class: every non-background label its own class, in value order.
* ``edema`` or ``necrosis+enhancing``: one or more label names joined by ``+`` -> one binary class.
* ``1,4`` (or ``1+4``): label values -> one binary class.
* ``regions``: nnU-Net-style region-based target, one sigmoid channel per (overlapping) region:
  BraTS wt, tc, et; an nnU-Net dataset.json with region entries (``"tumor core": [2, 3]``): those,
  in the declared order; otherwise wt, tc, et resolved from the label names as above.
* ``wt,tc,et``: an explicit region list (a comma list naming wt / tc / et or a dataset region;
  each item may itself be a spec such as ``necrosis+enhancing``).

Region targets are stored as a bit mask (bit k = region k, so up to 8 regions in uint8) and
written back as one label map by painting the regions in order, later overwriting earlier
(nnU-Net's rule): each region paints the value that belongs to it and to no later region
(BraTS: wt -> 2, tc -> 1, et -> 4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from semicml.data.readers import DatasetInfo
from semicml.errors import DataError

__all__ = ["KEYWORDS", "MAX_REGIONS", "Target", "apply_target", "in_labelling", "label_map_from_regions",
           "region_masks", "resolve_target"]

KEYWORDS = ("wt", "tc", "et", "raw", "regions")
MAX_REGIONS = 8  # bits of the uint8 store


@dataclass(frozen=True)
class Target:
    """Output classes of a segmentation task.

    Attributes:
        name: the spec it came from, normalised (e.g. ``"wt"``).
        classes: output class names excluding background (``["wt"]``; for ``raw`` one per label).
        values: per output class, the raw label values that belong to it.
        regions: True for a region-based target (classes overlap; one sigmoid channel each).
        paint: regions only: the label value each region paints when written back as one label
            map (in order, later overwriting earlier); None when no label map can hold the regions.
    """

    name: str
    classes: list[str]
    values: list[list[int]]
    regions: bool = False
    paint: list[int] | None = None

    @property
    def binary(self) -> bool:
        return len(self.classes) == 1 and not self.regions

    @property
    def channels(self) -> int:
        """Network output channels: 1 (binary), one per region, or classes + background (raw)."""
        if self.regions or len(self.classes) == 1:
            return len(self.classes)
        return len(self.classes) + 1

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "classes": list(self.classes), "values": [list(v) for v in self.values]}
        if self.regions:  # binary and raw targets keep the store.json they always had
            out.update(regions=True, paint=None if self.paint is None else list(self.paint))
        return out


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
    if info.format == "brats":  # enhancing tumour is 4 (BraTS 2018-2021) or 3 (2023 and later)
        et, ncr = info.label_names["et"], info.label_names["ncr"]
        return {"tc": sorted([ncr, et]), "et": [et]}[key]
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
    return f"wt, tc, et, raw, regions, a region list like 'wt,tc,et', label names ({', '.join(names)}) joined by '+', or values like '1,4'"


def paint_values(values: list[list[int]], given: list[int] | None = None) -> list[int] | None:
    """Per region, the label value it paints (see module doc; ``given``: the dataset's own, e.g.
    nnU-Net's ``regions_class_order``); None unless painting the regions in order gives back, for
    every raw value, exactly the regions it belongs to."""
    paint = list(given) if given is not None else []
    for k, vals in enumerate(values if given is None else []):
        later = {v for other in values[k + 1 :] for v in other}
        own = sorted(set(vals) - later)
        if not own:
            return None
        paint.append(own[0])
    for v in {v for vals in values for v in vals}:
        member = [k for k, vals in enumerate(values) if v in vals]
        painted = paint[member[-1]]
        if [k for k, vals in enumerate(values) if painted in vals] != member:
            return None
    return paint


def _region_target(info: DatasetInfo, name: str, items: list[str], paint: list[int] | None = None) -> Target:
    if len(items) > MAX_REGIONS:
        raise DataError(f"target '{name}': at most {MAX_REGIONS} regions, got {len(items)}", info.root)
    parts = [resolve_target(info, item) for item in items]
    # Region names become file and column names: "whole tumor" -> "whole_tumor".
    classes = [re.sub(r"[^a-z0-9+]+", "_", p.name.lower()).strip("_") for p in parts]
    if len(set(classes)) != len(classes):
        raise DataError(f"target '{name}': a region is listed twice ({', '.join(classes)})", info.root)
    values = [p.values[0] for p in parts]
    return Target(name, classes, values, regions=True, paint=paint_values(values, paint))


def _is_region_list(info: DatasetInfo, tokens: list[str]) -> bool:
    """A comma list is a region list when one item is wt / tc / et or a dataset region
    (``1,4`` and ``edema,necrosis`` stay one binary class, as before)."""
    region_names = {n.lower() for n in info.label_regions}
    return any(t.lower() in ("wt", "tc", "et") or t.lower() in region_names for t in tokens)


def resolve_target(info: DatasetInfo, spec: str) -> Target:
    """Turn a target spec (see module doc) into the label values of each output class."""
    text = str(spec).strip()
    key = text.lower()
    fg = _foreground(info)
    if not fg:
        raise DataError("the dataset declares no foreground label", info.root)
    if key == "regions":
        if info.format != "brats" and info.label_regions:
            return _region_target(info, "regions", list(info.label_regions), info.region_paint)
        return _region_target(info, "regions", ["wt", "tc", "et"])
    if "," in text:
        tokens = [t.strip() for t in text.split(",")]
        if all(tokens) and _is_region_list(info, tokens):
            return _region_target(info, ",".join(t.lower() for t in tokens), tokens)
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
    """Map a raw label volume to the target: uint8, 0 = background, k = k-th class (1-based);
    for a region target the bit mask ``sum_k 2^k [voxel in region k]``.

    Raw values that belong to no class become background.
    """
    label = np.asarray(label)
    out_dtype = np.uint8
    if target.regions:
        if len(target.values) > MAX_REGIONS:
            raise ValueError(f"apply_target: more than {MAX_REGIONS} regions do not fit uint8")
        out = np.zeros(label.shape, out_dtype)
        for k, vals in enumerate(target.values):
            out |= np.isin(label, vals).astype(out_dtype) << k
        return out
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


def region_masks(bits: np.ndarray, n_regions: int) -> np.ndarray:
    """Stored region bit mask (any shape) -> ``(n_regions, *shape)`` bool, one mask per region."""
    bits = np.asarray(bits).astype(np.uint8, copy=False)
    return np.stack([(bits >> k) & 1 for k in range(n_regions)]).astype(bool)


def label_map_from_regions(masks: np.ndarray, target: Target) -> np.ndarray:
    """``(R, *shape)`` region masks -> one label map: region k paints ``target.paint[k]``, in
    order, later overwriting earlier (nnU-Net's rule; BraTS: 2 where wt, 1 where tc, 4 where et)."""
    if not target.regions or target.paint is None:
        raise ValueError(f"target '{target.name}' cannot be written as one label map; write one mask per region")
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[0] != len(target.classes):
        raise ValueError(f"label_map_from_regions: {masks.shape[0]} masks for {len(target.classes)} regions")
    dtype = np.uint8 if max(target.paint) < 256 else np.int16
    out = np.zeros(masks.shape[1:], dtype)
    for k, value in enumerate(target.paint):
        out[masks[k]] = value
    return out


def in_labelling(target: Target, info: DatasetInfo | None) -> Target:
    """``target`` (a network's regions) with the label values of the dataset ``info``, when the
    same region names resolve there to other values (BraTS 2018 paints enhancing tumour 4, BraTS
    2023 paints 3); unchanged when ``info`` is None, the names do not resolve, or nothing differs."""
    if info is None or not target.regions:
        return target
    try:
        theirs = resolve_target(info, target.name)
    except DataError:
        return target
    if theirs.classes != target.classes or theirs.paint is None or theirs.values == target.values:
        return target
    return replace(target, values=theirs.values, paint=theirs.paint)
