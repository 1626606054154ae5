"""``predict`` end to end on hand-made NIfTI files: weights lookup, the written masks and
probabilities, post-processing with the file's voxel size, the record, and the errors.

The network is a stub whose logit is 50 x its (normalised) input, so the mask it predicts is known
voxel for voxel: the tumour (intensity 3 in a brain of intensity 1). Written against the
surviving mutants of benchmarks/mutation.py (inference/predict.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import semicml.inference.predict as predict_mod
import semicml.inference.weights as weights_mod
from semicml.errors import DataError
from semicml.hardware import resolve_precision
from semicml.inference.predict import atomic_save_nifti, load_weights, predict_cases, probabilities_on_grid
from semicml.models import build_network

AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm^3 voxels: post-processing sizes must use them
PREP = {"in_plane": "crop", "size": 16, "normalisation": "zscore_nonzero"}


class NoLevels(nn.Module):
    """Logit = 50 x input; no ``levels`` attribute (predict then assumes 4 down-samplings)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.inputs: list[torch.Tensor] = []
        self.autocast: set[bool] = set()

    def forward(self, x):
        self.calls += 1
        self.inputs.append(x.clone())
        self.autocast.add(torch.is_autocast_enabled("cpu"))
        return 50.0 * x


class CopyNet(NoLevels):
    levels = 2


