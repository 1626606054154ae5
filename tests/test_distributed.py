"""Distributed training (DDP, gloo on CPU): 2 ranks reproduce the 1-process run of the same global batch.

One launch of 2 spawned ranks (``tests/ddp_worker.py``, one gloo group, ~15 s on 2 cores) runs:
``probe`` (batch-coupled losses and the CPU SyncBatchNorm on shards of a fixed batch), ``ddp``
(semicml-prel, 10 iterations, made deterministic: no dropout, no input noise, so that one process
and two must agree), ``ema`` (mean-teacher: per-rank input noise, EMA teachers) and ``killed`` (the
``ddp`` run crashed after iteration 7, last checkpoint at 6). The killed run is then resumed by
``torchrun --nproc_per_node 2 -m semicml train --resume`` and, from a copy, by one process.

Tolerances, and why (measured on the 2-core AVX2 host; the ranks and the one-process runs all
use one thread, as a different thread count changes the summation order of every convolution):
* Losses and gradients of one step on fixed inputs (``probe``) agree to 1e-5 relative (float32
  summation order: shard sums + all-reduce vs one sum).
* Logged loss per iteration: relative 1e-6 at iteration 1 (same weights; measured 0) and 1e-4
  afterwards (measured 2e-7 at worst over 10 iterations). The margin is for Adam: in its first
  steps every weight moves by about ``lr * sign(g)``, so an element whose gradient is at
  float-noise level can flip sign and end ``2 lr`` away (seen, with 2 threads in one run and 1 in
  the other: 2% of the elements, 1.7e-5 on the loss). A real error is far outside: the same run
  with per-rank BatchNorm (``sync_batchnorm: false``) is off by 1e-4 at iteration 1, 2e-3 later.
* Final weights: the distance between the two runs' students relative to how far training moved
  them, ``|w_2 - w_1| / |w_1 - w_0| < 0.02`` (L2 over all parameters): measured 5e-6 (largest
  element 4e-6); per-rank BatchNorm gives 0.73. 0.02 leaves room for a sign flip or two.
* What must be identical is compared with ``torch.equal``: the ranks' students and teachers, and
  a killed-and-resumed 2-rank run vs the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from semicml.config import build_config
from semicml.data.sampler import TwoStreamBatchSampler
from semicml.data.store import PrepareOptions, prepare_store
from semicml.engine.distributed import step_seed
from semicml.engine.trainer import FAULT_ENV, Trainer
from semicml.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import free_port, probe, run_rank, teardown_rank  # noqa: E402

# Deterministic semicml-prel (no dropout anywhere, no PReL input noise): the two runs can agree.
DDP = {"method": "semicml-prel", "model": {"base_width": 4, "levels": 2, "dropout": [0, 0, 0]},
       "prel": {"noise_std": 0.0}, "iterations": 10, "labeled_batch": 2, "unlabeled_batch": 2, "val_every": 3,
       # fp32: the rank sums must agree to 1e-6 (auto picks bf16 on CPUs with AVX512-BF16 or AMX)
       "log_every": 1, "device": "cpu", "precision": "fp32", "val_fraction": 0.34, "test_fraction": 0.17,
       # CPU time: choosing post-processing on validation imports MONAI (seconds per process), and
       # BatchNorm on 4 channels is several times slower channels-last.
       "postprocess": "none", "channels_last": False}
EMA = {**DDP, "method": "mean-teacher", "model": {"base_width": 4, "levels": 2}, "iterations": 4, "val_every": 4}


# ---------------------------------------------------------------------------------------------- fast
def test_shards_concatenate_to_the_one_process_batch():
    kw = dict(n_labeled=50, n_unlabeled=70, labeled_batch=6, unlabeled_batch=4, seed=3, start=5, stop=9,
              labeled_foreground=[1, 4, 9, 16], foreground_fraction=0.33)
    whole = list(TwoStreamBatchSampler(**kw))
    shards = [list(TwoStreamBatchSampler(**kw, rank=r, world_size=2)) for r in range(2)]
    for k, batch in enumerate(whole):
        r0, r1 = shards[0][k], shards[1][k]
        assert len(r0) == len(r1) == 5  # 3 labelled + 2 unlabelled each
        # labelled streams, then unlabelled streams, in rank order: exactly the global batch
        assert r0[:3] + r1[:3] + r0[3:] + r1[3:] == batch
        assert all(i < 50 for i, _, _ in r0[:3] + r1[:3]) and all(i >= 50 for i, _, _ in r0[3:] + r1[3:])
    with pytest.raises(ValueError, match="divisible"):
        TwoStreamBatchSampler(**kw, rank=0, world_size=4)  # 6 labelled slices do not split 4 ways


def test_step_seeds_differ_between_ranks_and_steps():
    seeds = {step_seed(0, it, r) for it in range(3) for r in range(4)}
    assert len(seeds) == 12 and step_seed(0, 1, 1) == step_seed(0, 1, 1)


def test_sync_batchnorm_conversion_keeps_the_checkpoint_format():
    from torch import nn

    from semicml.models import build_network, network_spec
    from semicml.models.syncbn import CPUSyncBatchNorm2d, convert_sync_batchnorm

    cfg = build_config(profile="tiny")
    torch.manual_seed(0)
    plain = build_network(network_spec(cfg, 1))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    x = torch.randn(3, 1, 32, 32)
    plain.train()
    torch.manual_seed(1)  # same dropout masks in both forwards
    expected = plain(x)
    torch.manual_seed(0)
    synced = convert_sync_batchnorm(build_network(network_spec(cfg, 1)), torch.device("cpu"))
    kinds = [type(m) for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds and set(kinds) == {CPUSyncBatchNorm2d}
    assert synced.state_dict().keys() == before.keys()
    assert all(torch.equal(synced.state_dict()[k], before[k]) for k in before)
    synced.train()
    torch.manual_seed(1)
    torch.testing.assert_close(synced(x), expected)  # no process group: plain BatchNorm
    torch.testing.assert_close(synced.state_dict(), plain.state_dict())  # same running statistics


@pytest.fixture(scope="module")
def small_store(phantom_root, tmp_path_factory) -> Path:
    return prepare_store(phantom_root, tmp_path_factory.mktemp("s") / "store",
                         PrepareOptions(modalities=("T2", "T1ce"), size=64), progress=False)


def test_batch_not_divisible_by_world_size_is_refused_before_any_work(small_store, tmp_path, monkeypatch):
    store = small_store
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun --nproc_per_node 3 would; refused before joining a group
    with pytest.raises(ConfigError, match="labeled_batch 2 and unlabeled_batch 2 not divisible by the world size 3"):
        Trainer(build_config(profile="tiny"), store, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_reports_indivisible_batch_in_one_line(small_store, tmp_path, monkeypatch, capsys):
    from faults import run_cli

    store = small_store
    monkeypatch.setenv("WORLD_SIZE", "4")
    code, _, err = run_cli(["train", store, "--out", tmp_path / "run", "--profile", "tiny"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "world size 4" in err, err


# ---------------------------------------------------------------------------------------------- DDP
def _log(run: Path) -> dict[int, dict]:
    return {r["iteration"]: r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


def _networks(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["networks"]


@contextlib.contextmanager
def one_thread():
    """Like each rank: on this shared 2-core host two threads on tiny tensors cost 20x the CPU time."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _relative_distance(a: dict, b: dict, start: dict, prefix: str = "students.") -> float:
    keys = [k for k in start if k.startswith(prefix) and start[k].dtype.is_floating_point and "running_" not in k]

    def flat(s: dict) -> torch.Tensor:
        return torch.cat([s[k].flatten().float() for k in keys])

    return float((flat(a) - flat(b)).norm() / (flat(a) - flat(start)).norm())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from semicml.data.phantom import write_phantom

    root = tmp_path_factory.mktemp("ddp")
    data = write_phantom(root / "data", cases=6, seed=0, shape=(48, 48, 16))
    store = prepare_store(data, root / "store", PrepareOptions(modalities=("T2", "T1ce"), size=48), progress=False)
    with one_thread():
        one = Trainer(build_config(overrides=DDP), store, root / "one", progress=False)
        torch.save(one.method.state_dict(), root / "start.pt")
        one.fit()
    jobs = [{"name": "probe"},
            {"name": "ddp", "overrides": DDP, "store": str(store), "run": str(root / "ddp")},
            {"name": "ema", "overrides": EMA, "store": str(store), "run": str(root / "ema")},
            {"name": "killed", "overrides": DDP, "store": str(store), "run": str(root / "killed"),
             "env": {FAULT_ENV: "7"}}]
    with pytest.raises(mp.ProcessExitedException) as crash:  # the last job crashes both ranks
        mp.spawn(run_rank, args=(2, free_port(), jobs, str(root)), nprocs=2)
    assert crash.value.exit_code == 17
    return {"root": root, "store": store}


