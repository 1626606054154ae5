"""Readers (BraTS, nnU-Net, MSD, single modality), modality aliases, targets, and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from conftest import (
    PHANTOM_CASES,
    PHANTOM_SHAPE,
    PHANTOM_SPACING,
    PHANTOM_TO_BRATS,
    PHANTOM_TO_MSD,
    copy_phantom,
    make_brats_fixture,
    make_msd_fixture,
    phantom_arrays,
    requires_brats,
    save_nifti,
)

from semicml.data.case import Case
from semicml.data.readers import (
    AFFINE_TOLERANCE_MM,
    DatasetInfo,
    detect_format,
    open_dataset,
    read_case,
    read_single_modality,
    resolve_modalities,
)
from semicml.data.targets import Target, apply_target, resolve_target
from semicml.errors import ConfigError, DataError, SemicmlError


@pytest.fixture(scope="module")
def brats_root(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_brats_fixture(phantom_root, tmp_path_factory.mktemp("brats"), unlabeled=1)


@pytest.fixture(scope="module")
def msd_root(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_msd_fixture(phantom_root, tmp_path_factory.mktemp("msd"), test_cases=1)


def remap(label: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(label)
    for k, v in table.items():
        out[label == k] = v
    return out


def info_with(modalities: list[str], labels: dict[str, int] | None = None, fmt: str = "nnunet") -> DatasetInfo:
    labels = labels or {"background": 0, "tumour": 1}
    return DatasetInfo(root=Path("/data/x"), format=fmt, modalities=modalities, label_names=labels,
                       case_ids=[], labeled={})


# --------------------------------------------------------------------------------------------
# nnU-Net
# --------------------------------------------------------------------------------------------


def test_nnunet_phantom_reads_every_case_like_nibabel(phantom_root: Path) -> None:
    info = open_dataset(phantom_root)
    assert info.format == "nnunet" == detect_format(phantom_root)
    assert info.modalities == ["T2", "T1ce"]
    assert info.label_names == {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}
    assert info.case_ids == [f"phantom_{k:03d}" for k in range(PHANTOM_CASES)]
    assert all(info.labeled.values())
    for cid in info.case_ids[:2]:
        case = read_case(info, cid, ["T2", "T1ce"])
        ref = phantom_arrays(phantom_root, cid)
        assert isinstance(case, Case) and case.case_id == cid
        assert case.modalities == ["T2", "T1ce"] and case.shape == PHANTOM_SHAPE
        for m in ("T2", "T1ce"):
            assert case.images[m].dtype == np.float32
            np.testing.assert_array_equal(case.images[m], ref[m])
        assert case.label is not None and case.label.dtype == np.uint8
        np.testing.assert_array_equal(case.label, ref["label"])
        np.testing.assert_allclose(case.affine, ref["affine"])
        assert case.spacing == pytest.approx(PHANTOM_SPACING)
        assert case.sources["T1ce"].name == f"{cid}_0001.nii.gz"
        assert case.sources["label"].name == f"{cid}.nii.gz"


def test_nnunet_maps_channels_by_name_not_position(phantom_root: Path, tmp_path: Path) -> None:
    root = copy_phantom(phantom_root, tmp_path, cases=2)
    # Swap the channel ids: file _0000 is now T1ce and _0001 is T2.
    for f in sorted((root / "imagesTr").glob("*_0000.nii.gz")):
        other = f.with_name(f.name.replace("_0000", "_0001"))
        tmp = f.with_name("swap.tmp")
        f.rename(tmp), other.rename(f), tmp.rename(other)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1ce", "1": "T2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    info = open_dataset(root)
    assert info.modalities == ["T1ce", "T2"]
    case = read_case(info, "phantom_001", ["t2"])  # case-insensitive name
    ref = phantom_arrays(phantom_root, "phantom_001")
    assert list(case.images) == ["T2"]
    np.testing.assert_array_equal(case.images["T2"], ref["T2"])
    assert case.sources["T2"].name == "phantom_001_0001.nii.gz"


def test_nnunet_unlabelled_cases_in_imagesTs_and_imagesTr(phantom_root: Path, tmp_path: Path) -> None:
    root = copy_phantom(phantom_root, tmp_path, cases=4)
    (root / "imagesTs").mkdir()
    for f in (root / "imagesTr").glob("phantom_000_*.nii.gz"):
        f.rename(root / "imagesTs" / f.name)
    (root / "labelsTr" / "phantom_000.nii.gz").unlink()
    (root / "labelsTr" / "phantom_002.nii.gz").unlink()  # in imagesTr, no label: unlabelled
    info = open_dataset(root)
    assert info.case_ids == ["phantom_001", "phantom_003", "phantom_000", "phantom_002"]
    assert info.labeled == {"phantom_000": False, "phantom_001": True, "phantom_002": False, "phantom_003": True}
    assert info.unlabeled_ids == ["phantom_000", "phantom_002"]
    unl = read_case(info, "phantom_000", ["T2", "T1ce"])
    assert unl.label is None and unl.sources["T2"].parent.name == "imagesTs"
    np.testing.assert_array_equal(unl.images["T1ce"], phantom_arrays(phantom_root, "phantom_000")["T1ce"])
    assert read_case(info, "phantom_001", ["T2"], with_label=False).label is None
    # For prediction, imagesTs is preferred over imagesTr.
    pairs = read_single_modality(root, "t1gd")
    assert [cid for cid, _ in pairs] == ["phantom_000"]


def test_nnunet_region_based_labels(phantom_root: Path, tmp_path: Path) -> None:
    root = copy_phantom(phantom_root, tmp_path, cases=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": 3}
    meta["regions_class_order"] = [1, 2, 3]
    (root / "dataset.json").write_text(json.dumps(meta))
    info = open_dataset(root)
    assert sorted(info.label_names.values()) == [0, 1, 2, 3]
    assert resolve_target(info, "et").values == [[3]]
    assert resolve_target(info, "tc").values == [[1, 3]]
    assert resolve_target(info, "Tumor Core").values == [[1, 3]]
    read_case(info, "phantom_000", ["T2"])  # label values 1..3 are all declared


# --------------------------------------------------------------------------------------------
# BraTS and MSD
# --------------------------------------------------------------------------------------------


def test_brats_layout(brats_root: Path, phantom_root: Path) -> None:
    info = open_dataset(brats_root)
    assert info.format == "brats" == detect_format(brats_root)
    assert info.modalities == ["t1ce", "t2"]  # canonical BraTS order t1, t1ce, t2, flair
    assert info.label_names == {"background": 0, "ncr": 1, "ed": 2, "et": 4}
    last = f"phantom_{PHANTOM_CASES - 1:03d}"
    assert info.case_ids[-1] == last and info.labeled[last] is False
    assert sum(info.labeled.values()) == PHANTOM_CASES - 1
    case = read_case(info, "phantom_002", ["T2", "t1gd"])  # user spellings, aliases
    ref = phantom_arrays(phantom_root, "phantom_002")
    assert list(case.images) == ["t2", "t1ce"]
    np.testing.assert_array_equal(case.images["t2"], ref["T2"])
    np.testing.assert_array_equal(case.images["t1ce"], ref["T1ce"])
    np.testing.assert_array_equal(case.label, remap(ref["label"], PHANTOM_TO_BRATS))
    assert set(np.unique(case.label)) <= {0, 1, 2, 4}
    assert read_case(info, last, ["t2"]).label is None


def test_brats_accepts_uncompressed_nii(brats_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(brats_root / "phantom_000", root / "phantom_000")
    src = root / "phantom_000" / "phantom_000_t2.nii.gz"
    img = nib.load(str(src))
    save_nifti(np.asarray(img.dataobj), img.affine, src.with_name("phantom_000_t2.nii"))
    src.unlink()
    case = read_case(open_dataset(root), "phantom_000", ["t2", "t1ce"])
    assert case.sources["t2"].suffix == ".nii"
    assert case.images["t2"].shape == PHANTOM_SHAPE


def test_brats2023_naming(brats_root: Path, phantom_root: Path, tmp_path: Path) -> None:
    # BraTS 2023: "-" separator, t2w/t1c/seg suffixes, and enhancing tumour labelled 3, not 4.
    case_dir = tmp_path / "b23" / "BraTS-GLI-00000-000"
    case_dir.mkdir(parents=True)
    src = brats_root / "phantom_000"
    for old, new in (("t2", "t2w"), ("t1ce", "t1c")):
        shutil.copyfile(src / f"phantom_000_{old}.nii.gz", case_dir / f"BraTS-GLI-00000-000-{new}.nii.gz")
    seg = nib.load(str(src / "phantom_000_seg.nii.gz"))
    label = remap(np.asarray(seg.dataobj), {1: 1, 2: 2, 4: 3})
    save_nifti(label, seg.affine, case_dir / "BraTS-GLI-00000-000-seg.nii.gz")
    info = open_dataset(tmp_path / "b23")
    assert info.format == "brats" and info.modalities == ["t1c", "t2w"]
    assert info.labeled == {"BraTS-GLI-00000-000": True}
    assert info.label_names == {"background": 0, "ncr": 1, "ed": 2, "et": 3}
    case = read_case(info, "BraTS-GLI-00000-000", resolve_modalities(info, ["T2", "T1ce"]))
    np.testing.assert_array_equal(case.images["t2w"], phantom_arrays(phantom_root, "phantom_000")["T2"])
    assert set(np.unique(case.label)) == {0, 1, 2, 3}
    assert resolve_target(info, "tc").values == [[1, 3]] and resolve_target(info, "et").values == [[3]]
    regions = resolve_target(info, "regions")
    assert regions.values == [[1, 2, 3], [1, 3], [3]] and regions.paint == [2, 1, 3]
    # the 2018-2021 convention's 4 is not a 2023 label: one line naming the file
    save_nifti(remap(label, {1: 1, 2: 2, 3: 4}), seg.affine, case_dir / "BraTS-GLI-00000-000-seg.nii.gz")
    with pytest.raises(DataError, match=r"-seg\.nii\.gz.*label values \[4\]"):
        read_case(open_dataset(tmp_path / "b23"), "BraTS-GLI-00000-000", ["t2w"])


@pytest.mark.parametrize(("layout", "et"), [
    ({"p1/p1_t1.nii.gz", "p1/p1_t1ce.nii.gz", "p1/p1_t2.nii.gz", "p1/p1_flair.nii.gz"}, 4),  # BraTS 2018
    ({"a/a-t1n.nii.gz", "a/a-t1c.nii.gz", "a/a-t2w.nii.gz", "a/a-t2f.nii.gz", "a/a-seg.nii.gz"}, 3),
    ({"a/a-t1c.nii.gz", "a/a-t2w.nii.gz"}, 3),
    ({"a-t1c.nii.gz", "a-t2w.nii.gz", "b-t1c.nii.gz", "b-t2w.nii.gz"}, 3),  # a flat folder says the same
    ({"a-t2w.nii.gz", "b-t2w.nii.gz"}, None),  # T2w alone is BIDS too
    ({"p1/p1_t2.nii.gz", "p1/p1_flair.nii.gz"}, None),  # everyone's names
    ({"a/a_t2.nii.gz", "a/a_t1ce.nii.gz", "b/b-t2w.nii.gz", "b/b-t1c.nii.gz"}, None),  # mixed: no refusal
    ({"sub-01/sub-01_T1w.nii.gz", "sub-01/sub-01_T2w.nii.gz", "sub-01/sub-01_FLAIR.nii.gz"}, None),  # BIDS
])
def test_input_labelling_only_from_names_that_leave_no_doubt(tmp_path: Path, layout: set[str], et) -> None:
    """Which labelling a prediction input follows (predict paints region maps in it): said by BraTS
    names that only one convention uses, whatever the layout; otherwise nothing, and nothing refused."""
    from semicml.data.readers import input_labelling

    root = tmp_path / "in"
    for name in layout:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(root / name))
    tops = {n.split("/")[0] for n in layout}
    one_case = len(tops) == 1 and all("/" in n for n in layout)
    given = root / tops.pop() if one_case else root  # one case folder is given as itself
    info = input_labelling(given)
    assert (info.label_names["et"] if info is not None else None) == et
    assert input_labelling(next(root.rglob("*.nii.gz"))) is None  # a single file does not say


def test_brats_mixing_2018_and_2023_names_is_refused(brats_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "mix"
    shutil.copytree(brats_root / "phantom_000", root / "phantom_000")
    case_dir = root / "BraTS-GLI-00001-000"
    case_dir.mkdir()
    shutil.copyfile(brats_root / "phantom_001" / "phantom_001_t2.nii.gz", case_dir / "BraTS-GLI-00001-000-t2w.nii.gz")
    with pytest.raises(DataError, match=r"mixes BraTS 2018-2021 file names \(t1ce, t2\) and BraTS 2023 names \(t2w\)"):
        open_dataset(root)


def test_msd_layout_4d_channels_by_name(msd_root: Path, phantom_root: Path) -> None:
    info = open_dataset(msd_root)
    assert info.format == "msd"
    assert info.modalities == ["t1gd", "T2w"]
    assert info.label_names == {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    assert resolve_modalities(info, ["t2", "T1CE"]) == ["T2w", "t1gd"]
    case = read_case(info, "phantom_001", ["t2", "t1ce"])
    ref = phantom_arrays(phantom_root, "phantom_001")
    assert list(case.images) == ["T2w", "t1gd"] and case.shape == PHANTOM_SHAPE
    np.testing.assert_array_equal(case.images["T2w"], ref["T2"])
    np.testing.assert_array_equal(case.images["t1gd"], ref["T1ce"])
    np.testing.assert_array_equal(case.label, remap(ref["label"], PHANTOM_TO_MSD))
    assert len(case.header.get_data_shape()) == 3  # 4D header reduced for writing predictions
    test_id = f"phantom_{PHANTOM_CASES - 1:03d}"
    assert info.case_ids[-1] == test_id and not info.labeled[test_id]
    assert read_case(info, test_id, ["T2w"]).label is None


# --------------------------------------------------------------------------------------------
# modality names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "requested", "expected"),
    [
        (["T2", "T1ce"], ["t1gd", "T2W"], ["T1ce", "T2"]),
        (["t1", "t1ce", "t2", "flair"], ["T1-CE", "t2-flair", "T1w"], ["t1ce", "flair", "t1"]),
        (["FLAIR", "T1w", "t1gd", "T2w"], ["t1c", "t2"], ["t1gd", "T2w"]),
        (["t1c", "T1ce"], ["t1c"], ["t1c"]),  # exact match wins over an alias
        (["t1c", "T1ce"], ["T1CE"], ["T1ce"]),  # case-insensitive match wins over an alias
    ],
)
def test_resolve_modalities(available: list[str], requested: list[str], expected: list[str]) -> None:
    assert resolve_modalities(info_with(available), requested) == expected


@pytest.mark.parametrize(
    ("available", "requested", "keyword"),
    [
        (["T2", "T1ce"], ["pd"], "available: T2, T1ce"),
        (["T2", "T1ce"], ["t2", "T2W"], "twice"),
        (["t1c", "t1gd"], ["t1ce"], "ambiguous"),
        (["T2"], [], "no modality"),
    ],
)
def test_resolve_modalities_errors(available: list[str], requested: list[str], keyword: str) -> None:
    with pytest.raises(DataError) as exc:
        resolve_modalities(info_with(available), requested)
    assert keyword in str(exc.value) and "/data/x" in str(exc.value)


# --------------------------------------------------------------------------------------------
# read_single_modality
# --------------------------------------------------------------------------------------------


def _plain_folder(phantom_root: Path, tmp: Path) -> Path:
    root = tmp / "plain"
    root.mkdir()
    for k in range(2):
        shutil.copyfile(phantom_root / "imagesTr" / f"phantom_00{k}_0000.nii.gz", root / f"pat{k}.nii.gz")
    return root


def _flat_suffixed(phantom_root: Path, tmp: Path) -> Path:
    root = tmp / "flat"
    root.mkdir()
    for k in range(2):
        shutil.copyfile(phantom_root / "imagesTr" / f"phantom_00{k}_0000.nii.gz", root / f"pat{k}_t2.nii.gz")
        shutil.copyfile(phantom_root / "imagesTr" / f"phantom_00{k}_0001.nii.gz", root / f"pat{k}_t1ce.nii.gz")
    return root


@pytest.mark.parametrize(
    ("layout", "expected_ids"),
    [
        ("brats", [f"phantom_{k:03d}" for k in range(PHANTOM_CASES)]),
        ("brats_case", ["phantom_003"]),
        ("nnunet", [f"phantom_{k:03d}" for k in range(PHANTOM_CASES)]),
        ("msd", [f"phantom_{PHANTOM_CASES - 1:03d}"]),
        ("plain", ["pat0", "pat1"]),
        ("flat", ["pat0", "pat1"]),
        ("file", ["phantom_004"]),  # nnU-Net's only channel _0000: named as its case
    ],
)
def test_read_single_modality_layouts(layout: str, expected_ids: list[str], phantom_root: Path,
                                      brats_root: Path, msd_root: Path, tmp_path: Path) -> None:
    path = {
        "brats": lambda: brats_root, "brats_case": lambda: brats_root / "phantom_003",
        "nnunet": lambda: phantom_root, "msd": lambda: msd_root,
        "plain": lambda: _plain_folder(phantom_root, tmp_path),
        "flat": lambda: _flat_suffixed(phantom_root, tmp_path),
        "file": lambda: phantom_root / "imagesTr" / "phantom_004_0000.nii.gz",
    }[layout]()
    pairs = read_single_modality(path, "T2")
    assert [cid for cid, _ in pairs] == expected_ids
    cid, load = pairs[-1]
    case = load()
    assert case.case_id == cid and case.label is None and list(case.images) == ["T2"]
    source_case = {"pat1": "phantom_001"}.get(cid, cid)
    np.testing.assert_array_equal(case.images["T2"], phantom_arrays(phantom_root, source_case)["T2"])
    assert len(case.header.get_data_shape()) == 3


def test_flat_folder_takes_every_spelling_of_the_modality(phantom_root: Path, tmp_path: Path) -> None:
    """t2 / T2 / t2w files are all T2 cases (none dropped); another modality of a named case is
    skipped; a file with no modality suffix beside named ones is refused, not guessed."""
    root = tmp_path / "flat"
    root.mkdir()
    img = phantom_root / "imagesTr"
    for case, name in (("a", "a_t2"), ("b", "b_T2"), ("c", "c-t2w")):
        shutil.copyfile(img / "phantom_000_0000.nii.gz", root / f"{name}.nii.gz")
    shutil.copyfile(img / "phantom_000_0001.nii.gz", root / "a_t1ce.nii.gz")
    shutil.copyfile(img / "phantom_000_0001.nii.gz", root / "a_pet.nii.gz")  # an unknown modality of case a
    assert [c for c, _ in read_single_modality(root, "T2")] == ["a", "b", "c"]
    assert [c for c, _ in read_single_modality(root, "t1ce")] == ["a"]
    shutil.copyfile(img / "phantom_000_0000.nii.gz", root / "d.nii.gz")
    with pytest.raises(DataError, match=r"flat: mixes files named <case>_<modality> .* without a modality suffix "
                                        r"\(d\.nii\.gz\)"):
        read_single_modality(root, "T2")
    (root / "d.nii.gz").unlink()
    shutil.copyfile(img / "phantom_000_0000.nii.gz", root / "a_T2W.nii.gz")
    with pytest.raises(DataError, match=r"two T2 files for case 'a'"):
        read_single_modality(root, "T2")


def test_nnunet_image_folder_given_directly_takes_its_channel(phantom_root: Path, tmp_path: Path) -> None:
    """imagesTr of an nnU-Net dataset: the requested channel only (dataset.json one level up says
    which), named by case; the same files without dataset.json are refused, not all read as T2."""
    root = copy_phantom(phantom_root, tmp_path, cases=2)
    pairs = read_single_modality(root / "imagesTr", "T1ce")
    assert [c for c, _ in pairs] == ["phantom_000", "phantom_001"]
    np.testing.assert_array_equal(pairs[1][1]().images["T1ce"], phantom_arrays(phantom_root, "phantom_001")["T1ce"])
    loose = tmp_path / "loose"
    shutil.copytree(root / "imagesTr", loose)
    with pytest.raises(DataError, match=r"loose: holds nnU-Net channel files \(_0000, _0001 for every case\)"):
        read_single_modality(loose, "T2")
    for f in loose.glob("*_0001.nii.gz"):
        f.unlink()
    assert [c for c, _ in read_single_modality(loose, "T2")] == ["phantom_000", "phantom_001"]  # one channel


def test_msd_image_folder_given_directly_takes_its_channel(msd_root: Path, phantom_root: Path) -> None:
    pairs = read_single_modality(msd_root / "imagesTr", "T1ce")
    assert pairs and all((msd_root / "imagesTr" / f"{c}.nii.gz").is_file() for c, _ in pairs)
    cid, load = pairs[0]
    np.testing.assert_array_equal(load().images["T1ce"], phantom_arrays(phantom_root, cid)["T1ce"])


def test_read_single_modality_missing_modality(brats_root: Path, phantom_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"phantom_000.*'flair' not found; available: t1ce, t2"):
        read_single_modality(brats_root, "flair")
    with pytest.raises(DataError, match=r"dataset\.json.*'flair' not found"):
        read_single_modality(phantom_root, "flair")
    with pytest.raises(DataError, match=r"flat.*'flair' not found"):
        read_single_modality(_flat_suffixed(phantom_root, tmp_path), "flair")
    with pytest.raises(DataError, match="does not exist"):
        read_single_modality(tmp_path / "nope", "t2")


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------


def _rewrite(path: Path, data_fn: Callable[[np.ndarray], np.ndarray] | None = None,
             affine_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    affine = img.affine.copy()
    data = data_fn(data) if data_fn else data
    affine = affine_fn(affine) if affine_fn else affine
    path.unlink()
    save_nifti(data, affine, path)


def _with_nan(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[10, 10, 5] = value
        return a
    return f


def _shifted(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0, 3] += 10 * AFFINE_TOLERANCE_MM
    return a


def _scramble_middle(path: Path) -> None:
    # Valid gzip header, damaged deflate stream: fails inside zlib (or on the CRC check).
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(v ^ 0xFF for v in raw[mid : mid + 64])
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _truncate_uncompressed(path: Path) -> Path:
    img = nib.load(str(path))
    target = path.with_name(path.name[: -len(".gz")])
    save_nifti(np.asarray(img.dataobj), img.affine, target)
    path.unlink()
    _truncate(target)
    return target


def _label_value(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[a == 2] = 3  # 3 is not a BraTS label
    return a


# Each: (id, mutate(case folder) -> None, modalities to read, offending file name, keyword)
BRATS_BAD = [
    ("missing_modality", lambda d: (d / "phantom_000_t1ce.nii.gz").unlink(), "phantom_000_t1ce.nii.gz", "missing"),
    ("shape_image", lambda d: _rewrite(d / "phantom_000_t1ce.nii.gz", lambda a: a[:-2]), "phantom_000_t1ce.nii.gz", "shape"),
    ("shape_label", lambda d: _rewrite(d / "phantom_000_seg.nii.gz", lambda a: a[:, :, :-1]), "phantom_000_seg.nii.gz", "shape"),
    ("affine_image", lambda d: _rewrite(d / "phantom_000_t1ce.nii.gz", affine_fn=_shifted), "phantom_000_t1ce.nii.gz", "affine"),
    ("affine_label", lambda d: _rewrite(d / "phantom_000_seg.nii.gz", affine_fn=_shifted), "phantom_000_seg.nii.gz", "affine"),
    ("nan", lambda d: _rewrite(d / "phantom_000_t2.nii.gz", _with_nan(np.nan)), "phantom_000_t2.nii.gz", "NaN"),
    ("inf", lambda d: _rewrite(d / "phantom_000_t1ce.nii.gz", _with_nan(-np.inf)), "phantom_000_t1ce.nii.gz", "1 Inf"),
    ("corrupt", lambda d: (d / "phantom_000_t2.nii.gz").write_bytes(b"not a nifti" * 50), "phantom_000_t2.nii.gz", "corrupt"),
    ("corrupt_gzip_body", lambda d: _scramble_middle(d / "phantom_000_t2.nii.gz"), "phantom_000_t2.nii.gz", "corrupt"),
    ("truncated_gz", lambda d: _truncate(d / "phantom_000_t1ce.nii.gz"), "phantom_000_t1ce.nii.gz", "truncated"),
    ("truncated_nii", lambda d: _truncate_uncompressed(d / "phantom_000_t2.nii.gz"), "phantom_000_t2.nii", "truncated"),
    ("label_value", lambda d: _rewrite(d / "phantom_000_seg.nii.gz", _label_value), "phantom_000_seg.nii.gz", "label values [3]"),
    ("label_fraction", lambda d: _rewrite(d / "phantom_000_seg.nii.gz", lambda a: a * np.float32(0.5)),
     "phantom_000_seg.nii.gz", "non-integer"),
    ("image_4d", lambda d: _rewrite(d / "phantom_000_t2.nii.gz", lambda a: np.stack([a, a], -1)), "phantom_000_t2.nii.gz", "4D"),
    ("image_2d", lambda d: _rewrite(d / "phantom_000_t2.nii.gz", lambda a: a[:, :, 0]), "phantom_000_t2.nii.gz", "2D"),
]


@pytest.mark.parametrize(("mutate", "bad_file", "keyword"), [b[1:] for b in BRATS_BAD], ids=[b[0] for b in BRATS_BAD])
def test_bad_brats_case(mutate: Callable[[Path], None], bad_file: str, keyword: str,
                        brats_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "brats"
    for cid in ("phantom_000", "phantom_001"):
        shutil.copytree(brats_root / cid, root / cid)
    mutate(root / "phantom_000")
    info = open_dataset(root)
    read_case(info, "phantom_001", ["t2", "t1ce"])  # the intact case still reads
    with pytest.raises(DataError) as exc:
        read_case(info, "phantom_000", ["t2", "t1ce"])
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(str(root / "phantom_000" / bad_file) + ": "), msg
    assert keyword.lower() in msg.lower(), msg


def _edit_json(root: Path, fn: Callable[[dict], object]) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    fn(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def _msd_3d(root: Path) -> None:
    _rewrite(root / "imagesTr" / "phantom_000.nii.gz", lambda a: a[..., 0])


def _msd_extra_channel(root: Path) -> None:
    _edit_json(root, lambda m: m["modality"].update({"2": "FLAIR"}))


# Dataset-level problems: (id, layout, mutate(root), action(root), offending file (relative), keyword)
DATASET_BAD = [
    ("nnunet_missing_channel_names", "nnunet", lambda r: _edit_json(r, lambda m: m.pop("channel_names")),
     lambda r: open_dataset(r), "dataset.json", "channel_names"),
    ("nnunet_missing_channel_names_fmt", "nnunet", lambda r: _edit_json(r, lambda m: m.pop("channel_names")),
     lambda r: open_dataset(r, "nnunet"), "dataset.json", "missing required field 'channel_names'"),
    ("nnunet_missing_file_ending", "nnunet", lambda r: _edit_json(r, lambda m: m.pop("file_ending")),
     lambda r: open_dataset(r), "dataset.json", "missing required field 'file_ending'"),
    ("nnunet_missing_labels", "nnunet", lambda r: _edit_json(r, lambda m: m.pop("labels")),
     lambda r: open_dataset(r), "dataset.json", "missing required field 'labels'"),
    ("msd_missing_training", "msd", lambda r: _edit_json(r, lambda m: m.pop("training")),
     lambda r: open_dataset(r), "dataset.json", "missing required field 'training'"),
    ("invalid_json", "nnunet", lambda r: (r / "dataset.json").write_text('{"channel_names": {"0": "T2"'),
     lambda r: open_dataset(r), "dataset.json", "not valid JSON"),
    ("nnunet_stray_label", "nnunet", lambda r: shutil.copyfile(r / "labelsTr" / "phantom_000.nii.gz",
                                                               r / "labelsTr" / "ghost.nii.gz"),
     lambda r: open_dataset(r), "labelsTr/ghost.nii.gz", "no matching images"),
    ("nnunet_missing_channel_file", "nnunet", lambda r: (r / "imagesTr" / "phantom_000_0001.nii.gz").unlink(),
     lambda r: read_case(open_dataset(r), "phantom_000", ["T2", "T1ce"]), "imagesTr/phantom_000_0001.nii.gz", "missing"),
    ("unknown_modality", "nnunet", lambda r: None,
     lambda r: resolve_modalities(open_dataset(r), ["T2", "DWI"]), "", "unknown modality 'DWI'; available: T2, T1ce"),
    ("unknown_modality_read", "brats", lambda r: None,
     lambda r: read_case(open_dataset(r), "phantom_000", ["flair"]), "", "unknown modality 'flair'"),
    ("unknown_format", "nnunet", lambda r: None, lambda r: open_dataset(r, "dicom"), "", "unknown dataset format"),
    ("unknown_case", "nnunet", lambda r: None,
     lambda r: read_case(open_dataset(r), "nobody", ["T2"]), "", "unknown case 'nobody'"),
    ("msd_3d_image", "msd", _msd_3d,
     lambda r: read_case(open_dataset(r), "phantom_000", ["T2w"]), "imagesTr/phantom_000.nii.gz", "4D"),
    ("msd_channel_out_of_range", "msd", _msd_extra_channel,
     lambda r: read_case(open_dataset(r), "phantom_000", ["flair"]), "imagesTr/phantom_000.nii.gz", "out of range"),
    ("empty_folder", "empty", lambda r: None, lambda r: open_dataset(r), "", "empty folder"),
    ("no_cases", "empty", lambda r: (r / "notes.txt").write_text("hi"), lambda r: open_dataset(r), "", "no cases found"),
    ("empty_brats_fmt", "empty", lambda r: None, lambda r: open_dataset(r, "brats"), "", "no cases found"),
    ("root_missing", "missing", lambda r: None, lambda r: open_dataset(r), "", "does not exist"),
]


@pytest.mark.parametrize(("layout", "mutate", "action", "bad_file", "keyword"), [b[1:] for b in DATASET_BAD],
                         ids=[b[0] for b in DATASET_BAD])
def test_bad_dataset(layout: str, mutate: Callable[[Path], None], action: Callable[[Path], object],
                     bad_file: str, keyword: str, phantom_root: Path, tmp_path: Path) -> None:
    if layout == "nnunet":
        root = copy_phantom(phantom_root, tmp_path, cases=2)
    elif layout == "msd":
        root = make_msd_fixture(phantom_root, tmp_path, cases=2, test_cases=0)
    elif layout == "brats":
        root = make_brats_fixture(phantom_root, tmp_path, cases=2)
    else:
        root = tmp_path / "data"
        if layout == "empty":
            root.mkdir()
    mutate(root)
    with pytest.raises(DataError) as exc:
        action(root)
    msg = str(exc.value)
    expected_path = root / bad_file if bad_file else root
    assert msg.startswith(f"{expected_path}: "), msg
    assert keyword in msg and "\n" not in msg


def test_errors_are_semicml_errors() -> None:
    assert issubclass(DataError, SemicmlError) and not issubclass(DataError, ConfigError)


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "classes", "values"),
    [
        ("wt", ["wt"], [[1, 2, 4]]),
        ("WT", ["wt"], [[1, 2, 4]]),
        ("tc", ["tc"], [[1, 4]]),
        ("et", ["et"], [[4]]),
        ("raw", ["ncr", "ed", "et"], [[1], [2], [4]]),
        ("ed", ["ed"], [[2]]),  # a label name
        ("ED+ncr", ["ed+ncr"], [[1, 2]]),
        ("1,4", ["labels_1_4"], [[1, 4]]),
        ("4+2", ["labels_2_4"], [[2, 4]]),
    ],
)
def test_resolve_target_brats(spec: str, classes: list[str], values: list[list[int]], brats_root: Path) -> None:
    target = resolve_target(open_dataset(brats_root), spec)
    assert target.classes == classes and target.values == values
    assert target.binary == (len(classes) == 1)


@pytest.mark.parametrize(
    ("fixture", "tc", "et"),
    [("phantom_root", [1, 3], [3]), ("msd_root", [2, 3], [3])],  # MSD: "non-enhancing" is core, not enhancing
)
def test_resolve_target_by_label_names(fixture: str, tc: list[int], et: list[int], request: pytest.FixtureRequest) -> None:
    info = open_dataset(request.getfixturevalue(fixture))
    assert resolve_target(info, "tc").values == [tc]
    assert resolve_target(info, "et").values == [et]
    assert resolve_target(info, "wt").values == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("spec", "keyword"),
    [("tumour_core", "unknown target 'tumour_core'; valid: wt, tc, et, raw"), ("3", "not a declared"),
     ("background", "unknown target"), ("ed++et", "invalid target"), ("", "invalid target")],
)
def test_resolve_target_errors(spec: str, keyword: str, brats_root: Path) -> None:
    with pytest.raises(DataError, match=None) as exc:
        resolve_target(open_dataset(brats_root), spec)
    assert keyword in str(exc.value) and "\n" not in str(exc.value)


def test_tc_unresolvable_without_enhancing_label() -> None:
    info = info_with(["CT", "PET"], {"background": 0, "tumour": 1})
    assert resolve_target(info, "wt").values == [[1]]
    assert resolve_target(info, "tumour").values == [[1]]
    with pytest.raises(DataError, match="'tc' cannot be resolved.*enhanc"):
        resolve_target(info, "tc")


def test_apply_target_hand_computed() -> None:
    label = np.array([[0, 1, 2], [4, 4, 0]], dtype=np.int16)
    wt = Target("wt", ["wt"], [[1, 2, 4]])
    np.testing.assert_array_equal(apply_target(label, wt), [[0, 1, 1], [1, 1, 0]])
    tc = Target("tc", ["tc"], [[1, 4]])
    np.testing.assert_array_equal(apply_target(label, tc), [[0, 1, 0], [1, 1, 0]])
    raw = Target("raw", ["ncr", "ed", "et"], [[1], [2], [4]])
    out = apply_target(label, raw)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 3, 0]])
    # Values beyond the label's max, negative values and float labels take the generic path.
    np.testing.assert_array_equal(apply_target(label, Target("x", ["x"], [[7]])), np.zeros((2, 3)))
    neg = np.array([-1, 0, 2])
    np.testing.assert_array_equal(apply_target(neg, Target("x", ["x"], [[-1, 2]])), [1, 0, 1])
    np.testing.assert_array_equal(apply_target(label.astype(np.float32), tc), [[0, 1, 0], [1, 1, 0]])


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


@requires_brats
@pytest.mark.realdata
def test_real_brats18(brats18_root: Path) -> None:
    info = open_dataset(brats18_root)
    assert info.format == "brats" and len(info.case_ids) == 16 and all(info.labeled.values())
    assert info.modalities == ["t1", "t1ce", "t2", "flair"]
    case = read_case(info, info.case_ids[0], ["t2", "t1ce"])
    assert case.shape == (240, 240, 155) and case.images["t1ce"].dtype == np.float32
    assert case.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert case.label is not None and set(np.unique(case.label)) <= {0, 1, 2, 4}
    wt = apply_target(case.label, resolve_target(info, "wt"))
    assert wt.sum() > 1000 and set(np.unique(wt)) == {0, 1}
    et = apply_target(case.label, resolve_target(info, "et"))
    assert 0 < et.sum() < wt.sum()