def volume(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image, tumour mask): a 60-voxel tumour and a 4-voxel island (8 mm^3) in a brain."""
    image = np.zeros((20, 24, 8), np.float32)
    image[2:18, 2:22, 1:7] = 1.0
    tumour = np.zeros(image.shape, np.uint8)
    tumour[5 + shift : 9 + shift, 6:11, 2:5] = 1
    tumour[14:16, 17:19, 5] = 1
    image[tumour > 0] = 3.0
    return image, tumour


def island() -> np.ndarray:
    mask = np.zeros((20, 24, 8), bool)
    mask[14:16, 17:19, 5] = True
    return mask


@pytest.fixture
def cases(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, shift in (("a", 0), ("b", 3)):
        image = nib.Nifti1Image(volume(shift)[0], AFFINE)
        image.header["descrip"] = f"case {name}".encode()  # the header must reach the outputs
        nib.save(image, str(folder / f"{name}.nii.gz"))
    return folder


def make_run(tmp_path: Path, modality: str = "T2", **payload) -> Path:
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True, exist_ok=True)
    content = {"format": "semicml-weights-v1", "network": {}, "state_dict": {}, "preprocessing": PREP, **payload}
    torch.save(content, run / "weights" / f"{modality}.pt")
    return run


@pytest.fixture
def copynet(monkeypatch) -> list[CopyNet]:
    made: list[CopyNet] = []

    def build(spec):
        made.append(CopyNet())
        return made[-1]

    monkeypatch.setattr(weights_mod, "build_network", build)  # where load_weights builds it
    return made


def read(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


# ------------------------------------------------------------------------------ predict_cases
def test_masks_probabilities_and_record(tmp_path, cases, copynet):
    run = make_run(tmp_path)
    out = tmp_path / "out"
    written = predict_cases(run, "T2", cases, out, device="cpu", save_probabilities=True, progress=False)
    assert written == [out / "a.nii.gz", out / "b.nii.gz"]
    for name, shift in (("a", 0), ("b", 3)):
        image, tumour = volume(shift)
        mask = read(out / f"{name}.nii.gz")
        assert mask.get_data_dtype() == np.uint8 and np.array_equal(mask.affine, AFFINE)
        assert mask.header.get_zooms() == (2.0, 1.0, 1.0)
        assert mask.header["descrip"].item() == f"case {name}".encode()  # the input's header, copied
        assert np.array_equal(np.asarray(mask.dataobj), tumour)  # island kept: no post-processing stored
        prob = read(out / f"{name}_prob.nii.gz")
        assert prob.get_data_dtype() == np.float32 and np.array_equal(prob.affine, AFFINE)
        assert prob.header["descrip"].item() == f"case {name}".encode()
        direct = probabilities_on_grid(CopyNet(), image, AFFINE, PREP, torch.device("cpu"),
                                       resolve_precision("fp32", torch.device("cpu")))
        assert np.array_equal(np.asarray(prob.dataobj), direct)
    text = (out / "predict.json").read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=1)
    assert record == {"run": str(run), "modality": "T2", "input": str(cases), "cases": ["a.nii.gz", "b.nii.gz"],
                      "threshold": 0.5, "tta": False, "postprocessing": "none", "engine": "torch", "window": "whole",
                      "margin": 0, "coarse_inputs": {}, "constant_inputs": {}}
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "a_prob.nii.gz", "b.nii.gz", "b_prob.nii.gz",
                                                      "predict.json"]


def test_probabilities_are_not_written_unless_asked(tmp_path, cases, copynet):
    out = tmp_path / "out"
    predict_cases(make_run(tmp_path), "T2", cases, out, device="cpu", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "predict.json"]


def test_threshold_tta_and_case_selection_are_used(tmp_path, cases, copynet):
    out = tmp_path / "out"
    written = predict_cases(make_run(tmp_path), "T2", cases, out, device="cpu", threshold=1.0, tta=True,
                            progress=False, cases=["b"])
    assert written == [out / "b.nii.gz"]
    assert not np.asarray(read(written[0]).dataobj).any()  # a probability is never > 1
    assert copynet[0].calls == 4  # one batch of slices, four flips
    record = json.loads((out / "predict.json").read_text())
    assert (record["cases"], record["threshold"], record["tta"]) == (["b.nii.gz"], 1.0, True)


def test_defaults_auto_device_progress_bar_and_an_existing_output_folder(tmp_path, cases, copynet, capsys):
    out = tmp_path / "deep" / "er" / "out"
    predict_cases(make_run(tmp_path), "T2", cases, out)  # device and precision "auto", a progress bar
    bar = capsys.readouterr().err
    assert "predict T2" in bar and "2/2" in bar and re.search(r"[0-9.](case/s|s/case)\]", bar)
    assert copynet[-1].calls > 0
    predict_cases(make_run(tmp_path), "T2", cases, out, progress=False)  # again, into the same folder
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "predict.json"]


@pytest.mark.parametrize("precision, autocast", [("fp32", False), ("bf16", True)])
def test_the_requested_precision_is_used(tmp_path, cases, copynet, precision, autocast):
    predict_cases(make_run(tmp_path), "T2", cases, tmp_path / "out", device="cpu", precision=precision,
                  progress=False)
    assert copynet[0].autocast == {autocast}


def test_a_busy_output_folder_is_refused_naming_it(tmp_path, cases, copynet):
    from semicml.errors import BusyError
    from semicml.locking import exclusive

    out = tmp_path / "out"
    with exclusive(out, "someone else"):
        with pytest.raises(BusyError) as info:
            predict_cases(make_run(tmp_path), "T2", cases, out, device="cpu", progress=False)
    assert str(info.value).startswith(f"{out}: prediction folder is in use by another semicml process")


@pytest.mark.parametrize("levels, side", [(3, 40), (None, 48)])
def test_the_whole_slice_is_padded_to_the_networks_downsampling_factor(levels, side):
    net = CopyNet() if levels else NoLevels()
    if levels:
        net.levels = levels
    image, tumour = (np.pad(a, ((0, 0), (0, 16), (0, 0))) for a in volume())  # 20 x 40 in plane
    probs = probabilities_on_grid(net, image, AFFINE, PREP, torch.device("cpu"),
                                  resolve_precision("fp32", torch.device("cpu")))
    # 40 rounded up to a multiple of 2 ** 3 = 8 is 40; without ``levels`` 4 are assumed: 16 -> 48
    assert {tuple(x.shape[-2:]) for x in net.inputs} == {(side, side)}
    assert np.array_equal(probs > 0.5, tumour > 0)


def test_a_case_without_header_gets_one_from_its_affine(tmp_path, monkeypatch, copynet):
    from semicml.data.case import Case

    image, tumour = volume()
    monkeypatch.setattr(predict_mod, "read_single_modality", lambda path, modality: [
        ("h", lambda: Case(case_id="h", images={"T2": image}, label=None, affine=AFFINE, header=None))])
    out = tmp_path / "out"
    predict_cases(make_run(tmp_path), "T2", tmp_path, out, device="cpu", progress=False, save_probabilities=True)
    for name in ("h.nii.gz", "h_prob.nii.gz"):
        written = read(out / name)
        assert np.array_equal(written.affine, AFFINE) and written.header.get_zooms() == (2.0, 1.0, 1.0)
    assert np.array_equal(np.asarray(read(out / "h.nii.gz").dataobj), tumour)


def test_resize_stores_use_their_box_and_unnormalised_stores_the_raw_image():
    from semicml.data.preprocess import extract_planes, foreground_box, normalise

    image, _ = volume()
    prep = {"in_plane": "resize", "size": 32, "normalisation": "zscore"}
    net = CopyNet()
    probabilities_on_grid(net, image, AFFINE, prep, torch.device("cpu"), resolve_precision("fp32", torch.device("cpu")))
    box = foreground_box(image, 32, "resize")
    assert box.mode == "resize" and box.side == 20
    expected = extract_planes(normalise(image, "zscore")[0], box).transpose(2, 0, 1)
    assert np.allclose(torch.cat(net.inputs)[:, 0].numpy(), expected, atol=1e-5)
    raw = probabilities_on_grid(CopyNet(), image, AFFINE, dict(PREP, normalisation="none"), torch.device("cpu"),
                                resolve_precision("fp32", torch.device("cpu")))
    assert np.array_equal(raw > 0.5, image > 0)  # 50 x the raw intensity: the whole brain


@pytest.mark.parametrize("stored, given, island_kept", [
    ("largest", None, False),  # the choice stored with the weights
    ("largest", "none", True),  # overridden by the caller
    (None, None, True),  # nothing stored: none
    ("none", "min-size:6", True),  # 4 voxels x 2 mm^3 = 8 mm^3 >= 6: kept
    ("none", "min-size:10", False),  # 8 mm^3 < 10: removed (with 1 mm^3 voxels 6 would remove it too)
])
def test_postprocessing_choice_and_voxel_size(tmp_path, cases, copynet, stored, given, island_kept):
    run = make_run(tmp_path, **({} if stored is None else {"postprocessing": stored}))
    out = tmp_path / "out"
    predict_cases(run, "T2", cases, out, device="cpu", progress=False, postprocess=given)
    mask = np.asarray(read(out / "a.nii.gz").dataobj)
    expected = volume(0)[1].astype(bool)
    if not island_kept:
        expected &= ~island()
    assert np.array_equal(mask > 0, expected)
    assert json.loads((out / "predict.json").read_text())["postprocessing"] == (given or stored or "none")


@pytest.mark.parametrize("kw, problem", [
    ({"cases": ["a", "zz"]}, "{input}: case 'zz' with modality 'T2' not found"),
    ({"cases": []}, "{input}: no case with modality 'T2' found"),
    ({"postprocess": "biggest"}, "unknown post-processing 'biggest' (none, largest, min-size:<mm^3>, near:<mm>, or near:<mm>+min-size:<mm^3>)"),
])
def test_predict_errors(tmp_path, cases, copynet, kw, problem):
    with pytest.raises(DataError) as info:
        predict_cases(make_run(tmp_path), "T2", cases, tmp_path / "out", device="cpu", progress=False, **kw)
    assert str(info.value) == problem.format(input=cases)
    assert not (tmp_path / "out" / "predict.json").exists()


# ------------------------------------------------------------------------------ weights
def test_load_weights_rebuilds_the_saved_network(tmp_path):
    spec = {"in_channels": 1, "out_channels": 1, "widths": [4, 8], "dropout": [0.0, 0.1]}
    torch.manual_seed(3)
    net = build_network(spec)
    run = make_run(tmp_path, "T1ce", network=spec, state_dict=net.state_dict(), preprocessing=PREP)
    for where in (run, run / "weights" / "T1ce.pt"):
        loaded, payload = load_weights(where, "t1ce", torch.device("cpu"))  # the name in any case
        assert not loaded.training and payload["preprocessing"] == PREP
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


@pytest.mark.parametrize("setup, problem", [
    ("missing", "{run}: run directory not found"),
    ("other-modality", "{run}: no network for modality 'FLAIR' in this run (has: T1ce, T2)"),
    ("no-weights", "{run}: no network for modality 'FLAIR' in this run (has: none)"),
    ("foreign", "{run}/weights/FLAIR.pt: not a semicml weights file"),
])
def test_load_weights_errors(tmp_path, setup, problem):
    run = tmp_path / "run"
    if setup == "other-modality":
        make_run(tmp_path, "T2")
        make_run(tmp_path, "T1ce")
    elif setup == "no-weights":
        (run / "weights").mkdir(parents=True)
    elif setup == "foreign":
        make_run(tmp_path, "FLAIR", format="something-else")
    with pytest.raises(DataError) as info:
        load_weights(run, "FLAIR", torch.device("cpu"))
    assert str(info.value) == problem.format(run=run)


def test_masks_do_not_keep_the_scans_display_window_or_intent(tmp_path):
    """A scan's cal_max = 1000 on a 0/1 mask makes viewers show it black: cleared, as is the intent."""
    header = nib.Nifti1Header()
    header["cal_min"], header["cal_max"] = 0, 1000
    header.set_intent("t test", (5,))
    image = nib.Nifti1Image(np.ones((2, 3, 4), np.uint8), AFFINE, header)
    atomic_save_nifti(image, tmp_path / "m.nii.gz", np.uint8)
    back = read(tmp_path / "m.nii.gz").header
    assert float(back["cal_min"]) == 0 and float(back["cal_max"]) == 0
    assert back.get_intent()[0] == "none"


