"""The synthetic BraTS-like phantom: layout, determinism, anatomy, tumours and contrasts."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import PHANTOM_CASES, PHANTOM_SHAPE, PHANTOM_SPACING, phantom_arrays
from scipy import ndimage

from semicml.data import phantom as ph
from semicml.data.phantom import CONTRASTS, PHANTOM_LABELS, phantom_case, write_phantom
from semicml.data.readers import open_dataset, read_case
from semicml.errors import ConfigError, DataError

SMALL = (48, 48, 16)


def _arrays(root: Path) -> dict[str, np.ndarray]:
    """Every array under a written phantom, keyed by relative path."""
    return {str(f.relative_to(root)): np.asarray(nib.load(str(f)).dataobj)
            for f in sorted(root.rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def default_cases() -> list[ph.PhantomCase]:
    """Three cases at the default size (128x128x48), generated in memory."""
    return [phantom_case(k, seed=0) for k in range(3)]


def test_layout_metadata_and_geometry(phantom_root: Path) -> None:
    meta = json.loads((phantom_root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T2", "1": "T1ce"}
    assert meta["labels"] == {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}
    assert meta["numTraining"] == PHANTOM_CASES and meta["file_ending"] == ".nii.gz"
    assert meta["name"] and "seed=0" in meta["description"]
    assert len(list((phantom_root / "imagesTr").glob("*.nii.gz"))) == 2 * PHANTOM_CASES
    img = nib.load(str(phantom_root / "imagesTr" / "phantom_000_0001.nii.gz"))
    lab = nib.load(str(phantom_root / "labelsTr" / "phantom_000.nii.gz"))
    assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    assert img.shape == PHANTOM_SHAPE
    sx, sy, sz = PHANTOM_SPACING
    expected = np.diag([-sx, -sy, sz, 1.0])
    expected[1, 3] = (PHANTOM_SHAPE[1] - 1) * sy  # BraTS-like origin (0, (Y-1) sy, 0)
    np.testing.assert_allclose(img.affine, expected)
    np.testing.assert_allclose(lab.affine, expected)
    assert img.header.get_zooms() == pytest.approx(PHANTOM_SPACING)
    assert int(img.header["sform_code"]) == 1 and img.header.get_xyzt_units()[0] == "mm"
    case = read_case(open_dataset(phantom_root), "phantom_000", ["T2", "T1ce"])
    assert case.spacing == pytest.approx(PHANTOM_SPACING)


def test_deterministic_by_seed_and_case_index(tmp_path: Path) -> None:
    a = _arrays(write_phantom(tmp_path / "a", cases=2, seed=3, shape=SMALL))
    b = _arrays(write_phantom(tmp_path / "b", cases=2, seed=3, shape=SMALL))
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert a[key].tobytes() == b[key].tobytes(), key
    # Case k does not depend on how many cases are written.
    c = _arrays(write_phantom(tmp_path / "c", cases=1, seed=3, shape=SMALL))
    assert c.keys() <= a.keys() and all(c[k].tobytes() == a[k].tobytes() for k in c)
    # The in-memory generator is what gets written.
    mem = phantom_case(1, seed=3, shape=SMALL)
    np.testing.assert_array_equal(mem.images["T1ce"], a["imagesTr/phantom_001_0001.nii.gz"])
    np.testing.assert_array_equal(mem.label, a["labelsTr/phantom_001.nii.gz"])
    # A modality's image does not depend on which other modalities are generated, or their order.
    trio = phantom_case(1, seed=3, shape=SMALL, modalities=("FLAIR", "T1ce", "T2"))
    np.testing.assert_array_equal(trio.images["T1ce"], mem.images["T1ce"])
    np.testing.assert_array_equal(trio.label, mem.label)
    # Another seed gives other images and labels.
    d = _arrays(write_phantom(tmp_path / "d", cases=2, seed=4, shape=SMALL))
    for key in a:
        assert not np.array_equal(a[key], d[key]), key
    assert not np.array_equal(a["imagesTr/phantom_000_0000.nii.gz"], a["imagesTr/phantom_001_0000.nii.gz"])


def test_every_case_has_every_tumour_subregion(phantom_root: Path) -> None:
    cases = [phantom_case(k, seed=s, shape=PHANTOM_SHAPE) for s in (0, 7) for k in range(10)]
    for case in cases:
        counts = np.bincount(case.label.ravel(), minlength=4)
        assert counts.size == 4 and (counts[1:] >= ph.MIN_LABEL_VOXELS).all(), counts
        # Nesting: necrosis is wrapped in enhancing rim; it never touches normal brain directly.
        necrosis = case.label == PHANTOM_LABELS["necrosis"]
        ring = ndimage.binary_dilation(necrosis) & ~necrosis
        assert (case.label[ring & case.brain] == PHANTOM_LABELS["enhancing"]).all()
    for k in range(PHANTOM_CASES):
        assert set(np.unique(phantom_arrays(phantom_root, f"phantom_{k:03d}")["label"])) == {0, 1, 2, 3}
    # Variety: mostly one tumour, sometimes two; radii spread over the allowed range.
    n_tumours = [len(c.tumours) for c in cases]
    assert set(n_tumours) == {1, 2} and n_tumours.count(1) > len(cases) / 2
    radii = [t["radius_vox"] for c in cases for t in c.tumours]
    assert min(radii) >= 3.0 and max(radii) <= 20.0 and max(radii) / min(radii) > 2.0
    volumes = [int((c.label > 0).sum()) for c in cases]
    assert max(volumes) > 5 * min(volumes)


def test_skull_stripped_zero_outside_brain(default_cases: list[ph.PhantomCase]) -> None:
    for case in default_cases:
        brain = case.brain
        assert 0.1 < brain.mean() < 0.5
        for img in case.images.values():
            assert img.dtype == np.float32 and np.isfinite(img).all()
            assert (img[~brain] == 0).all() and (img[brain] > 0).all()
            assert (img[0, 0, :] == 0).all() and (img[:, :, 0] == 0).all()
        assert not case.label[~brain].any()
        # The brain is a head-like ellipsoid: wider along y (A-P) than x (L-R), and the axial
        # (third) axis is where it starts and ends inside the volume.
        xs, ys, zs = (np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != i))) for i in range(3))
        assert ys.size > xs.size and zs[0] > 0 and zs[-1] < brain.shape[2] - 1


def test_anatomy_and_contrast_tables(default_cases: list[ph.PhantomCase]) -> None:
    case = default_cases[0]
    fractions = np.bincount(case.tissue[case.brain], minlength=7) / case.brain.sum()
    assert fractions[ph.WM] > 0.3 and fractions[ph.GM] > 0.15 and 0.01 < fractions[ph.CSF] < 0.2
    wm = ndimage.binary_erosion(case.tissue == ph.WM, iterations=2)
    csf = ndimage.binary_erosion(case.tissue == ph.CSF)
    assert case.images["T2"][csf].mean() > 1.5 * case.images["T2"][wm].mean()  # CSF bright on T2
    assert case.images["T1ce"][csf].mean() < 0.6 * case.images["T1ce"][wm].mean()  # dark on T1ce
    for name in CONTRASTS:  # every table row is a complete, positive contrast
        assert set(CONTRASTS[name]) == set(ph.TISSUES[1:]) | {"noise"}
        assert all(v > 0 for v in CONTRASTS[name].values())


def _lesion_contrast(case: ph.PhantomCase, modality: str, region: int) -> float:
    """(mean of the region's interior - mean of nearby normal WM) / noise std."""
    img = case.images[modality]
    inner = ndimage.binary_erosion(case.label == region)
    lesion = case.label > 0
    shell = (ndimage.binary_dilation(lesion, iterations=5) & ~ndimage.binary_dilation(lesion, iterations=2)
             & ndimage.binary_erosion(case.tissue == ph.WM))
    # Noise from differences of neighbouring normal-WM voxels (robust, independent of the table).
    wm = ndimage.binary_erosion(case.tissue == ph.WM, iterations=2)
    diff = (img[1:] - img[:-1])[wm[1:] & wm[:-1]]
    sigma = 1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2)
    return float((img[inner].mean() - img[shell].mean()) / sigma)


