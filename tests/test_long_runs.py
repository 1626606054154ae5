"""Long runs and reproducibility: log.jsonl and TensorBoard stay consistent across three crashes and
resumes (no duplicated or missing iteration); the same command twice gives identical weights,
metrics and masks on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from semicml.engine.trainer import FAULT_ENV

pytestmark = pytest.mark.slow
CASES = ["phantom_000", "phantom_003", "phantom_005"]


@pytest.fixture(scope="module")
def store(phantom_root, tmp_path_factory):
    from semicml.data.store import PrepareOptions, prepare_store

    return prepare_store(phantom_root, tmp_path_factory.mktemp("long") / "store",
                         PrepareOptions(modalities=("T2", "T1ce"), size=32, workers=1), progress=False)


def cli(args, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = str(fault)
    return subprocess.run([sys.executable, "-m", "semicml.cli", *map(str, args)], env=env, capture_output=True,
                          text=True)


def tensorboard_steps(run) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_log_and_tensorboard_consistent_after_three_resumes(store, tmp_path):
    run = tmp_path / "run"
    train = ["train", store, "--out", run, "--profile", "tiny", "--iterations", "12", "--val-every", "2",
             "--method", "supervised", "--num-workers", "0", "--device", "cpu", "--postprocess", "none"]
    first = cli(train, fault=3)
    assert first.returncode == 17, first.stderr  # crashed hard after iteration 3 (checkpoint: 2)
    for fault in (7, 9):  # two more crashes, each after a resume
        proc = cli(["train", store, "--out", run, "--resume"], fault=fault)
        assert proc.returncode == 17, proc.stderr
    proc = cli(["train", store, "--out", run, "--resume"])  # the third resume finishes
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    expected = list(range(2, 13, 2))  # tiny profile: a record every 2 iterations (log and validation)
    assert [r["iteration"] for r in rows] == expected
    assert all("loss" in r and "val_dice/T2" in r for r in rows)
    steps = tensorboard_steps(run)
    assert steps["loss"] == expected, steps["loss"]
    assert steps["val_dice/T2"] == expected
    # the values agree too: TensorBoard shows what log.jsonl holds
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [pytest.approx(r["loss"], rel=1e-6) for r in rows] == [e.value for e in acc.Scalars("loss")]


def test_same_command_twice_gives_identical_weights_metrics_and_masks(store, phantom_root, tmp_path):
    """train -> predict -> evaluate twice (in this process: the CLI calls these same functions)."""
    from semicml.config import build_config
    from semicml.engine.trainer import Trainer
    from semicml.evaluation.evaluate import evaluate_predictions
    from semicml.inference.predict import predict_cases

    outs = []
    for k in (1, 2):
        run, pred, ev = tmp_path / f"run{k}", tmp_path / f"pred{k}", tmp_path / f"eval{k}"
        cfg = build_config(profile="tiny", overrides={"iterations": 4, "val_every": 2, "method": "semicml-prel",
                                                      "num_workers": 0, "device": "cpu"})
        Trainer(cfg, store, run, progress=False).fit()
        predict_cases(run, "T1ce", phantom_root, pred, device="cpu", progress=False, cases=CASES)
        evaluate_predictions(pred, phantom_root, "wt", ev, progress=False, cases=CASES)
        outs.append((run, pred, ev))
    (r1, p1, e1), (r2, p2, e2) = outs
    a, b = torch.load(r1 / "checkpoint.pt", weights_only=True), torch.load(r2 / "checkpoint.pt", weights_only=True)
    assert a["networks"].keys() == b["networks"].keys()
    for key in a["networks"]:
        assert torch.equal(a["networks"][key], b["networks"][key]), key
    for m in ("T2", "T1ce"):
        wa = torch.load(r1 / "weights" / f"{m}.pt", weights_only=True)["state_dict"]
        wb = torch.load(r2 / "weights" / f"{m}.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ja, jb = json.loads((r1 / "run.json").read_text()), json.loads((r2 / "run.json").read_text())
    assert ja["best_val"] == jb["best_val"] and ja["postprocessing"] == jb["postprocessing"]
    assert (e1 / "metrics.csv").read_bytes() == (e2 / "metrics.csv").read_bytes()
    masks = sorted(p.name for p in p1.glob("*.nii.gz"))
    assert len(masks) == len(CASES) and all((p1 / n).read_bytes() == (p2 / n).read_bytes() for n in masks)


def test_rng_states_go_back_as_cpu_tensors_on_the_gpus_present(monkeypatch):
    """A CUDA resume failed with 'RNG state must be a torch.ByteTensor': the checkpoint is loaded
    onto the training device, so its RNG states came back as CUDA tensors. Every state must be
    handed back on the CPU, and only for the GPUs this machine has."""
    import torch

    from semicml.engine.trainer import restore_rng_states

    class NotOnCpu(torch.Tensor):  # stands in for a CUDA tensor on this CPU-only machine
        def cpu(self, *args, **kwargs):
            return torch.Tensor.cpu(self).as_subclass(torch.Tensor)

    given = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda rng, index: given.append((type(rng), rng.dtype, index)))
    cpu_state = torch.get_rng_state()
    states = [torch.zeros(16, dtype=torch.uint8).as_subclass(NotOnCpu) for _ in range(2)]  # written on 2 GPUs
    restore_rng_states({"torch_rng": cpu_state.as_subclass(NotOnCpu), "cuda_rng": states})
    assert given == [(torch.Tensor, torch.uint8, 0)]
    assert torch.equal(torch.get_rng_state(), cpu_state)
