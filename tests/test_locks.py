"""Two processes on one run, store or prediction folder: the second fails at once with a one-line
error naming the first one's PID; a lock left by a SIGKILLed process is stale and taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults import run_cli
from semicml.errors import BusyError
from semicml.locking import ensure_free, exclusive, lock_path

HOLD = ("import sys, time\nfrom semicml.locking import exclusive\n"
        "with exclusive(sys.argv[1], 'test'):\n    print('locked', flush=True)\n    time.sleep(120)\n")


def hold(target: Path) -> subprocess.Popen:
    """Another process holding ``target``'s lock (as a running prepare/train/predict does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def store(phantom_root, tmp_path_factory):
    from semicml.data.store import PrepareOptions, prepare_store

    return prepare_store(phantom_root, tmp_path_factory.mktemp("locks") / "store",
                         PrepareOptions(modalities=("T2", "T1ce"), size=32, workers=1), progress=False)


def assert_busy(rc: int, err: str, pid: int) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and f"PID {pid}" in lines[0] and "Traceback" not in err, err


def test_second_prepare_into_the_same_store_names_the_first(phantom_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "store"
    proc = hold(out)
    try:
        rc, _, err = run_cli(["prepare", phantom_root, out, "--modalities", "T2", "--size", "32"], monkeypatch, capsys)
        assert_busy(rc, err, proc.pid)
        assert not out.exists() and not list(tmp_path.glob("store.partial-*"))
    finally:
        kill(proc)
    # stale after SIGKILL: the lock file is still there, but nobody holds it -> taken over
    assert lock_path(out).is_file()
    rc, _, err = run_cli(["prepare", phantom_root, out, "--modalities", "T2", "--size", "32", "--workers", "1"],
                         monkeypatch, capsys)
    assert rc == 0, err
    assert (out / "store.json").is_file() and not lock_path(out).exists()  # released and removed


@pytest.mark.slow
def test_second_train_on_a_running_run_names_its_pid(store, tmp_path, monkeypatch, capsys):
    """A real `semicml train` is running (checkpoints written); a second `train --out RUN` and a
    `train --resume` both fail naming its PID; after SIGKILL, --resume is accepted."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "semicml.cli", "train", str(store), "--out", str(run), "--profile", "tiny",
           "--iterations", "100000", "--val-every", "2", "--method", "supervised", "--num-workers", "0",
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").is_file():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        rc, _, err = run_cli(["train", store, "--out", run, "--profile", "tiny"], monkeypatch, capsys)
        assert_busy(rc, err, proc.pid)
        rc, _, err = run_cli(["train", store, "--out", run, "--resume"], monkeypatch, capsys)
        assert_busy(rc, err, proc.pid)
    finally:
        kill(proc)
    assert lock_path(run).is_file()  # left behind by the killed process ...
    ensure_free(run, "training run")  # ... and stale: nobody holds it
    from semicml.config import build_config
    from semicml.engine.trainer import Trainer

    trainer = Trainer(build_config(run / "config.yaml"), store, run, resume=True, progress=False)
    assert trainer.iteration >= 2


def test_predict_into_a_folder_another_predict_is_writing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "pred"
    proc = hold(out)
    try:
        with pytest.raises(BusyError, match=f"PID {proc.pid}"):
            with exclusive(out, "prediction folder"):
                pass
    finally:
        kill(proc)
    with exclusive(out, "prediction folder") as path:  # taken over
        assert path.read_text().split()[0] == str(os.getpid())
    assert not path.exists()


@pytest.mark.slow
def test_predict_cli_names_the_holder(store, phantom_root, tmp_path, monkeypatch, capsys):
    from semicml.config import build_config
    from semicml.engine.trainer import Trainer

    run = tmp_path / "run"
    Trainer(build_config(profile="tiny", overrides={"iterations": 2, "method": "supervised", "num_workers": 0}),
            store, run, progress=False).fit()
    src = phantom_root
    out = tmp_path / "pred"
    proc = hold(out)
    try:
        rc, _, err = run_cli(["predict", "--run", run, "--modality", "T2", "--input", src, "--out", out],
                             monkeypatch, capsys)
        assert_busy(rc, err, proc.pid)
        assert not out.exists()
    finally:
        kill(proc)


def test_lock_in_the_same_process_is_exclusive_too(tmp_path):
    with exclusive(tmp_path / "x", "run"):
        with pytest.raises(BusyError, match=f"PID {os.getpid()}"):
            with exclusive(tmp_path / "x", "run"):
                pass


def test_a_grid_step_never_deletes_a_run_another_process_is_training(tmp_path):
    """A run folder without a checkpoint is a run that died early, and the grid's step starts it
    afresh; but if another process holds it (its first checkpoint not written yet), deleting it
    pulled the folder from under that process (seen with two seed reruns on one folder)."""
    from semicml.benchmark.runner import _train_and_evaluate

    run = tmp_path / "runs" / "fold3"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1\n")
    proc = hold(run)
    try:
        with pytest.raises(BusyError, match="in use by another semicml process"):
            _train_and_evaluate(None, None, tmp_path, run, progress=False)
        assert (run / "config.yaml").is_file()
    finally:
        kill(proc)


def test_only_rank_zero_probes_a_run_lock(tmp_path, monkeypatch):
    """Every rank of a torchrun job checks the run folder before the group exists; if each also
    probed its lock, two ranks probing at the same moment found each other busy ("PID unknown",
    seen once in CI on a DDP resume). Rank 0 probes for the job; the others do not."""
    from semicml.engine.trainer import Trainer

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    check = Trainer.__new__(Trainer)
    check.run_dir, check.resume = run, True
    proc = hold(run)
    try:
        monkeypatch.setenv("RANK", "1")
        check._check_run_dir()  # rank 1: no probe, the folder itself is fine
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(BusyError, match="in use by another semicml process"):
            check._check_run_dir()
    finally:
        kill(proc)