def test_t2_shows_edema_t1ce_barely(default_cases: list[ph.PhantomCase]) -> None:
    for case in default_cases:
        t2 = _lesion_contrast(case, "T2", PHANTOM_LABELS["edema"])
        t1ce = _lesion_contrast(case, "T1ce", PHANTOM_LABELS["edema"])
        assert t2 > 3.0, t2
        assert abs(t1ce) < 3.2, t1ce  # faint: 2.5 noise std by design (+ bias, PV)
        assert t2 > 1.5 * abs(t1ce)
        # The enhancing rim is bright on T1ce.
        assert _lesion_contrast(case, "T1ce", PHANTOM_LABELS["enhancing"]) > 3.0


def test_four_modalities(tmp_path: Path) -> None:
    root = write_phantom(tmp_path / "p4", cases=1, shape=(64, 64, 24),
                         modalities=("flair", "T1", "t2w", "T1GD"))
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T2", "3": "T1ce"}
    case = phantom_case(0, shape=(96, 96, 32), modalities=("FLAIR", "T1", "T2", "T1ce"))
    edema = ndimage.binary_erosion(case.label == PHANTOM_LABELS["edema"])
    wm = ndimage.binary_erosion(case.tissue == ph.WM, iterations=2)
    csf = ndimage.binary_erosion(case.tissue == ph.CSF)
    flair, t1 = case.images["FLAIR"], case.images["T1"]
    assert flair[edema].mean() > 1.4 * flair[wm].mean() and flair[csf].mean() < 0.6 * flair[wm].mean()
    assert t1[edema].mean() < t1[wm].mean()  # lesion slightly hypointense on T1


def test_refuses_non_empty_output_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        write_phantom(out, cases=1, shape=SMALL)
    assert (out / "keep.txt").read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_phantom(empty, cases=1, shape=SMALL) / "dataset.json").is_file()

    real = ph.phantom_case

    def failing(index: int, *args: object, **kwargs: object) -> ph.PhantomCase:
        if index == 1:
            raise RuntimeError("disk full")
        return real(index, *args, **kwargs)

    monkeypatch.setattr(ph, "phantom_case", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_phantom(tmp_path / "broken", cases=2, shape=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty"]  # no partial output


@pytest.mark.parametrize(
    ("kwargs", "keyword"),
    [({"modalities": ("T2",)}, "at least 2"), ({"modalities": ("T2", "PD")}, "'PD' is not supported"),
     ({"modalities": ("T2", "t2w")}, "twice"), ({"shape": (8, 8, 8)}, "shape"),
     ({"spacing": (1.0, 0.0, 1.0)}, "spacing"), ({"seed": -1}, "seed"), ({"cases": 0}, "cases")],
)
def test_bad_arguments(kwargs: dict, keyword: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=keyword):
        write_phantom(tmp_path / "x", **{"cases": 1, "shape": SMALL, **kwargs})
    assert not (tmp_path / "x").exists()