def test_atomic_save_nifti_writes_the_same_bytes_twice(tmp_path):
    image = nib.Nifti1Image(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), AFFINE)
    atomic_save_nifti(image, tmp_path / "x.nii.gz", np.float32)
    assert read(tmp_path / "x.nii.gz").get_data_dtype() == np.float32  # the dtype asked for
    atomic_save_nifti(image, tmp_path / "x.nii.gz", np.uint8)
    first = (tmp_path / "x.nii.gz").read_bytes()
    assert first[4:8] == b"\0\0\0\0"  # gzip header mtime 0: no time stamp in the file
    atomic_save_nifti(image, tmp_path / "x.nii.gz", np.uint8)
    assert (tmp_path / "x.nii.gz").read_bytes() == first
    back = read(tmp_path / "x.nii.gz")
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(back.dataobj), np.arange(24).reshape(2, 3, 4))


# ------------------------------------------------------------------------------ region outputs by hand
def test_region_postprocess_names_every_region_without_a_stored_choice():
    from semicml.data.targets import Target
    from semicml.inference.predict import region_postprocess

    target = Target(name="regions", classes=["wt", "tc", "et"], values=[[1, 2, 4], [1, 4], [4]], regions=True,
                    paint=[2, 1, 4])
    assert region_postprocess("largest", target) == {"wt": "largest", "tc": "largest", "et": "largest"}
    assert region_postprocess({"wt": "none", "tc": "min-size:5", "et": "largest", "x": "none"}, target) == {
        "wt": "none", "tc": "min-size:5", "et": "largest"}
    with pytest.raises(DataError) as err:
        region_postprocess({"tc": "none"}, target)
    assert str(err.value) == "the stored post-processing names no choice for region(s) wt, et"


