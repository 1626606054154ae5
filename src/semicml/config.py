"""Typed, validated training configuration (pydantic), YAML in, resolved YAML out.

Defaults follow the reference recipe of the paper (see docs/method-notes.md) unless noted. Profiles
are named sets of overrides for common hardware budgets; explicit options win over a profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .postprocess_spec import check_spec


# The strings pydantic reads as booleans (lax mode)
BOOLEAN_WORDS = frozenset({"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"})


class StrictModel(BaseModel):
    """Base of every YAML-facing model (training and benchmark configs): unknown keys are errors,
    not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class _TrainModel(StrictModel):
    # Training configs are also changed in code after loading: validate those assignments too.
    model_config = ConfigDict(validate_assignment=True)


class ModelConfig(_TrainModel):
    base_width: int = Field(32, ge=2, description="channels of the first level; doubled per level (32-64-128-256-512)")
    levels: int = Field(4, ge=1, le=6, description="number of 2x down-sampling levels")
    dropout: Optional[list[float]] = Field(None, description="encoder dropout per level; default 0.05,0.1,0.2,0.3,0.5")
    # The reference switches the students' dropout off; dropout then acts only in the teachers'
    # Monte-Carlo passes (PReL soft labels, UA-MT uncertainty). BatchNorm statistics learned under
    # dropout but used without it are one source of the train / predict gap measured on BraTS.
    student_dropout: bool = Field(False, description="keep dropout active in the trained networks")
    # 2.5D: each network also sees this many neighbouring slices on either side of the one it
    # segments (semicml.data.context); 0 is the paper's 2D network. An option, measured in
    # benchmarks/results/brats18-cv/ (supervised+lowres+context1).
    context: int = Field(0, ge=0, le=3, description="neighbouring slices on each side given to each network (2.5D)")

    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * 2**i for i in range(self.levels + 1))

    def dropout_per_level(self) -> tuple[float, ...]:
        if self.dropout is not None:
            if len(self.dropout) != self.levels + 1:
                raise ConfigError(f"model.dropout needs {self.levels + 1} values, got {len(self.dropout)}")
            return tuple(self.dropout)
        reference = (0.05, 0.1, 0.2, 0.3, 0.5)
        n = self.levels + 1
        return reference[:n] if n <= len(reference) else reference + (0.5,) * (n - len(reference))