@pytest.mark.slow
def test_losses_and_syncbn_on_shards_equal_the_global_batch(runs):
    ref = probe(0, 1)
    ranks = [torch.load(runs["root"] / f"probe-rank{r}.pt") for r in range(2)]
    for key, value in ref.items():
        if key.startswith(("bn_grad_weight", "bn_grad_bias")) or key in ("sup_batch", "sup_slice"):
            # parameter gradients and the local-mean BCE are what DDP averages over the ranks
            got = (ranks[0][key] + ranks[1][key]) / 2
        elif key.endswith("grad") or "_grad_" in key:
            got = torch.cat([ranks[0][key], ranks[1][key]]) / 2  # shard gradients carry DDP's factor W = 2
        elif key in ("bn_out",):
            got = torch.cat([ranks[0][key], ranks[1][key]])
        else:  # global values: the same on every rank
            assert torch.equal(ranks[0][key], ranks[1][key]), key
            got = ranks[0][key]
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6, msg=key)
    assert float(ref["asc"]) > 0 and float(ref["bn_grad_x"].abs().max()) > 0  # nothing vacuous


@pytest.mark.slow
def test_two_ranks_match_one_process(runs):
    root = runs["root"]
    one, two = _log(root / "one"), _log(root / "ddp")
    assert sorted(one) == sorted(two) == list(range(1, 11))
    assert len((root / "ddp" / "log.jsonl").read_text().splitlines()) == 10  # rank 0 alone logged
    for it in one:
        assert one[it]["phase"] == two[it]["phase"]
        tol = 1e-6 if it == 1 else 1e-4
        assert two[it]["loss"] == pytest.approx(one[it]["loss"], rel=tol), it
    assert {r["phase"] for r in one.values()} == {"semicml", "prel"}
    info1, info2 = (json.loads((root / r / "run.json").read_text()) for r in ("one", "ddp"))
    assert info2["teacher"]["modality"] == info1["teacher"]["modality"]
    assert info2["distributed"] == {"world_size": 2, "sync_batchnorm": True, "backend": "gloo"}
    assert info1["distributed"] == {"world_size": 1, "sync_batchnorm": False, "backend": None}
    assert len(list((root / "ddp" / "tensorboard").glob("events.*"))) == 1
    start = torch.load(root / "start.pt")
    assert _relative_distance(_networks(root / "one"), _networks(root / "ddp"), start) < 0.02
    # every rank holds the same students AND teachers (BMA): rank 1's equal rank 0's checkpoint
    r0, r1 = (torch.load(root / f"ddp-rank{r}.pt") for r in range(2))
    saved = _networks(root / "ddp")
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(r0[k], saved[k]) for k in saved)
    assert any(k.startswith("teachers.") for k in saved)