def test_region_masks_min_size_counts_cubic_millimetres_at_the_case_spacing(tmp_path):
    from types import SimpleNamespace

    from semicml.data.targets import Target
    from semicml.inference.predict import write_region_masks

    target = Target(name="regions", classes=["wt", "tc"], values=[[1, 2], [1]], regions=True, paint=[2, 1])
    probs = np.zeros((2, 10, 10, 4), np.float32)
    probs[0, 1:6, 1:6, 1:3] = 0.9  # 50 voxels
    probs[0, 8:9, 8:10, 1] = 0.9  # 2 voxels: 16 mm^3 at 2 mm, kept by min-size:10 (2 mm^3 at 1 mm would not be)
    probs[1, 2:4, 2:4, 1] = 0.9
    case = SimpleNamespace(affine=np.diag([2.0, 2.0, 2.0, 1.0]), spacing=(2.0, 2.0, 2.0))
    paths = write_region_masks(probs, 0.5, {"wt": "min-size:10", "tc": "none"}, target, False, case, "c", None,
                               tmp_path)
    label = np.asarray(nib.load(str(paths[0])).dataobj)
    assert paths == [tmp_path / "c.nii.gz"] and label[8, 8, 1] == 2 and label[8, 9, 1] == 2
    assert (label == 1).sum() == 4 and (label == 2).sum() == 52 - 4