class OptimConfig(_TrainModel):
    lr: float = Field(6e-3, gt=0)
    weight_decay: float = Field(4e-4, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="linear warm-up over this fraction of iterations")
    milestones: list[float] = Field([0.15, 0.35, 0.55, 0.70], description="fractions of training where lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1)

    @field_validator("milestones")
    @classmethod
    def _sorted_fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones must be increasing fractions in (0, 1)")
        return v


class SemiCMLConfig(_TrainModel):
    asc_weight: float = Field(3.5, ge=0, description="lambda of the area-similarity contrastive loss")
    mse_weight: float = Field(1.0, ge=0, description="scale of the ramped MSE mutual term")
    mse_rampup_epochs: float = Field(200, ge=0, description="w(t)=exp(-5(1-t/T)^2), T in epochs (reference 200)")
    similarity: Literal["dice", "cosine"] = "dice"
    temperature: float = Field(1.0, gt=0)
    bce_weight: float = Field(10.0, ge=0)
    dice_weight: float = Field(7.0, ge=0)
    # Every network trained here ends conservative on unseen patients (precision ~0.9, sensitivity
    # ~0.6; benchmarks/results/brats18-cv-2mm/selection-screen): > 1 makes a missed tumour pixel
    # cost more than a false one in the BCE (the labelled and the PReL soft-label loss).
    bce_pos_weight: float = Field(1.0, gt=0, description="weight of the foreground term of the BCE (1: plain BCE)")
    # "batch": one Dice over all pixels of the batch (the reference). "slice": mean of per-slice
    # Dice, which lets tiny-lesion and tumour-free slices dominate and teaches under-segmentation.
    dice_reduction: Literal["batch", "slice"] = "batch"
    # Region targets (several sigmoid channels): "joint" = one similarity over all channels of a
    # map (the default: with a teacher per region the best setting of a phantom validation
    # comparison, docs/method-notes.md "Region targets"); "per-channel" = ASC on each channel
    # alone, averaged. The same loss for one channel.
    asc_channels: Literal["joint", "per-channel"] = "joint"


class PReLConfig(_TrainModel):
    start_fraction: float = Field(0.63, gt=0, lt=1, description="semicml-prel: PReL starts here (epoch 51 of 81)")
    teacher: Optional[str] = Field(None, description="teacher modality; default: best validation Dice after stage 1")
    pool_size: int = Field(6, ge=1, description="BMA: number of best validation scores kept")
    max_alpha: float = Field(0.99, gt=0, le=1)
    mc_samples: int = Field(4, ge=1, description="MC-dropout passes for the soft labels")
    noise_std: float = Field(0.1, ge=0)
    noise_clip: float = Field(0.2, ge=0)
    alpha: float = Field(0.1, ge=0, le=1, description="weight of ASC(soft labels, weak prediction)")
    refine_teacher_modality: bool = Field(True, description="also refine the stronger network on its teacher's labels")
    refine_teacher_from: float = Field(75 / 81, ge=0, le=1, description="...from this fraction of training "
                                       "(reference: epoch 75 of 81); earlier it would learn its own mistakes")
    bma_from: float = Field(10 / 81, ge=0, lt=1, description="validations before this fraction of training are not "
                            "offered to the BMA pool (reference: epochs up to 10 of 81)")
    keep_supervised: bool = Field(False, description="keep the labelled loss in stage 2 (the reference drops it)")
    # Off by default (the reference continues from the last stage-1 weights). Measured reason to try
    # it: with model selection on validation, the 2 mm CV's selected networks came from stage 1 in
    # every fold (validation Dice peaks early), so PReL never shaped a reported network.
    from_best: bool = Field(False, description="semicml-prel: every network starts PReL from its best-validation "
                            "stage-1 weights instead of the last ones")
    # The reference's schedule has decayed to 1e-3 of its start when PReL begins (6e-6); the cpu
    # profile's milestones (50%, 75%) leave 1e-1 there: a much stronger re-learning than the paper's.
    lr_scale: float = Field(1.0, gt=0, le=1, description="semicml-prel / prel: the learning rate is multiplied by "
                            "this in stage 2")
    # On by default: with joint ASC better than one teacher in every paired phantom comparison
    # (docs/method-notes.md, "Region targets").
    teacher_per_region: bool = Field(True, description="region targets: each region's soft labels from the modality "
                                     "with the best validation Dice on that region (false: one teacher for all)")


class MeanTeacherConfig(_TrainModel):
    ema_decay: float = Field(0.99, gt=0, lt=1)
    consistency: float = Field(0.1, ge=0, description="max weight of the consistency term (SSL4MIS default 0.1)")
    rampup_fraction: float = Field(0.4, ge=0, le=1, description="sigmoid ramp-up over this fraction of iterations")
    noise_std: float = Field(0.1, ge=0)
    noise_clip: float = Field(0.2, ge=0)
    uncertainty_samples: int = Field(8, ge=1, description="UA-MT: MC-dropout passes (T = 8)")


class CPSConfig(_TrainModel):
    weight: float = Field(1.0, ge=0, description="max weight of the cross pseudo supervision term")
    rampup_fraction: float = Field(0.4, ge=0, le=1)


class TrainConfig(_TrainModel):
    method: str = "semicml-prel"
    modalities: Optional[list[str]] = Field(None, description="modalities to train (default: all in the store)")
    seed: int = 0
    # Budget: an epoch is one pass over the labelled slices, as in the reference.
    epochs: float = Field(81, gt=0)
    iterations: Optional[int] = Field(None, ge=1, description="overrides epochs when set")
    labeled_batch: int = Field(20, ge=1)
    unlabeled_batch: int = Field(4, ge=0)
    labeled_fraction: float = Field(0.1, gt=0, le=1)
    label_level: Literal["slice", "case"] = "slice"
    min_labeled: int = Field(0, ge=0, description="at least this many labelled slices (paper: 60)")
    # "nonempty" (default): every brain slice, as a user's volume; "foreground": tumour slices only,
    # the paper's protocol (for reproduction; it never shows a healthy slice).
    slice_filter: Literal["foreground", "nonempty"] = "nonempty"
    foreground_fraction: float = Field(0.33, ge=0, le=1, description="share of each labelled batch guaranteed to "
                                       "contain foreground (nnU-Net's oversampling); 0 = uniform")
    splits: Optional[str] = Field(None, description="splits.json; default: a seeded split saved in the run")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.25, ge=0, lt=1)
    val_every: Optional[int] = Field(None, ge=1, description="validate every N iterations (default: ~20 per run)")
    log_every: int = Field(10, ge=1)
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    # Under DDP each rank's BatchNorm would otherwise see only its shard of the batch.
    sync_batchnorm: Optional[bool] = Field(None, description="BatchNorm statistics over the global batch of all "
                                           "ranks; default (null): on when training with more than one process")
    # Off by default: measured on a 2-core AVX2 CPU it did not pay (benchmarks/results/compile/);
    # hosts with AMX or a GPU may differ, so it stays a switch.
    compile: bool = Field(False, description="torch.compile the trained networks (first steps compile: minutes)")
    num_workers: int = Field(0, ge=0)
    # Off by default until measured on the BraTS cross-validation (engine/averaging.py says why).
    ema: float = Field(0.0, ge=0, lt=1, description="decay of a moving average of the predicting networks' weights, "
                       "used for validation, model selection and the saved weights (0: off; e.g. 0.99)")
    augment: bool = False
    # A list: T1ce gained from the intensity changes where T2 lost (benchmarks/results/brats18-cv-2mm/),
    # so they can be given to some modalities only. Every modality's draws are made either way: the
    # variants are paired ablations (same geometry, same changes where applied).
    augment_intensity: Union[bool, list[str]] = Field(
        True, description="with augment: also the per-modality gain, shift and noise (true), none of them "
        "(false: flips, rotation and zoom only), or only on the listed modalities (e.g. [t1ce])")
    # On by default since issue 10's measurements: with it a 2 mm scan is segmented within 0.03 Dice of
    # its 1 mm original on every seed, without it T2 loses 0.05-0.06; on the original grid it costs
    # nothing measurable (benchmarks/results/resampling/low-resolution/). Runs recorded before it
    # existed read as 0 (BEFORE_IT_EXISTED).
    low_resolution: float = Field(0.25, ge=0, le=1, description="probability per modality and slice of a simulated "
                                  "coarser acquisition (down- and up-sampled, zoom 0.5-1; nnU-Net's augmentation): "
                                  "robustness to scans resampled from a coarser grid; 0 = off")
    # On by default (issue 9, screen 7 of benchmarks/results/brats18-cv-2mm/recall-screen/): the one
    # training change that made the networks find more tumour on unseen patients, for every method.
    lesion_paste: float = Field(0.5, ge=0, le=1, description="probability per labelled slice of receiving the "
                                "lesion (with a rim of its surroundings) of another labelled tumour slice, in every "
                                "modality and the label (TumorCP / CarveMix-style copy-paste); 0 = off")
    postprocess: str = Field("auto",
                             description="connected-component post-processing: auto (chosen on validation), none, "
                             "largest, min-size:<mm^3>, near:<mm> (keep what lies within that distance of the "
                             "largest component), or near:<mm>+min-size:<mm^3> (both)")
    init: Optional[str] = Field(None, description="start from this run's final checkpoint (prel after semicml)")
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    semicml: SemiCMLConfig = SemiCMLConfig()
    prel: PReLConfig = PReLConfig()
    mean_teacher: MeanTeacherConfig = MeanTeacherConfig()
    cps: CPSConfig = CPSConfig()

    @field_validator("augment_intensity", mode="before")
    @classmethod
    def _modality_list(cls, v: Any) -> Any:
        # "t1ce" or "t2,t1ce" (a command-line override) is a list; yes / no words stay booleans
        if isinstance(v, str) and v.strip().lower() not in BOOLEAN_WORDS:
            return [m.strip() for m in v.split(",")]
        return v

    @field_validator("postprocess")
    @classmethod
    def _postprocess_candidate(cls, v: str) -> str:
        # the one grammar that inference applies (postprocess_spec.py); "auto" = chosen on validation
        return v if v == "auto" else check_spec(v)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.modalities is not None and not _distinct(self.modalities):
            raise ValueError("modalities must be distinct")
        if isinstance(self.augment_intensity, list):
            names = self.augment_intensity
            if not names or not all(names) or not _distinct(names):
                raise ValueError("augment_intensity: a list must name distinct modalities (or use true / false)")
        return self


