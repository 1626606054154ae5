"""Ensembles of runs (``predict --run A --run B``): the mean probability of the members' networks,
members of different through-plane context, the checks that members see the same input, the
post-processing rule, and the command line.

The networks are stubs whose logit is ``scale x`` their centre input slice, so every probability
is known exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import semicml.inference.weights as weights_mod
from semicml.errors import ConfigError
from semicml.inference.engines import Engine
from semicml.inference.ensemble import EnsembleEngine, ensemble_info, postprocess_of_members
from semicml.inference.predict import predict_cases

from test_predict_cases import AFFINE, PREP, volume


class ConstantEngine(Engine):
    """Logits = ``value`` everywhere; records what it was given and whether its session was open."""

    def __init__(self, value: float, context: int = 0, multiple: int = 16):
        self.value, self.context, self.multiple = value, context, multiple
        self.inputs: list[torch.Tensor] = []
        self.open = False

    @contextlib.contextmanager
    def session(self):
        self.open = True
        yield
        self.open = False

    def __call__(self, x):
        assert self.open, "called outside its session"
        self.inputs.append(x.clone())
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value)


# ------------------------------------------------------------------------------ the engine
def test_the_ensemble_averages_probabilities_not_logits():
    # members: p = sigmoid(0) = 0.5 and sigmoid(ln 3) = 0.75 -> mean 0.625 (the mean LOGIT would give 0.634)
    ens = EnsembleEngine([ConstantEngine(0.0), ConstantEngine(math.log(3.0))])
    with ens.session():
        logits = ens(torch.zeros(2, 1, 4, 4))
    assert logits.dtype == torch.float32 and logits.shape == (2, 1, 4, 4)
    assert torch.allclose(torch.sigmoid(logits), torch.full_like(logits, 0.625), atol=1e-6)


def test_saturated_members_give_a_finite_mean():
    ens = EnsembleEngine([ConstantEngine(200.0), ConstantEngine(200.0), ConstantEngine(-200.0)])
    with ens.session():
        p = torch.sigmoid(ens(torch.zeros(1, 1, 2, 2)))
    assert torch.isfinite(p).all() and torch.allclose(p, torch.full_like(p, 2 / 3), atol=1e-6)


def test_members_of_different_context_each_get_their_central_slices():
    flat, wide = ConstantEngine(0.0, context=0, multiple=8), ConstantEngine(0.0, context=2, multiple=32)
    ens = EnsembleEngine([flat, wide])
    assert (ens.context, ens.multiple) == (2, 32)
    x = torch.arange(5.0).view(1, 5, 1, 1).expand(1, 5, 2, 2).contiguous()  # channel c holds the value c
    with ens.session():
        ens(x)
    assert torch.equal(flat.inputs[0], x[:, 2:3]) and torch.equal(wide.inputs[0], x)
    assert not flat.open and not wide.open  # both sessions closed again
    with pytest.raises(ValueError, match="5 input channels, got 3"):
        ens(x[:, :3])


def test_an_ensemble_has_two_or_more_members():
    with pytest.raises(ValueError, match="two or more"):
        EnsembleEngine([ConstantEngine(0.0)])


def test_a_flipped_view_of_a_25d_network_still_gets_its_neighbour_slices():
    from semicml.inference.predictor import engine_planes
    from semicml.inference.uncertainty import FlippedEngine

    net = ConstantEngine(0.0, context=1, multiple=4)
    engine_planes(FlippedEngine(net, (2,)), np.ones((5, 8, 8), np.float32))
    assert net.inputs and {x.shape[1] for x in net.inputs} == {3}


def test_ensemble_uncertainty_counts_every_run_and_flip_as_a_member():
    from semicml.inference.uncertainty import flip_spread

    image, _ = volume()
    ens = EnsembleEngine([ConstantEngine(0.0, multiple=4), ConstantEngine(math.log(3.0), multiple=4)])
    mean, std = flip_spread(ens, image, AFFINE, PREP, "T2")
    brain = np.zeros(image.shape, bool)
    brain[..., 1:7] = True  # the axial slices with a non-zero voxel (the rest is not run: 0)
    assert len(ens.members[0].inputs) == 4 and len(ens.members[1].inputs) == 4  # 4 flips each
    # members 0.5 (x4) and 0.75 (x4): mean 0.625, standard deviation 0.125 (the runs disagree)
    assert np.allclose(mean[brain], 0.625, atol=1e-5) and np.allclose(std[brain], 0.125, atol=1e-5)
    assert not mean[~brain].any()


# ------------------------------------------------------------------------------ the checks
INFO = {"preprocessing": {"size": 80, "normalisation": {"t2": {"scheme": "zscore_nonzero", "chosen_by": "option"},
                                                        "t1ce": {"scheme": "zscore_nonzero", "chosen_by": "option"}},
                          "spacing": {"in_plane_mm": 2.0, "rule": "given"}},
        "target": {"name": "wt", "classes": ["wt"], "values": [[1, 2, 4]]}}


def test_members_may_differ_in_provenance_text_and_other_modalities():
    other = json.loads(json.dumps(INFO))  # lists where the first has lists; JSON round trip
    other["preprocessing"]["normalisation"] = {"T2": {"scheme": "zscore_nonzero", "chosen_by": "default"}}
    other["preprocessing"]["spacing"]["rule"] = "median of the cases"
    assert ensemble_info(["a", "b"], [INFO, other], "t2") is INFO


@pytest.mark.parametrize("key, edit", [
    ("preprocessing", lambda i: i["preprocessing"].update(size=96)),
    ("preprocessing", lambda i: i["preprocessing"]["normalisation"]["t2"].update(scheme="percentile")),
    ("preprocessing", lambda i: i["preprocessing"]["spacing"].update(in_plane_mm=1.0)),
    ("target", lambda i: i["target"].update(classes=["wt", "tc", "et"])),
])
def test_members_that_see_other_input_are_refused_naming_the_run(key, edit):
    other = json.loads(json.dumps(INFO))
    edit(other)
    with pytest.raises(ConfigError) as info:
        ensemble_info(["runs/a", "runs/b"], [INFO, other], "t2")
    assert str(info.value).startswith(f"runs/b: its {key} differs from that of runs/a")


def test_an_export_and_a_weights_file_of_one_network_are_compatible_members():
    # an export's sidecar adds the code's clip percentiles and prose, and holds lists (JSON)
    sidecar = json.loads(json.dumps(INFO))
    sidecar["preprocessing"].update(clip_percentiles=[0.5, 99.5], normalisation_rule="text", window="text",
                                    orientation_rule="text")
    assert ensemble_info(["run", "run/export/t2.onnx"], [INFO, sidecar], "t2") is INFO
    sidecar["preprocessing"]["spacing"]["in_plane_mm"] = 1.0  # but what both record must agree
    with pytest.raises(ConfigError, match="^run/export/t2.onnx: its preprocessing differs"):
        ensemble_info(["run", "run/export/t2.onnx"], [INFO, sidecar], "t2")


def test_the_post_processing_most_members_chose_ties_to_the_first():
    assert postprocess_of_members(["largest", "largest"]) == ("largest", True)
    assert postprocess_of_members(["none", "largest", "largest"]) == ("largest", False)
    assert postprocess_of_members(["min-size:1000", "largest"]) == ("min-size:1000", False)
    # region networks: decided region by region (no two members agree on the whole dict here)
    regions = [{"wt": "none", "et": "largest"}, {"wt": "largest", "et": "largest"}, {"wt": "largest", "et": "none"}]
    assert postprocess_of_members(regions) == ({"wt": "largest", "et": "largest"}, False)
    assert postprocess_of_members([{"wt": "none", "et": "largest"}] * 2) == ({"wt": "none", "et": "largest"}, True)


# ------------------------------------------------------------------------------ predict with several runs
class ScaleNet(nn.Module):
    levels = 2

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * x


@pytest.fixture
def scaled(monkeypatch):
    monkeypatch.setattr(weights_mod, "build_network", lambda spec: ScaleNet(spec["scale"]))


@pytest.fixture
def cases(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, shift in (("a", 0), ("b", 3)):
        nib.save(nib.Nifti1Image(volume(shift)[0], AFFINE), str(folder / f"{name}.nii.gz"))
    return folder


def make_run(tmp_path: Path, name: str, scale: float, post: str = "none", prep: dict | None = None) -> Path:
    run = tmp_path / name
    (run / "weights").mkdir(parents=True)
    torch.save({"format": "semicml-weights-v1", "network": {"scale": scale}, "state_dict": {},
                "preprocessing": prep or PREP, "postprocessing": post}, run / "weights" / "T2.pt")
    return run


def probabilities(out: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(str(out / f"{case}_prob.nii.gz")).dataobj)


def test_predict_with_two_runs_writes_the_mean_of_their_probabilities(tmp_path, cases, scaled, capsys):
    # scales 1 and 0.2 give different probabilities everywhere the image is non-zero
    a, b = make_run(tmp_path, "a", 1.0, "largest"), make_run(tmp_path, "b", 0.2, "largest")
    for run, out in ((a, "pa"), (b, "pb")):
        predict_cases(run, "T2", cases, tmp_path / out, device="cpu", precision="fp32", save_probabilities=True,
                      progress=False)
    out = tmp_path / "ens"
    predict_cases([a, b], "T2", cases, out, device="cpu", precision="fp32", save_probabilities=True, progress=False)
    assert capsys.readouterr().err == ""  # the members agreed on the post-processing: nothing to say
    for case in ("a", "b"):
        want = (probabilities(tmp_path / "pa", case) + probabilities(tmp_path / "pb", case)) / 2
        got = probabilities(out, case)
        assert np.abs(got - want).max() < 1e-5 and np.abs(got - probabilities(tmp_path / "pa", case)).max() > 0.05
    record = json.loads((out / "predict.json").read_text())
    assert record["run"] == [str(a), str(b)] and record["postprocessing"] == "largest"


def test_disagreeing_post_processing_takes_the_majority_and_says_so(tmp_path, cases, scaled, capsys):
    runs = [make_run(tmp_path, "a", 1.0, "none"), make_run(tmp_path, "b", 1.0, "largest"),
            make_run(tmp_path, "c", 1.0, "largest")]
    out = tmp_path / "ens"
    predict_cases(runs, "T2", cases, out, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert "chose different post-processing" in err and "using largest" in err
    assert json.loads((out / "predict.json").read_text())["postprocessing"] == "largest"
    image, tumour = volume()
    mask = np.asarray(nib.load(str(out / "a.nii.gz")).dataobj)
    assert mask.sum() == 60 and mask.sum() < tumour.sum()  # the 4-voxel island removed: largest applied
    predict_cases(runs, "T2", cases, tmp_path / "forced", device="cpu", progress=False, postprocess="none")
    assert "chose different" not in capsys.readouterr().err  # an explicit choice overrides silently
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "forced" / "a.nii.gz")).dataobj), tumour)


def test_a_member_prepared_otherwise_is_refused_before_anything_is_written(tmp_path, cases, scaled):
    a = make_run(tmp_path, "a", 1.0)
    b = make_run(tmp_path, "b", 1.0, prep={**PREP, "size": 32})
    out = tmp_path / "ens"
    with pytest.raises(ConfigError, match=f"^{b}: its preprocessing differs from that of {a}"):
        predict_cases([a, b], "T2", cases, out, device="cpu", progress=False)
    assert not out.exists()


# ------------------------------------------------------------------------------ the command line
def test_cli_repeated_run_is_an_ensemble(tmp_path, cases, scaled, monkeypatch, capsys):
    from test_cli import run_cli

    a, b = make_run(tmp_path, "a", 1.0), make_run(tmp_path, "b", 0.2)
    code, out, err = run_cli(["predict", "--run", str(a), "--run", str(b), "--modality", "T2", "--input", str(cases),
                              "--out", str(tmp_path / "ens")], monkeypatch, capsys)
    assert code == 0 and "wrote 2 masks" in out
    assert json.loads((tmp_path / "ens" / "predict.json").read_text())["run"] == [str(a), str(b)]
    # fused from several runs (tests/test_fused_ensemble.py): these runs have no T1ce network
    code, out, err = run_cli(["predict", "--run", str(a), "--run", str(b), "--modality", "t2,t1ce", "--input",
                              str(cases), "--out", str(tmp_path / "fused")], monkeypatch, capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "t1ce" in err.lower()
    assert not (tmp_path / "fused").exists()