class RollNet(nn.Module):
    """Logit = 5 (x - x one column to the left, wrapping): depends on the window's extent, so the
    window and its margin show in the probabilities."""

    levels = 2

    def forward(self, x):
        return 5.0 * (x - torch.roll(x, 1, dims=-1))


class RegionRollNet(RollNet):
    def forward(self, x):
        z = super().forward(x)
        return torch.cat([z, z - 1.0, z - 2.0], dim=1)


REGIONS = {"name": "regions", "classes": ["wt", "tc", "et"], "values": [[1, 2, 4], [1, 4], [4]], "regions": True,
           "paint": [2, 1, 4]}
MRI = {"in_plane": "crop", "size": 16, "normalisation": {"T2": {"scheme": "mri"}}}


def test_uncertainty_uses_the_window_margin_and_modality_of_the_prediction(tmp_path, cases, monkeypatch):
    monkeypatch.setattr(weights_mod, "build_network", lambda spec: RollNet())
    run = make_run(tmp_path, preprocessing=MRI)  # no "modality" in the weights: the asked one names it
    probs = {}
    for name, kwargs in (("tta", {"tta": True}), ("unc", {"uncertainty": True}), ("tta0", {"tta": True, "margin": 0})):
        out = tmp_path / name
        predict_cases(run, "T2", cases, out, device="cpu", save_probabilities=True, progress=False,
                      window="brain", **{"margin": 3, **kwargs})
        probs[name] = np.asarray(read(out / "a_prob.nii.gz").dataobj)
    assert not np.allclose(probs["tta"], probs["tta0"], atol=1e-4)  # the margin matters for this network
    np.testing.assert_allclose(probs["unc"], probs["tta"], atol=1e-6)  # the flip mean is the --tta probability
    assert read(tmp_path / "unc" / "a_uncertainty.nii.gz").get_fdata().max() > 0.01


def test_region_uncertainty_and_masks_one_per_region_and_case(tmp_path, cases, monkeypatch):
    monkeypatch.setattr(weights_mod, "build_network", lambda spec: RegionRollNet())
    run = make_run(tmp_path, preprocessing=PREP, target=REGIONS, postprocessing="none")
    out = tmp_path / "out"
    written = predict_cases(run, "T2", cases, out, device="cpu", uncertainty=True, progress=False,
                            regions_as_files=True)
    assert written == [out / r / f"{c}.nii.gz" for c in ("a", "b") for r in ("wt", "tc", "et")]
    for c in ("a", "b"):
        for r in ("wt", "tc", "et"):
            mask = read(out / r / f"{c}.nii.gz")
            assert mask.get_data_dtype() == np.uint8 and mask.header["descrip"].tobytes().rstrip(b"\0") == \
                f"case {c}".encode()
        unc = read(out / f"{c}_uncertainty.nii.gz")
        assert unc.shape == (20, 24, 8, 3)  # one map per region, along the last axis
        assert unc.header["descrip"].tobytes().rstrip(b"\0") == f"case {c}".encode()
    painted = tmp_path / "painted"
    predict_cases(run, "T2", cases, painted, device="cpu", progress=False)
    label = read(painted / "a.nii.gz")
    assert label.get_data_dtype() == np.uint8 and label.header["descrip"].tobytes().rstrip(b"\0") == b"case a"
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 4}