@pytest.mark.slow
def test_ema_teachers_identical_on_every_rank(runs):
    root = runs["root"]
    r0, r1 = (torch.load(root / f"ema-rank{r}.pt") for r in range(2))
    teachers = [k for k in r0 if k.startswith("teachers.")]
    assert teachers and all(torch.equal(r0[k], r1[k]) for k in r0)
    start = Trainer(build_config(overrides=EMA), runs["store"], root / "ema-unused", progress=False).method.state_dict()
    assert any(not torch.equal(r0[k], start[k]) for k in teachers)  # the EMA did move


@pytest.mark.slow
def test_killed_ddp_run_resumes_with_torchrun_and_with_one_process(runs):
    root, store = runs["root"], runs["store"]
    killed = root / "killed"
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["iteration"] == 6
    alone = root / "killed-alone"
    shutil.copytree(killed, alone)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "semicml", "train", str(store), "--out", str(killed), "--resume"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # rank 0 alone reports
    full, resumed = _networks(root / "ddp"), _networks(killed)
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # as if never killed
    log = _log(killed)
    assert sorted(log) == list(range(1, 11)) and log[10]["loss"] == _log(root / "ddp")[10]["loss"]
    # The checkpoint does not depend on the world size: one process finishes the 2-rank run.
    with one_thread():
        Trainer(build_config(alone / "config.yaml"), store, alone, resume=True, progress=False).fit()
    one = _networks(root / "one")
    assert _relative_distance(one, _networks(alone), torch.load(root / "start.pt")) < 0.02
    assert json.loads((alone / "run.json").read_text())["distributed"]["world_size"] == 1


@pytest.mark.parametrize("mode", ["finished", "error", "rank0-failed"])
def test_ranks_leave_together_after_a_normal_end_and_at_once_after_an_error(tmp_path, mode):
    # A rank that tore gloo down while rank 0 still worked sometimes aborted at exit ("terminate
    # called without an active exception"): after a normal end every rank waits for rank 0; after an
    # error nobody waits (a peer may sit inside a collective), even while the failed process lives on.
    mp.spawn(teardown_rank, args=(2, free_port(), mode, str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"teardown-rank{r}.json").read_text()) for r in (0, 1))
    assert r0["owns"] and r1["owns"] and r0["destroyed"] and r1["destroyed"]
    if mode == "finished":
        assert r1["left"] >= r0["work_done"]
    elif mode == "error":
        assert r1["left"] < r0["work_done"] - 1.0
    else:  # rank 1 waited for rank 0's shutdown, not for the end of its process (3 s later)
        assert r0["work_done"] <= r1["left"] < r0["left"] + 2.0


def test_backend_is_nccl_on_cuda_gloo_on_cpu_and_the_override_is_checked(monkeypatch):
    from semicml.engine.distributed import _backend

    monkeypatch.delenv("SEMICML_DIST_BACKEND", raising=False)
    assert _backend(torch.device("cuda", 0)) == "nccl" and _backend(torch.device("cpu")) == "gloo"
    monkeypatch.setenv("SEMICML_DIST_BACKEND", "Gloo")  # one GPU shared by several ranks
    assert _backend(torch.device("cuda", 0)) == "gloo"
    monkeypatch.setenv("SEMICML_DIST_BACKEND", "nccl")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        _backend(torch.device("cpu"))
    monkeypatch.setenv("SEMICML_DIST_BACKEND", "mpi")
    with pytest.raises(ConfigError, match="choose gloo or nccl"):
        _backend(torch.device("cuda", 0))
