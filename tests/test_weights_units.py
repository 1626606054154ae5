"""Finding and loading the trained network of one modality (``inference/weights.py``), fast.

What ``predict`` and ``export`` rely on: the weights file of a modality in any case, one-line
errors that name the run or the file and list what the run has, the network rebuilt with the
saved weights in eval mode on the device asked for, and weights written on a GPU machine loading
on a CPU-only one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semicml.errors import DataError
from semicml.inference.weights import load_weights, weights_path
from semicml.models import build_network

SPEC = {"in_channels": 1, "out_channels": 1, "widths": [2, 4], "dropout": [0.0, 0.1]}


def save_weights(run: Path, modality: str, **extra) -> torch.nn.Module:
    torch.manual_seed(len(modality))
    net = build_network(SPEC)
    (run / "weights").mkdir(parents=True, exist_ok=True)
    payload = {"format": "semicml-weights-v1", "modality": modality, "network": SPEC,
               "state_dict": net.state_dict(), **extra}
    torch.save(payload, run / "weights" / f"{modality}.pt")
    return net


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_weights_path_finds_the_modality_in_any_case_or_takes_a_file_as_it_is(tmp_path):
    run = tmp_path / "run"
    save_weights(run, "T1ce")
    save_weights(run, "FLAIR")
    (run / "weights" / "notes.txt").write_text("not weights")
    assert weights_path(run, "t1CE") == run / "weights" / "T1ce.pt"
    assert weights_path(str(run), "flair") == run / "weights" / "FLAIR.pt"
    file = run / "weights" / "FLAIR.pt"
    assert weights_path(file, "anything") == file  # a weights file: the caller checks its modality


@pytest.mark.parametrize("setup, problem", [
    ("missing", "{run}: run directory not found"),
    ("a-file-that-is-not-there", "{run}: run directory not found"),
    ("others", "{run}: no network for modality 'T2' in this run (has: FLAIR, T1, T1ce)"),
    ("empty", "{run}: no network for modality 'T2' in this run (has: none)"),
    ("no-weights-folder", "{run}: no network for modality 'T2' in this run (has: none)"),
])
def test_weights_path_errors_name_the_run_and_what_it_has(tmp_path, setup, problem):
    run = tmp_path / ("run.pt" if setup == "a-file-that-is-not-there" else "run")
    if setup == "others":
        for modality in ("T1ce", "FLAIR", "T1"):  # listed sorted, whatever the directory order
            save_weights(run, modality)
        (run / "weights" / "T2.pt.tmp").write_text("a half-written file is not a network")
    elif setup == "empty":
        (run / "weights").mkdir(parents=True)
    elif setup == "no-weights-folder":
        run.mkdir()
    with pytest.raises(DataError) as err:
        weights_path(run, "T2")
    assert str(err.value) == problem.format(run=run)
    assert err.value.path == run


def test_load_weights_rebuilds_the_saved_network_in_eval_mode(tmp_path):
    run = tmp_path / "run"
    saved = save_weights(run, "T2", preprocessing={"size": 32})
    for where in (run, run / "weights" / "T2.pt"):
        net, payload = load_weights(where, "t2", torch.device("cpu"))
        assert same_weights(net, saved) and not any(m.training for m in net.modules())
        assert payload["modality"] == "T2" and payload["preprocessing"] == {"size": 32}
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(net(x), saved.eval()(x))


def test_load_weights_puts_the_network_on_the_device_asked_for(tmp_path):
    run = tmp_path / "run"
    save_weights(run, "T2")
    net, _ = load_weights(run, "T2", torch.device("meta"))  # a device other than the CPU that needs no hardware
    assert {p.device.type for p in net.parameters()} == {"meta"}


def test_weights_written_on_a_gpu_machine_load_on_the_cpu(tmp_path, monkeypatch):
    run = tmp_path / "run"
    # torch.save records each tensor's device; pretend the trainer ran on CUDA
    import torch.serialization

    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        saved = save_weights(run, "T2")
    assert b"cuda:0" in (run / "weights" / "T2.pt").read_bytes()
    net, _ = load_weights(run, "T2", torch.device("cpu"))
    assert same_weights(net, saved) and {p.device.type for p in net.parameters()} == {"cpu"}


def test_a_file_that_is_not_semicml_weights_is_a_one_line_error(tmp_path):
    run = tmp_path / "run"
    save_weights(run, "T2", format="something-else")
    torch.save({"state_dict": {}}, run / "weights" / "FLAIR.pt")  # no format at all
    for modality in ("T2", "FLAIR"):
        path = run / "weights" / f"{modality}.pt"
        with pytest.raises(DataError) as err:
            load_weights(run, modality, torch.device("cpu"))
        assert str(err.value) == f"{path}: not a semicml weights file" and err.value.path == path
