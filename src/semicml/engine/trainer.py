"""The one training loop shared by every method.

Hooks, in order, per iteration: ``method.train_step`` (losses) -> backward -> optimiser step ->
``on_iteration_end`` (logging; every ``val_every``: ``validate`` -> ``method.on_validation`` ->
best-model bookkeeping -> ``save_checkpoint``). Model selection uses the VAL split only.

Run directory::

    config.yaml            resolved configuration
    run.json               modalities, preprocessing, target, splits, teacher choice, metrics
    splits.json            patient-level split used
    labeled_subset.json    which training slices were labelled
    log.jsonl              one JSON record per logged iteration / validation
    tensorboard/           the same scalars for TensorBoard
    checkpoint.pt          full state for --resume (atomic)
    weights/<modality>.pt  best-validation network of each modality; ``predict`` needs only this

Distributed (torchrun, see ``engine/distributed.py``): every rank runs this loop on its shard of
each global batch; rank 0 alone writes the run directory, validation is sharded by case.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import TrainConfig, dump_config
from ..data.sampler import PairedSliceDataset, TwoStreamBatchSampler, make_loader
from ..data.splits import Splits, load_or_make_subset, load_splits, make_splits, check_splits
from ..data.store import SliceStore
from ..errors import ConfigError, DataError
from ..hardware import compute_record, resolve_precision
from ..inference.weights import load_weights
from ..io_utils import atomic_save_torch, atomic_write_json, atomic_write_text
from ..locking import ensure_free, exclusive
from ..methods.base import Method, MethodContext, get_method
from ..models import build_network, network_spec
from ..models.syncbn import convert_sync_batchnorm
from ..parallel import all_gather_objects, barrier, mean_over_ranks, sharded_batch
from .distributed import (active_backend, check_shardable, launched_rank, launched_world_size, setup_distributed,
                          shutdown, step_seed, wrap_ddp)
from .augmentation import augment_options
from .averaging import WeightAverage
from .provenance import check_provenance, compute_changes, provenance
from .run_log import append_record, log_until, open_tensorboard
from .validation import case_channel_dice, choose_postprocessing, region_means
from .schedule import lr_factor

# Test hook: simulate a crash (hard exit, no cleanup) right after this iteration.
FAULT_ENV = "SEMICML_FAULT_AFTER_ITERATION"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)



def restore_rng_states(state: dict[str, Any]) -> None:
    """Put back the RNG states of a checkpoint. The checkpoint is loaded onto the training device,
    but RNG states must be CPU byte tensors (a CUDA resume failed on exactly this); a machine with
    fewer GPUs than the one that wrote the checkpoint restores the GPUs it has."""
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") and torch.cuda.is_available():
        for index, rng in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng.cpu(), index)


class Trainer:
    def __init__(self, cfg: TrainConfig, store: SliceStore | str | Path, run_dir: str | Path,
                 resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.store = store if isinstance(store, SliceStore) else SliceStore(store)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.resume = resume
        self._check_run_dir()
        if self.store.n_classes != 1 and not self.store.regions:
            raise ConfigError("multi-class (softmax) targets are not supported by the training methods; prepare "
                              "a binary target (e.g. --target wt) or a region target (--target regions)")
        self.regions = list(self.store.target["classes"]) if self.store.regions else []
        self.method_cls = get_method(cfg.method)
        self.unlabeled_batch = cfg.unlabeled_batch if self.method_cls.needs_unlabeled else 0
        check_shardable(cfg.labeled_batch, self.unlabeled_batch, launched_world_size())  # before joining a group
        self.dist, self.device = setup_distributed(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.compute = compute_record(self.device, self.precision.name, self.dist.world_size)
        self.compute_changes: list[str] = []  # resumes on other threads / CPU kind / precision
        self.modalities = [self.store.modalities[self.store.modality_index(m)] for m in (cfg.modalities or
                                                                                          self.store.modalities)]
        self.augment = augment_options(cfg, self.modalities)  # a bad modality name fails before any work
        seed_everything(cfg.seed)

        self.splits = self._splits()
        self.subset, self.subset_path = load_or_make_subset(
            self.store, self.splits, cfg.labeled_fraction, cfg.label_level, cfg.seed, cfg.min_labeled,
            cfg.slice_filter)
        if self.method_cls.needs_unlabeled and not self.subset.unlabeled:
            raise ConfigError(f"method {cfg.method!r} needs unlabelled slices but labeled_fraction="
                              f"{cfg.labeled_fraction} leaves none")
        self.provenance = provenance(self.store, self.splits, self.subset, cfg)
        self.iterations_per_epoch = max(1.0, len(self.subset.labeled) / cfg.labeled_batch)
        # A stage started from another run (``init``) continues that run's schedule: no new warm-up,
        # the learning rate goes on from where the first stage left it (reference PReL: 6e-6, 6e-7).
        self.resume_state = load_checkpoint(self.run_dir / "checkpoint.pt", self.device) if resume else None
        self.init_state = self._read_init(cfg.init) if (cfg.init and not resume) else None
        # training time over every session of this run (checkpoints before it existed: from the resume on)
        self.seconds_before = float((self.resume_state or {}).get("seconds_trained", 0.0))
        self.session_start: float | None = None
        if self.resume_state is not None:
            self.schedule_offset = int(self.resume_state.get("schedule_offset", 0))
        elif self.init_state is not None and self.method_cls.continues_schedule:
            self.schedule_offset = int(self.init_state["iteration"])
        else:
            self.schedule_offset = 0
        self.total = cfg.iterations or self._default_total()
        self.schedule_total = self.schedule_offset + self.total
        self.val_every = cfg.val_every or max(1, self.total // 20)

        spec = network_spec(cfg, self.store.n_classes)
        self.network_spec = spec
        sync_bn = self.dist.distributed if cfg.sync_batchnorm is None else cfg.sync_batchnorm

        def new_network() -> torch.nn.Module:
            net = build_network(spec).to(self.device)
            if sync_bn and self.dist.distributed:  # same parameters and buffers: checkpoints do not change
                net = convert_sync_batchnorm(net, self.device)
            return net.to(memory_format=torch.channels_last) if cfg.channels_last else net

        self.ctx = MethodContext(cfg=cfg, modalities=self.modalities, out_channels=self.store.n_classes,
                                 total_iterations=self.total, iterations_per_epoch=self.iterations_per_epoch,
                                 device=self.device, new_network=new_network, schedule_offset=self.schedule_offset,
                                 schedule_total=self.schedule_total, regions=self.regions)
        try:
            self.method: Method = self.method_cls(self.ctx).to(self.device)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.optimizer = torch.optim.Adam(self.method.trainable_parameters(), lr=cfg.optim.lr,
                                          weight_decay=cfg.optim.weight_decay)
        self.iteration = 0
        self.best: dict[str, dict[str, Any]] = {}
        self.last_region_val: dict[str, dict[str, float]] = {}
        self.history: list[dict] = []
        if resume:
            self._load_resume()
        elif self.init_state is not None:
            self._load_init(self.init_state, Path(cfg.init))
        self.averaged = WeightAverage(self.method.predictors(), cfg.ema) if cfg.ema else None
        if self.averaged is not None and self.resume_state is not None:
            self.averaged.load_state_dict(self.resume_state["averaged"])
        self.ctx.info["distributed"] = {"world_size": self.dist.world_size, "sync_batchnorm": bool(
            sync_bn and self.dist.distributed), "backend": active_backend() if self.dist.distributed else None}
        # The step runs through DDP when distributed (``Method.forward`` is ``train_step``).
        self.model = (wrap_ddp(self.method, self.device, self.method_cls.uses_every_network) if self.dist.distributed
                      else self.method)
        barrier()  # every rank has checked and read the run directory before rank 0 writes to it

    # ------------------------------------------------------------------ set-up helpers
    def _check_run_dir(self) -> None:
        if launched_rank() == 0:  # one probe per job: ranks probing at once would find each other
            ensure_free(self.run_dir, "training run")  # a run another process is training: name its PID
        ckpt = self.run_dir / "checkpoint.pt"
        if self.resume:
            if not ckpt.is_file():
                raise DataError("nothing to resume (no checkpoint.pt)", self.run_dir)
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise DataError("run directory exists and is not empty; use --resume to continue it or choose another "
                            "--out", self.run_dir)

    def _splits(self) -> Splits:
        if self.cfg.splits:
            return load_splits(self.cfg.splits, self.store)
        saved = self.run_dir / "splits.json"
        if self.resume and saved.is_file():
            return load_splits(saved, self.store)
        splits = make_splits(self.store, self.cfg.seed, self.cfg.val_fraction, self.cfg.test_fraction)
        check_splits(splits, self.store)
        return splits

    def _state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "method": self.cfg.method,
            "networks": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method_state": self.method.extra_state(),
            "best": self.best,
            "schedule_offset": self.schedule_offset,
            "seconds_trained": self.seconds_before + (time.time() - self.session_start if self.session_start else 0.0),
            "provenance": self.provenance,
            "compute": self.compute,
            "compute_changes": self.compute_changes,
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _load_resume(self) -> None:
        state = self.resume_state
        if state.get("method") != self.cfg.method:
            raise ConfigError(f"checkpoint was written by method {state.get('method')!r}, not {self.cfg.method!r}")
        check_provenance(state.get("provenance"), self.provenance, self.run_dir)
        self.compute_changes = compute_changes(state, self.compute, self.run_dir, say=self.dist.is_main)
        self.method.load_state_dict(state["networks"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_extra_state(state["method_state"])
        self.best = state["best"]
        self.iteration = int(state["iteration"])
        restore_rng_states(state)
        log = self.run_dir / "log.jsonl"
        if log.is_file() and self.dist.is_main:  # drop records written after the checkpoint we resume from
            self.history = log_until(log, self.iteration)

    def _read_init(self, init: str) -> dict[str, Any]:
        path = Path(init)
        path = path / "checkpoint.pt" if path.is_dir() else path
        return load_checkpoint(path, self.device)

    def _default_total(self) -> int:
        if self.schedule_offset and self.method_cls.continues_schedule:
            # The first stage covered ``start_fraction`` of one schedule; this stage is the rest.
            start = self.cfg.prel.start_fraction
            return max(1, int(round(self.schedule_offset * (1 - start) / start)))
        return max(1, int(round(self.cfg.epochs * self.iterations_per_epoch)))

    def _load_init(self, state: dict[str, Any], init: Path) -> None:
        missing, unexpected = self.method.load_state_dict(state["networks"], strict=False)
        if unexpected or any(k.startswith("students.") for k in missing):
            raise DataError("checkpoint networks do not match this method/model configuration", init)
        self.method.load_extra_state(state.get("method_state", {}))
        if self.method_cls.continues_schedule:
            try:  # same students, same optimiser: Adam's moments carry over as in one run
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError):
                pass  # another method's parameter layout: start Adam afresh

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean 3D Dice over the val cases, per modality (in the stored slice frame); for a
        region target the mean over the regions (per region in ``self.last_region_val``)."""
        self.last_region_val: dict[str, dict[str, float]] = {}
        if not self.splits.val:
            return {}
        mine: dict[str, dict[str, list[float]]] = {}  # distributed: rank r scores cases r, r + W, ...
        for case in self.splits.val[self.dist.rank :: self.dist.world_size]:
            mine[case] = case_channel_dice(self.store, case, self._predictors(), self.device, self.precision,
                                           self.cfg.channels_last)
        per_case = {c: d for part in all_gather_objects(mine) for c, d in part.items()}
        mean, self.last_region_val = region_means(per_case, self.splits.val, self.modalities, self.regions)
        return mean

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to the budget; one process per run directory (another one fails naming this PID).
        Distributed: rank 0 holds the lock and writes; the other ranks wait for it after the last step."""
        lock = exclusive(self.run_dir, "training run") if self.dist.is_main else contextlib.nullcontext()
        finished = False
        try:
            with lock:
                result = self._fit()
            finished = True
            return result
        finally:
            shutdown(self.dist, finished)

    def _fit(self) -> dict[str, Any]:
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_static_files()
        cfg = self.cfg
        foreground = self._labeled_foreground()
        dataset = PairedSliceDataset(self.store, self.subset.labeled, self.subset.unlabeled, self.modalities,
                                     self.augment, seed=cfg.seed, context=cfg.model.context,
                                     paste_donors=foreground)
        sampler = TwoStreamBatchSampler(len(self.subset.labeled), len(self.subset.unlabeled), cfg.labeled_batch,
                                        self.unlabeled_batch, cfg.seed, self.iteration, self.total,
                                        labeled_foreground=foreground,
                                        foreground_fraction=cfg.foreground_fraction, rank=self.dist.rank,
                                        world_size=self.dist.world_size)
        loader = make_loader(dataset, sampler, cfg.num_workers, pin_memory=self.device.type == "cuda")
        writer = open_tensorboard(self.run_dir, self.iteration) if self.dist.is_main else None
        fault_at = int(os.environ.get(FAULT_ENV, "-1"))
        bar = tqdm(total=self.total, initial=self.iteration, desc=cfg.method, unit="it",
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        t0 = self.session_start = time.time()
        self.method.train()
        try:
            self._loop(loader, bar, writer, fault_at)
        finally:  # close the bar so an error message starts on its own line
            bar.close()
            if writer is not None:
                writer.close()
        if not self.dist.is_main:
            return {"best_val": self.best, "rank": self.dist.rank}
        return self._finish(time.time() - t0)

    def _loop(self, loader, bar, writer, fault_at: int) -> None:
        cfg = self.cfg
        last_val: dict[str, float] = {}
        for batch in loader:
            it = self.iteration
            batch = {k: self._to_device(v) for k, v in batch.items()}
            lr = (cfg.optim.lr * lr_factor(self.schedule_offset + it, self.schedule_total, cfg.optim)
                  * self.method.lr_scale(it))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.dist.distributed:  # per rank and step: differs between ranks, reproducible on resume
                torch.manual_seed(step_seed(cfg.seed, it, self.dist.rank))
            with self.precision.autocast(), sharded_batch(self.dist.distributed):
                losses = self.model(batch, it)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise DataError(f"training diverged: loss is {loss.item()} at iteration {it} "
                                "(lower optim.lr or use --precision fp32)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.method.after_step(it)
            if self.averaged is not None:
                self.averaged.update(self.method.predictors())
            self.iteration = it + 1
            record: dict[str, Any] | None = None
            if self.iteration % cfg.log_every == 0 or self.iteration == self.total:
                # Distributed: the mean over the ranks, i.e. the loss of the global batch.
                record = {"iteration": self.iteration, "phase": self.method.phase(it),
                          "lr": self.optimizer.param_groups[0]["lr"],
                          **mean_over_ranks({k: float(v.detach()) for k, v in losses.items()})}
            # Also validate at a phase boundary (e.g. Semi-CML -> PReL picks its teacher on val).
            boundary = self.method.phase(self.iteration) != self.method.phase(it)
            if self.iteration % self.val_every == 0 or self.iteration == self.total or boundary:
                last_val = self.validate()
                if self.regions:
                    self.method.on_validation(self.iteration, last_val, self.last_region_val)
                else:
                    self.method.on_validation(self.iteration, last_val)
                self._update_best(last_val)
                record = record or {"iteration": self.iteration, "phase": self.method.phase(it)}
                record.update({f"val_dice/{m}": d for m, d in last_val.items()})
                record.update({f"val_dice/{m}/{r}": d for m, rd in self.last_region_val.items() for r, d in rd.items()})
                self._log(record, writer)
                if writer is not None:  # TensorBoard holds what the checkpoint holds, even after a crash
                    writer.flush()
                if self.dist.is_main:
                    save_checkpoint(self._state(), self.run_dir / "checkpoint.pt")
            elif record is not None:
                self._log(record, writer)
            bar.update()
            bar.set_postfix({"loss": f"{loss.item():.3f}", **{f"val_{m}": f"{d:.3f}" for m, d in last_val.items()}})
            if self.iteration == fault_at:
                barrier()  # the hook crashes the whole job at one point (after rank 0's checkpoint)
                os._exit(17)

    def _labeled_foreground(self) -> list[int]:
        """Positions in the labelled pool of slices that contain target (for oversampling)."""
        fg = {c: set(meta.foreground_slices) for c, meta in self.store.cases.items()}
        return [i for i, (case, z) in enumerate(self.subset.labeled) if z in fg[case]]

    def _to_device(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.device, non_blocking=True)
        if v.dim() == 4 and self.cfg.channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        return v

    def _predictors(self) -> dict[str, torch.nn.Module]:
        """The networks that are validated, selected and saved: the averaged ones when ``ema`` is on."""
        return self.averaged.nets if self.averaged is not None else self.method.predictors()

    def _update_best(self, val: dict[str, float]) -> None:
        nets = self._predictors()
        for m, d in val.items():
            if m not in self.best or d > self.best[m]["dice"]:
                self.best[m] = {"dice": d, "iteration": self.iteration}
                if m in self.last_region_val:  # region target: the regions' Dice of the selected model
                    self.best[m]["regions"] = dict(self.last_region_val[m])
                if self.dist.is_main:
                    self._save_weights(m, nets[m])

    def _save_weights(self, modality: str, net: torch.nn.Module, path: Path | None = None) -> None:
        payload = {
            "format": "semicml-weights-v1",
            "modality": modality,
            "network": self.network_spec,
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "preprocessing": self._preprocessing(),
            "target": self.store.target,
            "iteration": self.iteration,
        }
        path = path or self.run_dir / "weights" / f"{modality}.pt"
        path.parent.mkdir(exist_ok=True)
        atomic_save_torch(payload, path)

    def _preprocessing(self) -> dict[str, Any]:
        return self.store.preprocessing()  # what predict repeats: spacing, normalisation per modality, box

    def _log(self, record: dict, writer) -> None:
        if not self.dist.is_main:
            return
        self.history.append(record)
        append_record(self.run_dir / "log.jsonl", record, writer)

    def _write_static_files(self) -> None:
        atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg))
        atomic_write_json(self.run_dir / "splits.json", self.splits.to_json())
        atomic_write_json(self.run_dir / "labeled_subset.json", self.subset.to_json())

    @torch.no_grad()
    def _choose_postprocessing(self) -> dict[str, dict]:
        """Per modality, the post-processing that works best on the val cases with the saved
        (best) weights, stored in each weights file so ``predict`` applies it; the fused
        prediction's choice kept for run.json."""
        fixed = None if self.cfg.postprocess == "auto" else self.cfg.postprocess
        payloads: dict[str, dict] = {}
        nets: dict[str, torch.nn.Module | None] = dict.fromkeys(self.modalities)  # a configured choice runs none
        for m in self.modalities:
            if fixed is None:
                nets[m], payloads[m] = load_weights(self.run_dir, m, self.device)
            else:
                payloads[m] = load_checkpoint(self.run_dir / "weights" / f"{m}.pt", "cpu")
        choices, self.fused_postprocessing = choose_postprocessing(self.store, self.splits.val, nets, self.device,
                                                                   self.precision, self.regions, fixed)
        for m, payload in payloads.items():
            payload["postprocessing"] = choices[m]["choice"]
            atomic_save_torch(payload, self.run_dir / "weights" / f"{m}.pt")
        return choices

    def _finish(self, seconds: float) -> dict[str, Any]:
        nets = self._predictors()
        for m in self.modalities:  # no val split: keep the last weights
            if m not in self.best:
                self._save_weights(m, nets[m])
        postprocessing = self._choose_postprocessing()
        info = {
            "semicml_version": __version__,
            "method": self.cfg.method,
            "modalities": self.modalities,
            "store": str(self.store.root.resolve()),
            "store_sha256": self.provenance["store_sha256"],
            "labeled_subset_sha256": self.provenance["labeled_subset_sha256"],
            "target": self.store.target,
            "preprocessing": self._preprocessing(),
            "network": self.network_spec,
            "splits": self.splits.to_json(),
            "labeled": {"fraction": self.cfg.labeled_fraction, "level": self.cfg.label_level,
                        "n_labeled_slices": len(self.subset.labeled), "n_unlabeled_slices": len(self.subset.unlabeled),
                        "subset_file": str(self.subset_path) if self.subset_path else None},
            "iterations": self.total,
            "iterations_per_epoch": self.iterations_per_epoch,
            "device": str(self.device),
            "precision": self.precision.name,
            "channels_last": self.cfg.channels_last,
            "platform": platform.platform(),
            "compute": self.compute,  # this session's; earlier sessions' differences below
            "compute_changes": self.compute_changes,
            "torch": torch.__version__,
            "seconds_last_session": round(seconds, 1),
            "seconds_trained": round(self.seconds_before + seconds, 1),  # every session of this run
            "peak_gpu_memory_mib": (round(torch.cuda.max_memory_allocated(self.device) / 2**20)
                                    if self.device.type == "cuda" else None),
            "best_val": self.best,
            "postprocessing": postprocessing,
            "postprocessing_fused": self.fused_postprocessing,
            "weights": {m: f"weights/{m}.pt" for m in self.modalities},
            **self.ctx.info,
        }
        existing = self.run_dir / "run.json"
        if existing.is_file():  # keep results added by later stages (evaluation)
            old = json.loads(existing.read_text())
            info = {**old, **info}
        atomic_write_json(self.run_dir / "run.json", info)
        return info