def _distinct(names: list[str]) -> bool:
    """Modality names are matched case-insensitively everywhere, so they must differ that way."""
    return len({n.lower() for n in names}) == len(names)


# What a setting ABSENT from a recorded configuration meant: the behaviour before the setting
# existed. A finished run is read through today's schema (benchmark resume and report), so an
# absent setting would otherwise take today's default; a setting whose default differs from the
# behaviour before it existed, or whose default is ever changed, must be listed here (dotted path
# -> value). Not listed on purpose: prel.teacher_per_region (no effect on a binary target, and the
# binary runs recorded before it must keep standing) and sync_batchnorm (null = off for one process).
BEFORE_IT_EXISTED: dict[str, Any] = {
    "low_resolution": 0.0,
    "lesion_paste": 0.0,
    "compile": False,
    "semicml.asc_channels": "joint",
    # the reference fixes of issue 9: a run recorded before them trained the old way
    "semicml.dice_reduction": "slice",
    "model.student_dropout": True,
    "foreground_fraction": 0.0,
    "postprocess": "none",
    "prel.bma_from": 0.0,
    "prel.refine_teacher_from": 0.0,
}


def with_absent_settings(recorded: dict[str, Any]) -> dict[str, Any]:
    """``recorded`` (a run's configuration as saved) with each setting it predates filled in as
    :data:`BEFORE_IT_EXISTED` says, so that reading it through today's schema keeps its meaning."""
    out = dict(recorded)
    for dotted, value in BEFORE_IT_EXISTED.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            if not isinstance(node.get(key), dict):
                break
            node[key] = dict(node[key])
            node = node[key]
        else:
            node.setdefault(leaf, value)
    return out


