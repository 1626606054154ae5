"""Region targets at the output end (issue 11): predict writes one label map (nesting rule) or one
mask per region; evaluate reports every metric per region plus the mean, in CSV, JSON, Markdown."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semicml.config import build_config
from semicml.data.store import PrepareOptions, prepare_store
from semicml.data.targets import Target, label_map_from_regions
from semicml.engine.trainer import Trainer
from semicml.errors import ConfigError
from semicml.evaluation.evaluate import evaluate_predictions
from semicml.inference.predict import predict_cases

from conftest import phantom_case_ids

PHANTOM_REGIONS = Target("regions", ["wt", "tc", "et"], [[1, 2, 3], [1, 3], [3]], regions=True, paint=[2, 1, 3])


@pytest.fixture(scope="module")
def region_run(phantom_root, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("region_run")
    store = prepare_store(phantom_root, tmp / "store", PrepareOptions(modalities=("T2", "T1ce"), size=64,
                                                                      target="regions"), progress=False)
    cfg = build_config(overrides={"method": "supervised", "model": {"base_width": 4, "levels": 2}, "iterations": 3,
                                  "labeled_batch": 4, "labeled_fraction": 0.5, "val_every": 3,
                                  "val_fraction": 0.2, "test_fraction": 0.2, "postprocess": "none",
                                  "optim": {"lr": 0.05}})
    Trainer(cfg, store, tmp / "run", progress=False).fit()
    # A few iterations do not learn tc and et: give the T2 network's head regions of known shape
    # instead. wt: z > q25, tc: z > q60 (nested in wt), et: z < q40 (NOT nested: painting order matters),
    # z = the wt logit, q = its quantiles over the brain of a case.
    import torch

    from semicml.data.store import SliceStore
    from semicml.inference.weights import load_weights

    path = tmp / "run" / "weights" / "T2.pt"
    net, payload = load_weights(tmp / "run", "T2", torch.device("cpu"))
    s = SliceStore(tmp / "store")
    planes = torch.from_numpy(np.asarray(s.images(next(iter(s.cases)))[:, :1], dtype=np.float32))
    with torch.no_grad():
        z = net(planes)[:, 0][planes[:, 0] != 0]
    q25, q40, q60 = (float(torch.quantile(z, q)) for q in (0.25, 0.4, 0.6))
    state = payload["state_dict"]
    w, b = state["head.weight"], state["head.bias"]
    state["head.weight"] = torch.stack([w[0], w[0], -w[0]])
    state["head.bias"] = torch.stack([b[0] - q25, b[0] - q60, q40 - b[0]])
    torch.save(payload, path)
    return tmp / "run"


def test_predict_paints_the_regions_into_one_label_map_or_writes_one_mask_each(region_run, phantom_root, tmp_path):
    case = phantom_case_ids(phantom_root)[0]
    maps = predict_cases(region_run, "T2", phantom_root, tmp_path / "map", cases=[case], progress=False,
                         threshold=0.5, save_probabilities=True)
    files = predict_cases(region_run, "T2", phantom_root, tmp_path / "files", cases=[case], progress=False,
                          threshold=0.5, regions_as_files=True)
    assert [p.relative_to(tmp_path / "files").as_posix() for p in files] == [f"{r}/{case}.nii.gz"
                                                                                for r in ("wt", "tc", "et")]
    masks = np.stack([np.asarray(nib.load(str(p)).dataobj) for p in files]).astype(bool)
    label = np.asarray(nib.load(str(maps[0])).dataobj)
    assert masks[1].any() and (masks[0] & ~masks[1]).any() and (masks[2] & masks[0]).any()  # not vacuous
    assert set(np.unique(label)) == {0, 1, 2, 3}
    # the label map is the masks painted in order (wt 2, then tc 1, then et 3 over it)
    np.testing.assert_array_equal(label, label_map_from_regions(masks, PHANTOM_REGIONS))
    probs = np.asarray(nib.load(str(tmp_path / "map" / f"{case}_prob.nii.gz")).dataobj)
    assert probs.shape == (*label.shape, 3)
    np.testing.assert_array_equal(masks, np.moveaxis(probs, -1, 0) > 0.5)  # postprocess none: the threshold
    about = json.loads((tmp_path / "files" / "predict.json").read_text())
    assert about["regions"]["classes"] == ["wt", "tc", "et"] and about["regions"]["written_as"] == "one mask per region"


def test_label_maps_follow_the_inputs_labelling_and_evaluate_refuses_a_foreign_one(region_run, phantom_root,
                                                                                   tmp_path):
    """The network learnt enhancing tumour as 3 (the phantom's labelling); on BraTS 2018-named
    scans (enhancing tumour 4) its label map paints 4, as those scans' own labels do; a label map
    in one labelling evaluated against the other is refused, not scored as background."""
    from conftest import make_brats_fixture

    from semicml.errors import DataError

    case = phantom_case_ids(phantom_root)[0]
    brats = make_brats_fixture(phantom_root, tmp_path, cases=1)
    own = predict_cases(region_run, "T2", phantom_root, tmp_path / "own", cases=[case], progress=False, threshold=0.5)
    old = predict_cases(region_run, "T2", brats, tmp_path / "old", cases=[case], progress=False, threshold=0.5)
    label_own = np.asarray(nib.load(str(own[0])).dataobj)
    label_old = np.asarray(nib.load(str(old[0])).dataobj)
    assert set(np.unique(label_own)) == {0, 1, 2, 3} and set(np.unique(label_old)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(label_old, np.where(label_own == 3, 4, label_own))
    about = json.loads((tmp_path / "old" / "predict.json").read_text())
    assert about["regions"]["values"] == [[1, 2, 4], [1, 4], [4]] and "[2, 1, 4]" in about["regions"]["written_as"]
    # each map scored against its own labelling: the same numbers; against the other: one-line refusal
    good = evaluate_predictions(tmp_path / "old", brats, "regions", tmp_path / "e1", cases=[case], progress=False)
    same = evaluate_predictions(tmp_path / "own", phantom_root, "regions", tmp_path / "e0", cases=[case],
                                progress=False)
    assert good["regions"] == same["regions"] and good["regions"]["et"]["mean"]["dice"] > 0
    with pytest.raises(DataError, match=r"label map holds value\(s\) 4, which the reference's labels \(0, 1, 2, 3\) do not use"):
        evaluate_predictions(tmp_path / "old", phantom_root, "regions", tmp_path / "e2", cases=[case], progress=False)
    # a label value of the reference that the asked regions do not use (edema, 2, for tc,et) is no foreign value
    ref = nib.load(str(phantom_root / "labelsTr" / f"{case}.nii.gz"))
    _write(tmp_path / "exact" / f"{case}.nii.gz", np.asarray(ref.dataobj), ref.affine)
    exact = evaluate_predictions(tmp_path / "exact", phantom_root, "tc,et", tmp_path / "e3", cases=[case],
                                 progress=False)
    assert exact["mean"]["dice"] == 1.0


def test_regions_as_files_needs_a_region_network(region_run, phantom_root, tmp_path):
    import torch

    from semicml.models import build_network

    payload = torch.load(region_run / "weights" / "T2.pt", weights_only=False)
    spec = {**payload["network"], "out_channels": 1}
    binary = {**payload, "network": spec, "state_dict": build_network(spec).state_dict(), "postprocessing": "none",
              "target": {"name": "wt", "classes": ["wt"], "values": [[1, 2, 3]]}}
    torch.save(binary, tmp_path / "T2.pt")
    with pytest.raises(ConfigError, match="--regions-as-files needs a network trained on a region target"):
        predict_cases(tmp_path / "T2.pt", "T2", phantom_root, tmp_path / "out", progress=False, regions_as_files=True)
    assert not (tmp_path / "out").exists()  # nothing written


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(path))


def test_evaluate_reports_every_metric_per_region_and_the_mean(phantom_root, tmp_path):
    cases = phantom_case_ids(phantom_root)[:2]
    for case in cases:
        img = nib.load(str(phantom_root / "labelsTr" / f"{case}.nii.gz"))
        label = np.asarray(img.dataobj)
        # case 0 exact; case 1 with the enhancing rim called necrosis: wt and tc exact, et empty
        pred = label.copy() if case == cases[0] else np.where(label == 3, 1, label)
        _write(tmp_path / "maps" / f"{case}.nii.gz", pred, img.affine)
        for k, values in enumerate(PHANTOM_REGIONS.values):  # the same prediction as one mask per region
            _write(tmp_path / "files" / PHANTOM_REGIONS.classes[k] / f"{case}.nii.gz", np.isin(pred, values), img.affine)
    summary = evaluate_predictions(tmp_path / "maps", phantom_root, "regions", tmp_path / "eval", cases=cases,
                                   progress=False)
    assert summary["regions"]["wt"]["mean"]["dice"] == 1.0 and summary["regions"]["tc"]["mean"]["dice"] == 1.0
    assert summary["regions"]["et"]["mean"]["dice"] == 0.5  # 1 (exact) and 0 (empty prediction)
    assert summary["mean"]["dice"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert summary["regions"]["et"]["n_empty_pred"] == 1
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert [(r["case"], r["region"]) for r in rows] == [(c, r) for c in cases for r in ("wt", "tc", "et", "mean")]
    mean1 = next(r for r in rows if r["case"] == cases[1] and r["region"] == "mean")
    assert float(mean1["dice"]) == pytest.approx(2 / 3)
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["region_order"] == ["wt", "tc", "et"] and saved["target"]["paint"] == [2, 1, 3]
    assert saved["mean"] == summary["mean"] and set(saved["regions"]) == {"wt", "tc", "et"}
    md = (tmp_path / "eval" / "summary.md").read_text()
    assert "| **mean over regions** | 0.8333 ± 0.2357 |" in md and "## et" in md
    # one mask per region: the same numbers
    again = evaluate_predictions(tmp_path / "files", phantom_root, "wt,tc,et", tmp_path / "eval2", cases=cases,
                                 progress=False)
    assert again["regions"] == summary["regions"] and again["mean"] == summary["mean"]



def test_cli_predict_regions_as_files_then_evaluate_per_region(region_run, phantom_root, tmp_path, monkeypatch,
                                                              capsys):
    from test_cli import run_cli

    case = phantom_case_ids(phantom_root)[1]
    code, out, err = run_cli(["predict", "--run", str(region_run), "--modality", "t2", "--input", str(phantom_root),
                              "--out", str(tmp_path / "p"), "--cases", case, "--regions-as-files"], monkeypatch, capsys)
    assert code == 0, err
    assert sorted(p.relative_to(tmp_path / "p").as_posix() for p in (tmp_path / "p").rglob("*.nii.gz")) == [
        f"{r}/{case}.nii.gz" for r in ("et", "tc", "wt")]
    code, out, err = run_cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(phantom_root), "--target",
                              "regions", "--out", str(tmp_path / "e"), "--cases", case], monkeypatch, capsys)
    assert code == 0, err
    assert "| **mean over regions** |" in out and "## wt" in out
    # a binary evaluation of a region folder is a one-line error, not a traceback
    code, out, err = run_cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(phantom_root), "--target", "wt",
                              "--out", str(tmp_path / "e2"), "--cases", case], monkeypatch, capsys)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
