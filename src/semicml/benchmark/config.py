"""The benchmark YAML file: validated models (one budget, methods x seeds) and path resolution.

See :mod:`semicml.benchmark` for the file format. Every run's ``TrainConfig`` is built (and so
validated) when the file is loaded, before hours of training start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from semicml.config import StrictModel, deep_merge, format_validation_error, load_yaml_mapping
from semicml.errors import ConfigError

__all__ = ["GRID_KEYS", "BenchmarkConfig", "CrossValidationSection", "MethodEntry", "PhantomSpec", "PrepareSection", "load_benchmark_config"]

# Set by the grid itself; not allowed in ``train`` or an entry's ``overrides``.
GRID_KEYS = ("method", "seed", "labeled_fraction", "splits")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._%+=-]*$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def check_no_grid_keys(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    bad = [k for k in GRID_KEYS if k in overrides]
    if bad:
        raise ValueError(f"{', '.join(bad)} may not be set in {where}: the grid sets it "
                         "(methods[].method, seeds, labeled_fraction / methods[].labeled_fraction, splits)")
    return overrides


class MethodEntry(StrictModel):
    """One row of the table: a registered method under a unique label, with optional overrides."""

    name: str = Field(..., description="label in the tables and the run folder name; unique")
    method: Optional[str] = Field(None, description="registered method (default: name)")
    labeled_fraction: Optional[float] = Field(None, gt=0, le=1, description="override, e.g. 1.0 for an upper bound")
    overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for this entry")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not usable as a folder name (letters, digits, . _ % + = -)")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_no_grid_keys(v, "a method's overrides")

    @model_validator(mode="after")
    def _method(self) -> "MethodEntry":
        from semicml.methods import get_method

        if self.method is None:
            self.method = self.name
        try:
            get_method(self.method)
        except ConfigError as err:
            raise ValueError(err.problem) from None
        return self


class PhantomSpec(StrictModel):
    cases: int = Field(12, ge=3, description="phantom cases (train/val/test split per seed)")
    seed: int = Field(0, ge=0)
    shape: list[int] = Field([64, 64, 24], min_length=3, max_length=3)

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if min(v) < 8:
            raise ValueError("shape must be three integers >= 8 (X, Y, Z; Z axial)")
        return v


class PrepareSection(StrictModel):
    """Create the dataset (phantom) and/or the slice store under ``out`` (reused when present)."""

    input: Optional[str] = Field(None, description="'phantom', or a dataset root (default: the benchmark's dataset)")
    phantom: PhantomSpec = Field(default_factory=PhantomSpec)
    format: Optional[Literal["brats", "nnunet", "msd"]] = None
    modalities: list[str] = Field(["T2", "T1ce"], min_length=1)
    target: str = "wt"
    size: int = Field(160, ge=16)
    in_plane: Literal["crop", "resize"] = "crop"
    # as `semicml prepare --normalisation`: auto (by channel name), one scheme, or "T2=mri,CT=ct"
    normalisation: str = "auto"
    spacing: Union[float, Literal["median", "keep"]] = Field("median", description="in-plane target spacing (mm), "
                                                             "median of the cases, or keep")
    workers: int = Field(2, ge=1)

    @field_validator("normalisation")
    @classmethod
    def _normalisation(cls, v: str) -> str:
        from semicml.data.normalisation import SCHEMES
        from semicml.data.prepare import parse_normalisation

        parsed = parse_normalisation(v)
        schemes = parsed.values() if isinstance(parsed, dict) else [parsed]
        bad = [x for x in schemes if x not in (*SCHEMES, "auto")]
        if bad:
            raise ValueError(f"unknown normalisation {bad[0]!r} (choose from auto, {', '.join(SCHEMES)})")
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v):
        if not isinstance(v, str) and v <= 0:
            raise ValueError("spacing must be positive (mm), 'median' or 'keep'")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v % 16:
            raise ValueError("size must be a multiple of 16 (U-Net pooling)")
        return v

    @property
    def is_phantom(self) -> bool:
        return self.input is not None and self.input.strip().lower() == "phantom"


class CrossValidationSection(StrictModel):
    """k-fold cross-validation over the labelled cases: every patient is tested exactly once."""

    folds: int = Field(4, ge=2)
    val_cases: int = Field(2, ge=1, description="validation patients per fold, drawn from the training folds")
    seed: int = Field(0, ge=0, description="shuffles the patients before dealing them into folds")


class BenchmarkConfig(StrictModel):
    store: Optional[str] = Field(None, description="slice store (default with prepare: OUT/store)")
    dataset: Optional[str] = Field(None, description="raw dataset root for the final 3D evaluation")
    out: Optional[str] = Field(None, description="output folder (--out overrides it)")
    splits: Optional[str] = Field(None, description="splits.json; default: a seeded split per seed")
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    labeled_fraction: float = Field(0.1, gt=0, le=1)
    methods: list[MethodEntry] = Field(..., min_length=1)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides shared by all runs")
    profile: Optional[str] = None
    prepare: Optional[PrepareSection] = None
    cross_validation: Optional[CrossValidationSection] = None
    reference: Optional[str] = Field(None, description="entry compared per patient with every other entry "
                                     "(default: the entry running semicml-prel, if any)")
    fused: bool = Field(False, description="also evaluate the fused prediction of all modalities (per region, as chosen on validation) "
                        "and compare it per patient with the best single modality")

    @field_validator("methods", mode="before")
    @classmethod
    def _strings_are_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": e} if isinstance(e, str) else e for e in v]
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_no_grid_keys(v, "train")

    @model_validator(mode="after")
    def _check(self) -> "BenchmarkConfig":
        from semicml.config import PROFILES

        names = [e.name for e in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"method names must be unique: {', '.join(dup)} repeated")
        if self.cross_validation is not None and self.splits is not None:
            raise ValueError("give either 'splits' (one fixed split) or 'cross_validation', not both")
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not a method name ({', '.join(names)})")
        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r} (choose from {', '.join(PROFILES)})")
        if self.store is None and self.prepare is None:
            raise ValueError("give 'store' (a prepared slice store) or a 'prepare' section")
        prep = self.prepare
        no_source = prep is None or prep.input is None or (self.store is not None and prep.is_phantom)
        if self.dataset is None and no_source:
            raise ValueError("give 'dataset' (the raw dataset the store was prepared from; needed for evaluation)")
        if self.dataset is not None and prep is not None and prep.input is not None:
            raise ValueError("give the dataset once: as 'dataset' or as 'prepare.input', not both")
        # Every run's TrainConfig must be valid before hours of training start.
        for entry in self.methods:
            try:
                self.train_config(entry, self.seeds[0], splits=None)
            except ConfigError as err:
                problem = err.problem.removeprefix("options: ")
                raise ValueError(f"method {entry.name!r}: {problem}") from None
        return self

    # -- helpers
    def reference_name(self) -> str | None:
        if self.reference is not None:
            return self.reference
        return next((e.name for e in self.methods if e.method == "semicml-prel"), None)

    def folds(self) -> list[int | None]:
        return [None] if self.cross_validation is None else list(range(self.cross_validation.folds))

    def fraction(self, entry: MethodEntry) -> float:
        return self.labeled_fraction if entry.labeled_fraction is None else entry.labeled_fraction

    def train_config(self, entry: MethodEntry, seed: int, splits: str | None):
        from semicml.config import build_config

        overrides = deep_merge(deep_merge(self.train, entry.overrides),
                                {"method": entry.method, "seed": seed, "labeled_fraction": self.fraction(entry),
                                 "splits": splits})
        return build_config(None, self.profile, overrides)


def _expand(text: str) -> tuple[str, bool]:
    """Expand ``${VAR}`` / ``${VAR:-default}``; also say whether the environment supplied a value."""
    from_env = False

    def sub(m: re.Match) -> str:
        nonlocal from_env
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value:  # set and non-empty, like the shell's ':-'
            from_env = True
            return value
        if default is None:
            raise ConfigError(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
        return default

    return _ENV_RE.sub(sub, text), from_env


def _resolve(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    text, from_env = _expand(value)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (Path.cwd() if from_env else base) / path
    return str(path.resolve())


def load_benchmark_config(path: str | Path, out: str | Path | None = None) -> BenchmarkConfig:
    """Read and validate a benchmark YAML; paths become absolute (relative to the YAML's folder).

    ``out`` (the ``--out`` option, relative to the working directory) replaces the file's ``out``.
    Any problem is a one-line :class:`ConfigError`.
    """
    path = Path(path)
    data = load_yaml_mapping(path, "benchmark config")
    try:
        cfg = BenchmarkConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path), kind="benchmark")) from None
    base = path.resolve().parent
    try:
        update: dict[str, Any] = {k: _resolve(getattr(cfg, k), base) for k in ("store", "dataset", "out", "splits")}
        if cfg.prepare is not None and cfg.prepare.input is not None and not cfg.prepare.is_phantom:
            update["prepare"] = cfg.prepare.model_copy(update={"input": _resolve(cfg.prepare.input, base)})
    except ConfigError as err:
        raise ConfigError(err.problem, path) from None
    if out is not None:
        update["out"] = str(Path(out).expanduser().resolve())
    cfg = cfg.model_copy(update=update)
    if cfg.out is None:
        raise ConfigError("no output folder: set 'out' in the file or pass --out", path)
    return cfg
