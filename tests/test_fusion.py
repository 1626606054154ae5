"""Fused prediction (``predict --modality t2,t1ce``) and the uncertainty map, on hand-made NIfTI
cases with stub networks whose output is known: a pointwise network (logit = a * x + b of the
normalised input, so flips and re-orientations change nothing) and a "half plane" network whose
four flip members disagree by a hand-computed amount.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import semicml.inference.weights as weights_mod
from semicml.cli import app
from semicml.engine.validation import choose_channel_postprocess
from semicml.errors import DataError
from semicml.inference.fusion import (
    align_to_grid,
    choose_fused_postprocessing,
    fused_postprocess,
    predict_fused,
)
from semicml.inference.predict import predict_cases
from semicml.inference.uncertainty import MAX_STD, Spread

PREP = {"in_plane": "crop", "size": 16, "normalisation": "zscore_nonzero"}
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
SHAPE = (12, 16, 6)


class Pointwise(nn.Module):
    """Logit = a * x + b: the same function of each pixel wherever it is (flip-equivariant)."""

    levels = 2

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return self.a * x + self.b


class HalfPlane(nn.Module):
    """Logit +L in the upper half of the (padded) plane, -L in the lower: ignores the image, so
    flipping the rows swaps the halves and the four flip members are two at sigma(L), two at
    sigma(-L) at every pixel."""

    levels = 2
    L = 3.0

    def forward(self, x):
        h = x.shape[2]
        sign = torch.where(torch.arange(h) < h // 2, 1.0, -1.0).view(1, 1, h, 1)
        return (self.L * sign).expand(x.shape[0], 1, h, x.shape[3]).clone()


class RegionPointwise(Pointwise):
    """Three region channels: logit a * x + b, shifted down by 0, 1 and 2 (nested, like wt/tc/et)."""

    def forward(self, x):
        z = self.a * x + self.b
        return torch.cat([z, z - 1.0, z - 2.0], dim=1)


REGIONS = {"name": "regions", "classes": ["wt", "tc", "et"], "values": [[1, 2, 4], [1, 4], [4]], "regions": True,
           "paint": [2, 1, 4]}


def images(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    body = np.zeros(SHAPE, np.float32)
    body[1:11, 2:14, 1:5] = 1.0
    return {"t2": body * rng.uniform(1, 3, SHAPE).astype(np.float32),
            "t1ce": body * rng.uniform(1, 3, SHAPE).astype(np.float32)}


def write_case(root: Path, case: str, data: dict[str, np.ndarray], affines: dict[str, np.ndarray] | None = None):
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    for m, arr in data.items():
        img = nib.Nifti1Image(arr, (affines or {}).get(m, AFFINE))
        img.header["descrip"] = f"{case} {m}".encode()
        nib.save(img, str(folder / f"{case}_{m}.nii.gz"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "in"
    for k, case in enumerate(("a", "b")):
        write_case(root, case, images(k))
    return root


def make_run(tmp_path: Path, nets: dict[str, tuple], run_info: dict | None = None, **payload) -> Path:
    """Weights files whose ``network`` spec names the stub to build."""
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True, exist_ok=True)
    for m, spec in nets.items():
        torch.save({"format": "semicml-weights-v1", "modality": m, "network": {"stub": spec}, "state_dict": {},
                    "preprocessing": PREP, **payload}, run / "weights" / f"{m}.pt")
    if run_info is not None:
        (run / "run.json").write_text(json.dumps(run_info))
    return run


@pytest.fixture(autouse=True)
def stubs(monkeypatch):
    def build(spec):
        kind, *args = spec["stub"]
        return {"pointwise": Pointwise, "regions": RegionPointwise, "halfplane": HalfPlane}[kind](*args)

    monkeypatch.setattr(weights_mod, "build_network", build)


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


POINTWISE = {"T2": ("pointwise", 2.0, -0.5), "T1ce": ("pointwise", -1.5, 0.8)}


def single_probs(run: Path, dataset: Path, tmp_path: Path, modality: str) -> dict[str, np.ndarray]:
    out = tmp_path / f"single_{modality}"
    predict_cases(run, modality, dataset, out, device="cpu", save_probabilities=True, progress=False)
    return {c: load(out / f"{c}_prob.nii.gz")[0] for c in ("a", "b")}


# ------------------------------------------------------------------------------ fusion
def test_fused_probability_is_the_mean_of_the_single_predictions(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE)
    p2, p1 = single_probs(run, dataset, tmp_path, "T2"), single_probs(run, dataset, tmp_path, "T1ce")
    out = tmp_path / "fused"
    written = predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", save_probabilities=True, progress=False)
    assert written == [out / "a.nii.gz", out / "b.nii.gz"]
    for c in ("a", "b"):
        fused, affine = load(out / f"{c}_prob.nii.gz")
        expected = (p2[c].astype(np.float64) + p1[c]) / 2
        assert np.allclose(fused, expected, atol=1e-6)
        assert not np.allclose(fused, p2[c], atol=1e-3) and not np.allclose(fused, p1[c], atol=1e-3)
        mask, mask_affine = load(out / f"{c}.nii.gz")
        assert mask.shape == SHAPE and np.array_equal(mask_affine, AFFINE)  # the input grid
        assert nib.load(str(out / f"{c}.nii.gz")).header["descrip"].item() == f"{c} t2".encode()
        assert np.array_equal(mask, (fused > 0.5).astype(np.uint8))  # no post-processing recorded
    record = json.loads((out / "predict.json").read_text())
    assert record["cases"]["a"]["modalities"] == ["t2", "t1ce"]
    assert record["cases"]["a"]["postprocessing"] == "none"


def test_mixed_orientations_still_align(tmp_path, dataset):
    """The T1ce file of case a stored with its in-plane axes swapped and x mirrored (another
    orientation of the same voxels in world space): the fused map is that of the plain files."""
    run = make_run(tmp_path, POINTWISE)
    plain = tmp_path / "plain"
    predict_fused(run, ["T2", "T1ce"], dataset, plain, device="cpu", save_probabilities=True, progress=False)
    t1ce = images(0)["t1ce"]
    turned = np.ascontiguousarray(np.transpose(t1ce, (1, 0, 2))[:, ::-1])  # new[i, j] = old[n - 1 - j, i]
    n = t1ce.shape[0]
    # world(old voxel (x, y, z)) = (x, y, 2z); new voxel (i, j, z) holds old (n - 1 - j, i, z)
    swap = np.array([[0.0, -1.0, 0.0, n - 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0, 0, 0, 1.0]])
    other = tmp_path / "other"
    for case in ("a", "b"):
        write_case(other, case, images(0 if case == "a" else 1),
                   affines={"t1ce": swap} if case == "a" else None)
    nib.save(nib.Nifti1Image(turned, swap), str(other / "a" / "a_t1ce.nii.gz"))
    out = tmp_path / "mixed"
    predict_fused(run, ["T2", "T1ce"], other, out, device="cpu", save_probabilities=True, progress=False)
    ref, _ = load(plain / "a_prob.nii.gz")
    got, affine = load(out / "a_prob.nii.gz")
    assert got.shape == SHAPE and np.array_equal(affine, AFFINE)
    assert np.allclose(got, ref, atol=1e-5)
    assert np.array_equal(load(out / "a.nii.gz")[0], load(plain / "a.nii.gz")[0])


def test_align_to_grid_keeps_channels_and_zero_outside():
    probs = np.random.default_rng(0).uniform(0, 1, (2, 4, 5, 3)).astype(np.float32)
    assert align_to_grid(probs, AFFINE, (4, 5, 3), AFFINE) is not None
    assert np.array_equal(align_to_grid(probs, AFFINE, (4, 5, 3), AFFINE), probs)
    flipped = np.eye(4)
    flipped[0, 0], flipped[0, 3] = -1.0, 3.0  # x mirrored: new voxel i = old voxel 3 - i
    assert np.allclose(align_to_grid(probs[:, ::-1], flipped, (4, 5, 3), np.eye(4)), probs, atol=1e-6)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0  # the reference starts two voxels further: its last two x-planes are outside
    out = align_to_grid(probs, np.eye(4), (4, 5, 3), shifted)
    assert np.allclose(out[:, :2], probs[:, 2:], atol=1e-6)
    assert np.allclose(out[:, 3], 0.0)  # beyond the one-voxel edge margin: no foreground


def test_missing_modality_is_an_error_naming_the_file_or_skipped_and_recorded(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE)
    gone = dataset / "b" / "b_t1ce.nii.gz"
    gone.unlink()
    out = tmp_path / "fused"
    with pytest.raises(DataError) as err:
        predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", progress=False)
    assert err.value.path == gone and "'b' has no T1ce image" in str(err.value)
    assert not out.exists()  # nothing half-written
    predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", progress=False, missing="skip",
                  save_probabilities=True)
    p2 = single_probs(run, dataset, tmp_path, "T2")
    assert np.allclose(load(out / "b_prob.nii.gz")[0], p2["b"], atol=1e-7)  # T2 alone
    record = json.loads((out / "predict.json").read_text())
    assert record["cases"]["b"]["modalities"] == ["T2"]
    assert record["cases"]["b"]["missing"] == {"T1ce": str(gone)}
    assert record["cases"]["a"]["missing"] == {}


def test_cli_fused_missing_file_is_one_line(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE)
    (dataset / "a" / "a_t1ce.nii.gz").unlink()
    result = CliRunner().invoke(app, ["predict", "--run", str(run), "--modality", "t2,t1ce", "--input", str(dataset),
                                      "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError) and "a_t1ce.nii.gz" in str(result.exception)


def test_fused_post_processing_chosen_on_validation():
    """Each modality sees the tumour and a false island of its own; their mean halves each island
    (0.45 < 0.5), so the fused map needs no post-processing while each single one would."""
    ref = np.zeros((20, 20, 20), bool)
    ref[2:8, 2:8, 2:8] = True
    p_a, p_b = ref * 0.9, ref * 0.9
    p_a[14:17, 14:17, 14:17] = 0.9
    p_b[14:17, 2:5, 14:17] = 0.9
    p_c = ref * 0.8
    p_c[14:17, 14:17, 14:17] = 0.9  # FLAIR shares T2's island
    # the trainer's layout: (Z, C, H, W) per validation case, one channel for a binary target
    probs = {"T2": [p_a[:, None]], "T1ce": [p_b[:, None]], "FLAIR": [p_c[:, None]]}
    choice = choose_fused_postprocessing(probs, [ref[:, None]], [(1.0, 1.0, 1.0)],
                                         choose=lambda p, y, sp: choose_channel_postprocess(p, y, sp, []))
    # each member alone keeps its island as the mean does (or is worse): the mean is kept everywhere
    assert all(v["weights_chosen"] == ["mean"] for v in choice.values())
    assert set(choice) == {"T2+T1ce", "T2+FLAIR", "T1ce+FLAIR", "T2+T1ce+FLAIR"}
    for name in ("T2+T1ce", "T1ce+FLAIR"):  # every island at 0.45
        assert choice[name]["choice"] == "none" and choice[name]["candidates"]["none"]["dice"] == 1.0
    for name in ("T2+FLAIR", "T2+T1ce+FLAIR"):  # the shared island (0.9, 0.6) survives the mean: removed
        assert choice[name]["choice"] != "none" and choice[name]["candidates"][choice[name]["choice"]]["dice"] == 1.0
        assert choice[name]["candidates"]["none"]["dice"] < 1.0
    fixed = choose_fused_postprocessing({"T2": [], "T1ce": []}, [], [], fixed="largest")
    assert fixed == {"T2+T1ce": {"choice": "largest", "chosen_by": "config"}}


def test_fused_post_processing_lookup():
    info = {"modalities": ["T2", "T1ce", "FLAIR"], "best_val": {"T2": {"dice": 0.7}, "T1ce": {"dice": 0.8}},
            "postprocessing_fused": {"T2+T1ce": {"choice": "min-size:100"}}}
    stored = {"T2": "largest", "T1ce": "min-size:1000", "FLAIR": "none"}
    assert fused_postprocess(info, ["T1ce", "T2"], stored)[0] == "min-size:100"  # any order of the set
    assert fused_postprocess(info, ["T1ce", "FLAIR"], stored)[0] == "min-size:1000"  # best val Dice: T1ce
    assert fused_postprocess(info, ["FLAIR"], stored)[0] == "none"  # one network keeps its own
    assert fused_postprocess({}, ["T2", "T1ce"], stored) == ("none", "no fused choice recorded")


# ------------------------------------------------------------------------------ uncertainty
def test_uncertainty_of_disagreeing_flips_is_hand_computed(tmp_path, dataset):
    run = make_run(tmp_path, {"T2": ("halfplane",)})
    out = tmp_path / "u"
    predict_cases(run, "T2", dataset, out, device="cpu", uncertainty=True, save_probabilities=True, progress=False)
    unc, affine = load(out / "a_uncertainty.nii.gz")
    assert unc.dtype == np.float32 and unc.shape == SHAPE and np.array_equal(affine, AFFINE)
    s = 1.0 / (1.0 + np.exp(-HalfPlane.L))
    body = images(0)["t2"].any(axis=(0, 1))  # slices with a non-zero voxel are predicted
    assert np.allclose(unc[:, :, body], (s - (1 - s)) / 2, atol=1e-6)  # two members at s, two at 1 - s
    assert np.all(unc[:, :, ~body] == 0)  # empty slices: every member says 0
    assert np.allclose(load(out / "a_prob.nii.gz")[0][:, :, body], 0.5, atol=1e-6)  # the mask's probability
    assert json.loads((out / "predict.json").read_text())["uncertainty"] == "flip-std"


def test_fused_uncertainty_is_the_spread_between_networks(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE)
    p2, p1 = single_probs(run, dataset, tmp_path, "T2"), single_probs(run, dataset, tmp_path, "T1ce")
    single = tmp_path / "single_u"
    predict_cases(run, "T2", dataset, single, device="cpu", uncertainty=True, progress=False)
    assert np.all(load(single / "a_uncertainty.nii.gz")[0] == 0)  # a pointwise net: the flips agree
    out = tmp_path / "fused_u"
    predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", uncertainty=True, progress=False)
    unc = load(out / "a_uncertainty.nii.gz")[0]
    assert np.allclose(unc, np.abs(p2["a"] - p1["a"]) / 2, atol=1e-6)  # four members at each network's value


def test_spread_bounds():
    spread = Spread()
    for v in (0.0, 1.0, 0.0, 1.0):
        spread.add(np.full((2, 2), v))
    assert np.allclose(spread.std(), MAX_STD) and np.allclose(spread.mean(), 0.5)
    with pytest.raises(ValueError):
        spread.add(np.zeros(3))


# ------------------------------------------------------------------------------ inputs of every layout
def test_modality_sets_of_every_layout_and_the_files_they_lack(phantom_root, tmp_path):
    from conftest import copy_phantom, make_msd_fixture, phantom_arrays

    from semicml.data.readers.multi import read_modality_sets

    nn = copy_phantom(phantom_root, tmp_path, cases=3)
    ids = sorted(p.name.split("_0000")[0] for p in (nn / "imagesTr").glob("*_0000.nii.gz"))
    (nn / "imagesTr" / f"{ids[1]}_0001.nii.gz").unlink()  # channel 1 = T1ce of the second case
    found, missing = read_modality_sets(nn, ["t1ce", "T2"])
    assert [c for c, _ in found] == ids and [list(m) for _, m in found][0] == ["t1ce", "T2"]
    assert [(m.case_id, m.modality, m.expected) for m in missing] == [
        (ids[1], "t1ce", nn / "imagesTr" / f"{ids[1]}_0001.nii.gz")]
    arrays = phantom_arrays(phantom_root, ids[0])
    assert np.array_equal(found[0][1]["t1ce"]().images["t1ce"], arrays["T1ce"])

    msd = make_msd_fixture(phantom_root, tmp_path, cases=3, test_cases=1)  # 4D: every channel present
    found, missing = read_modality_sets(msd, ["T2", "T1ce"])
    assert len(found) == 1 and not missing
    case = found[0][0]
    arrays = phantom_arrays(phantom_root, case)
    assert np.array_equal(found[0][1]["T2"]().images["T2"], arrays["T2"])
    assert np.array_equal(found[0][1]["T1ce"]().images["T1ce"], arrays["T1ce"])

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("x_1_t2", "x_1_t1ce", "y_t2"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(flat / f"{name}.nii.gz"))
    found, missing = read_modality_sets(flat, ["T2", "T1ce"])
    assert [(c, list(m)) for c, m in found] == [("x_1", ["T2", "T1ce"]), ("y", ["T2"])]
    assert [(m.case_id, m.expected) for m in missing] == [("y", flat / "y_t1ce.nii.gz")]
    for name in ("z_T2", "z_T1c", "w-t2w", "w_t1gd"):  # other spellings of the same two modalities
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(flat / f"{name}.nii.gz"))
    found, missing = read_modality_sets(flat, ["T2", "T1ce"])
    assert [(c, list(m)) for c, m in found] == [("w", ["T2", "T1ce"]), ("x_1", ["T2", "T1ce"]), ("y", ["T2"]),
                                                 ("z", ["T2", "T1ce"])]
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(flat / "z_t2w.nii.gz"))
    with pytest.raises(DataError, match=r"two T2 files for case 'z': z_T2\.nii\.gz and z_t2w\.nii\.gz"):
        read_modality_sets(flat, ["T2", "T1ce"])
    (flat / "z_t2w.nii.gz").unlink()

    with pytest.raises(DataError, match="one modality"):
        read_modality_sets(flat / "y_t2.nii.gz", ["T2", "T1ce"])
    with pytest.raises(DataError, match="each modality once"):
        read_modality_sets(flat, ["T2", "t2"])


@pytest.mark.parametrize("names, modality, expected", [
    # a modality spelled with a separator: the longest known spelling is the suffix
    (("p_1_t2", "p_1_t1_ce", "p_2-T2w", "p_2-t1-gd"), "T1ce", {"p_1": "p_1_t1_ce", "p_2": "p_2-t1-gd"}),
    # "_t2_flair" is FLAIR of case "q", not a T2-named case "q_t2"; "q_t2" is T2 of case "q"
    (("q_t2", "q_t2_flair", "r_T2"), "T2", {"q": "q_t2", "r": "r_T2"}),
    (("q_t2", "q_t2_flair", "r_T2"), "flair", {"q": "q_t2_flair"}),
    # a modality no alias knows (PET) is found by its requested name, in any case
    (("h1_CT", "h1_PET", "h2_ct", "h2_pet"), "pet", {"h1": "h1_PET", "h2": "h2_pet"}),
    # a case id ending in a contrast name: the split its other files agree on ("pat_t2")
    (("pat_t2_t1", "pat_t2_t2", "pat_t2_flair", "pat_t2_t1_gd"), "flair", {"pat_t2": "pat_t2_flair"}),
    (("pat_t2_t1", "pat_t2_t2", "pat_t2_flair", "pat_t2_t1_gd"), "t1ce", {"pat_t2": "pat_t2_t1_gd"}),
])
def test_single_and_fused_prediction_read_a_flat_folder_alike(tmp_path, names, modality, expected):
    """One rule for flat folders: single-modality and fused prediction name the same cases with
    the same files (they parsed names differently before: last separator against known spellings)."""
    from semicml.data.readers import read_single_modality
    from semicml.data.readers.multi import read_modality_sets

    for name in names:
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    single = {c: load.source.name for c, load in read_single_modality(tmp_path, modality)}
    found, _ = read_modality_sets(tmp_path, [modality])
    fused = {c: loaders[modality].source.name for c, loaders in found}
    want = {c: f"{n}.nii.gz" for c, n in expected.items()}
    assert single == want and fused == want


def test_threshold_masks_per_region_channel():
    from semicml.inference.fusion import threshold_masks

    probs = np.zeros((2, 10, 10, 10), np.float32)
    probs[0, 1:4, 1:4, 1:4] = 0.9  # region 0: a 27-voxel blob and a 1-voxel island
    probs[0, 8, 8, 8] = 0.7
    probs[1, 1:3, 1:3, 1:3] = 0.6  # region 1: one blob
    masks = threshold_masks(probs, 0.5, "largest", (1.0, 1.0, 1.0))
    assert masks.shape == probs.shape and masks.dtype == np.uint8
    assert masks[0].sum() == 27 and masks[0, 8, 8, 8] == 0 and masks[1].sum() == 8
    assert np.array_equal(threshold_masks(probs[0], 0.5, "none", (1.0, 1.0, 1.0)), (probs[0] > 0.5))


def test_fused_regions_are_the_mean_per_region_painted_into_one_label_map(tmp_path, dataset):
    from semicml.data.targets import Target, label_map_from_regions

    nets = {"T2": ("regions", 2.0, 1.5), "T1ce": ("regions", -1.5, 2.5)}
    run = make_run(tmp_path, nets, target=REGIONS, postprocessing={"wt": "none", "tc": "none", "et": "none"})
    singles = {}
    for m in nets:
        out = tmp_path / f"single_{m}"
        predict_cases(run, m, dataset, out, device="cpu", save_probabilities=True, progress=False)
        singles[m] = load(out / "a_prob.nii.gz")[0]
    out = tmp_path / "fused"
    predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", save_probabilities=True, uncertainty=True,
                  progress=False)
    fused = load(out / "a_prob.nii.gz")[0]
    assert fused.shape == (*SHAPE, 3)  # regions along the last axis, as for one network
    assert np.allclose(fused, (singles["T2"].astype(np.float64) + singles["T1ce"]) / 2, atol=1e-6)
    masks = np.moveaxis(fused, -1, 0) > 0.5
    assert masks[0].any() and masks[1].any() and (masks[0] & ~masks[1]).any()  # not vacuous
    label = load(out / "a.nii.gz")[0]
    np.testing.assert_array_equal(label, label_map_from_regions(masks, Target(**REGIONS)))
    unc = load(out / "a_uncertainty.nii.gz")[0]  # pointwise nets: the spread of the two networks, per region
    assert np.allclose(unc, np.abs(singles["T2"] - singles["T1ce"]) / 2, atol=1e-6)
    files = predict_fused(run, ["T2", "T1ce"], dataset, tmp_path / "files", device="cpu", regions_as_files=True,
                          progress=False, cases=["a"])
    assert [p.relative_to(tmp_path / "files").as_posix() for p in files] == ["wt/a.nii.gz", "tc/a.nii.gz",
                                                                               "et/a.nii.gz"]
    np.testing.assert_array_equal(np.stack([load(p)[0] for p in files]).astype(bool), masks)