# Named overrides. "paper" is the reference recipe; "cpu" fits a laptop / 2-core CI budget;
# "tiny" exists for tests and smoke runs only.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    # Half width (16-32-64-128-256, ~4x fewer FLOPs than the paper's U-Net), batch 8 + 8, a fixed
    # 500 iterations. The reference counts epochs over the labelled slices, which on a small
    # dataset (BraTS18 here: 66 labelled slices) gives only ~270 iterations, most of them after
    # the lr has decayed 100-fold; a fixed budget with later decays learns far more per second.
    "cpu": {"model": {"base_width": 16}, "iterations": 500, "labeled_batch": 8, "unlabeled_batch": 8,
            "val_every": 25, "optim": {"lr": 3e-3, "milestones": [0.5, 0.75]}},
    "tiny": {"model": {"base_width": 4, "levels": 2}, "iterations": 8, "labeled_batch": 2, "unlabeled_batch": 2,
             "val_every": 4, "log_every": 2},
}


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(err: ValidationError, source: str, kind: str = "config") -> str:
    """First pydantic error as one line: ``source: invalid <kind> field 'a.b': message``."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{source}: invalid {kind} field {where!r}: {msg}" if where else f"{source}: invalid {kind}: {msg}"


def load_yaml_mapping(path: str | Path, what: str, empty_ok: bool = False) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every problem is a one-line ConfigError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found", path) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a folder, not a YAML file", path) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML ({str(err).splitlines()[0]})", path) from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a YAML mapping", path)
    return data


def build_config(config_file: str | Path | None = None, profile: str | None = None,
                 overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- profile <- YAML file <- explicit overrides (CLI options)."""
    data: dict[str, Any] = {}
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
        data = deep_merge(data, PROFILES[profile])
    source = "options"
    if config_file is not None:
        path = Path(config_file)
        source = str(path)
        data = deep_merge(data, load_yaml_mapping(path, "config", empty_ok=True))
    data = deep_merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
