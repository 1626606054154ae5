"""Flat folders of ``<case>_<modality>.nii.gz`` files: ONE reading of the names, shared by
single-modality prediction (:mod:`.loose`) and fused prediction (:mod:`.multi`), so a folder
names the same cases whichever of the two reads it.

A name ends in a modality when its stem ends in ``_<token>`` or ``-<token>``, where the token is
a known spelling of a contrast (``t2``, ``T2w``, ``t1_ce``, ``t2-flair``, ...) or a requested
modality (``pet``); the longest token wins, so ``case_t2_flair`` is case ``case``, FLAIR (not
case ``case_t2``), and ``case_1_t1_ce`` is case ``case_1``, T1ce; except where that leaves a case
of one file while a shorter token gives a case that other files have (``pat_t2_flair`` beside
``pat_t2_t1`` is FLAIR of ``pat_t2``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from semicml.data.readers.common import MODALITY_ALIASES, match_modality, strip_nifti, visible
from semicml.errors import DataError

__all__ = ["FlatFolder", "nifti_files", "read_flat_folder"]


@dataclass(frozen=True)
class FlatFolder:
    """The NIfTI files of a flat folder: ``named`` as ``(case, modality as written, file)``,
    ``plain`` the files without a modality suffix."""

    root: Path
    named: list[tuple[str, str, Path]]
    plain: list[Path]

    def files_of(self, modality: str) -> dict[str, Path]:
        """``{case: file}`` of every spelling of ``modality`` (t2, T2, t2w); a case with two
        such files is refused, since which one is meant is unknown."""
        out: dict[str, Path] = {}
        for case, suffix, f in self.named:
            try:
                hit = match_modality(modality, [suffix])
            except DataError as err:
                raise DataError(err.problem, self.root) from None
            if hit != suffix:
                continue
            if case in out:
                raise DataError(f"two {modality} files for case {case!r}: {out[case].name} and {f.name}", self.root)
            out[case] = f
        return dict(sorted(out.items()))

    def suffixes(self) -> list[str]:
        return sorted({s for _, s, _ in self.named})


def nifti_files(root: Path) -> list[Path]:
    """The visible NIfTI files directly in ``root``, sorted."""
    return [f for f in visible(list(root.iterdir())) if f.is_file() and strip_nifti(f.name)]


def read_flat_folder(root: Path, files: list[Path], modalities: list[str]) -> FlatFolder:
    """Split each file name of ``files`` (NIfTI files of ``root``) into case and modality."""
    tokens = sorted({t for g in MODALITY_ALIASES for t in g} | {m.lower() for m in modalities}, key=len,
                    reverse=True)
    cuts: list[tuple[str, list[int], Path]] = []  # (stem, suffix lengths that fit, longest first, file)
    for f in files:
        stem = strip_nifti(f.name) or ""
        low = stem.lower()
        cuts.append((stem, [len(t) for t in tokens if len(low) > len(t) + 1 and low.endswith(t)
                            and low[-len(t) - 1] in "_-"], f))
    # The longest spelling wins ("_t2_flair" is FLAIR, not "_flair" of a case "..._t2"), unless it
    # leaves a case no other file has while a shorter one leaves a case that others have
    # (pat_t2_flair beside pat_t2_t1, pat_t2_t2: FLAIR of case "pat_t2").
    first = Counter(stem[: -n[0] - 1] for stem, n, _ in cuts if n)
    named: list[tuple[str, str, Path]] = []
    plain: list[Path] = []
    for stem, lengths, f in cuts:
        if not lengths:
            plain.append(f)
            continue
        cut = lengths[0]
        if first[stem[: -cut - 1]] == 1:
            cut = next((n for n in lengths[1:] if first[stem[: -n - 1]] > 0), cut)
        named.append((stem[: -cut - 1], stem[-cut:], f))
    return FlatFolder(root, named, plain)
