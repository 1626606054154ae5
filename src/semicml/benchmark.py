"""``semicml benchmark``: a grid of methods x seeds under ONE shared budget, then tables and plots.

A benchmark is a YAML file (:class:`BenchmarkConfig`)::

    out: ../runs/benchmark-phantom         # output folder (``--out`` overrides it)
    dataset: /data/brats18                 # raw dataset: the test cases are evaluated on its grid
    store: /stores/brats                   # slice store made by ``semicml prepare`` from it
    splits: /data/brats18/splits.json      # optional; default: a seeded split per seed
    seeds: [0, 1, 2]
    labeled_fraction: 0.1                  # the grid's labelled fraction
    profile: cpu                           # optional TrainConfig profile (paper | cpu | tiny)
    train: {iterations: 400, model: {base_width: 16}}     # the ONE budget shared by every run
    methods:
      - supervised                         # a string: name = registered method
      - {name: supervised-100%, method: supervised, labeled_fraction: 1.0}   # the upper bound
      - semicml
      - {name: semicml-asc2, method: semicml, overrides: {semicml: {asc_weight: 2.0}}}

Without ``store``, a ``prepare:`` section creates the store as ``OUT/store`` (once; reused when the
command is repeated, refused if the section changed since): from ``dataset`` (or ``prepare.input``,
the same thing given once), or, with ``input: phantom``, from a phantom dataset written to
``OUT/data`` first::

    prepare: {input: phantom, phantom: {cases: 12, seed: 0, shape: [64, 64, 24]},
              modalities: [T2, T1ce], target: wt, size: 64}

Paths: a relative path in the YAML file is relative to **the YAML file's folder**, not to the
working directory. ``${VAR}`` and ``${VAR:-default}`` are expanded from the environment; a
relative path that came from an environment variable is relative to the working directory
(as in a shell), one that came from the default text is relative to the YAML folder.
``--out`` on the command line is relative to the working directory.

Each run: ``TrainConfig`` = profile <- ``train`` <- the entry's ``overrides`` <- {method, seed,
labelled fraction, splits} (the last four are set by the grid only); ``Trainer(...).fit()``;
``evaluate_run`` predicts every TEST case with each modality's network alone (the test split is
used by nothing else) and evaluates in 3D; ``result.json`` in the run dir marks it finished.

Output folder::

    results.csv / results.json   one row per (run, modality); written after every run
    results.md                   mean ± std over seeds per method and modality, best in bold,
                                 Δ Dice vs supervised at the grid fraction and at 100%
    dice.png                     Dice per method and modality (bars: mean; points: seeds)
    val_curves.png               validation Dice vs iteration per method, one panel per modality
    runs/<name>/seed<k>/         run dirs (config.yaml, log.jsonl, weights/, eval/, result.json)
    prepare.json, data/, store/  only with a ``prepare:`` section

Resuming: repeating the command skips runs with a ``result.json``, RESUMES runs that have a
``checkpoint.pt`` (``Trainer(..., resume=True)``) and restarts runs that died before their first
checkpoint. A run dir whose saved configuration differs from the one the YAML now asks for is
never reused silently: it is reported as failed (delete it, or use another ``out``). A run that
raises any exception is reported with status ``failed: <one-line error>`` and the grid goes on;
failed runs are retried by the next invocation.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import deep_merge, format_validation_error, load_yaml_mapping
from .errors import ConfigError, DataError, SemicmlError
from .evaluation.plots import finite_number
from .io_utils import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["BenchmarkConfig", "MethodEntry", "PrepareSection", "load_benchmark_config", "run_benchmark",
           "write_results", "RESULT_COLUMNS", "METRIC_COLUMNS"]

METRIC_COLUMNS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd", "precision", "sensitivity")
RESULT_COLUMNS: tuple[str, ...] = (
    "method", "method_id", "modality", "seed", "labeled_fraction", *METRIC_COLUMNS, "n_test_cases", "n_labeled_slices",
    "best_val_dice", "best_val_iteration", "teacher", "iterations", "status", "action", "seconds", "run_dir",
)
# Set by the grid itself; not allowed in ``train`` or an entry's ``overrides``.
GRID_KEYS = ("method", "seed", "labeled_fraction", "splits")
TABLE_METRICS: tuple[tuple[str, str, bool], ...] = (  # (key, label, higher is better)
    ("dice", "Dice", True), ("jaccard", "Jaccard", True), ("hd95", "HD95 (mm)", False), ("asd", "ASD (mm)", False))
RESULT_MARKER = "result.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._%+=-]*$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# ---------------------------------------------------------------------------------------- config
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_no_grid_keys(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    bad = [k for k in GRID_KEYS if k in overrides]
    if bad:
        raise ValueError(f"{', '.join(bad)} may not be set in {where}: the grid sets it "
                         "(methods[].method, seeds, labeled_fraction / methods[].labeled_fraction, splits)")
    return overrides


class MethodEntry(_Strict):
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
        return _check_no_grid_keys(v, "a method's overrides")

    @model_validator(mode="after")
    def _method(self) -> "MethodEntry":
        from .methods import get_method

        if self.method is None:
            self.method = self.name
        try:
            get_method(self.method)
        except ConfigError as err:
            raise ValueError(err.problem) from None
        return self


class PhantomSpec(_Strict):
    cases: int = Field(12, ge=3, description="phantom cases (train/val/test split per seed)")
    seed: int = Field(0, ge=0)
    shape: list[int] = Field([64, 64, 24], min_length=3, max_length=3)

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if min(v) < 8:
            raise ValueError("shape must be three integers >= 8 (X, Y, Z; Z axial)")
        return v


class PrepareSection(_Strict):
    """Create the dataset (phantom) and/or the slice store under ``out`` (reused when present)."""

    input: Optional[str] = Field(None, description="'phantom', or a dataset root (default: the benchmark's dataset)")
    phantom: PhantomSpec = Field(default_factory=PhantomSpec)
    format: Optional[Literal["brats", "nnunet", "msd"]] = None
    modalities: list[str] = Field(["T2", "T1ce"], min_length=1)
    target: str = "wt"
    size: int = Field(160, ge=16)
    in_plane: Literal["crop", "resize"] = "crop"
    normalisation: Literal["zscore_nonzero", "zscore", "none"] = "zscore_nonzero"
    workers: int = Field(2, ge=1)

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v % 16:
            raise ValueError("size must be a multiple of 16 (U-Net pooling)")
        return v

    @property
    def is_phantom(self) -> bool:
        return self.input is not None and self.input.strip().lower() == "phantom"


class BenchmarkConfig(_Strict):
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
        return _check_no_grid_keys(v, "train")

    @model_validator(mode="after")
    def _check(self) -> "BenchmarkConfig":
        from .config import PROFILES

        names = [e.name for e in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"method names must be unique: {', '.join(dup)} repeated")
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
    def fraction(self, entry: MethodEntry) -> float:
        return self.labeled_fraction if entry.labeled_fraction is None else entry.labeled_fraction

    def train_config(self, entry: MethodEntry, seed: int, splits: str | None):
        from .config import build_config

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


# ---------------------------------------------------------------------------------------- running
def _one_line(err: BaseException) -> str:
    text = str(err) if isinstance(err, SemicmlError) else f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _paths(cfg: BenchmarkConfig, out: Path) -> tuple[Path, Path]:
    """(dataset, store) paths, explicit or under ``out``."""
    prep = cfg.prepare
    if cfg.dataset is not None:
        dataset = Path(cfg.dataset)
    elif prep is not None and prep.input is not None and not prep.is_phantom:
        dataset = Path(prep.input)
    else:
        dataset = out / "data"
    store = Path(cfg.store) if cfg.store is not None else out / "store"
    return dataset, store


def _prepare(cfg: BenchmarkConfig, out: Path, dataset: Path, store: Path, progress: bool,
             say: Callable[[str], None]) -> None:
    """Create the phantom dataset and/or the store when the config asks for them and they are absent."""
    prep = cfg.prepare
    if prep is None or cfg.store is not None:
        return
    intent = {"prepare": prep.model_dump(mode="json"), "dataset": str(dataset), "store": str(store)}
    marker = out / "prepare.json"
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old != intent:
            raise ConfigError("the data/store in this output folder were made with a different 'prepare' section "
                              f"({_first_difference(old, intent)}); use another out or delete {store}", marker)
    else:
        atomic_write_json(marker, intent)
    if prep.is_phantom and not dataset.exists():
        from .data.phantom import write_phantom

        say(f"phantom: {prep.phantom.cases} cases {tuple(prep.phantom.shape)} -> {dataset}")
        write_phantom(dataset, cases=prep.phantom.cases, seed=prep.phantom.seed, shape=tuple(prep.phantom.shape),
                      modalities=tuple(prep.modalities))
    if not store.exists():
        from .data.store import PrepareOptions, prepare_store

        say(f"prepare slice store -> {store}")
        opts = PrepareOptions(modalities=tuple(prep.modalities), target=prep.target, size=prep.size,
                              in_plane=prep.in_plane, normalisation=prep.normalisation, workers=prep.workers)
        prepare_store(dataset, store, opts, fmt=prep.format, progress=progress)


def _first_difference(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return where or "?"
    return f"{where or 'value'}: {old!r} -> {new!r}"


def _row(entry: MethodEntry, cfg: BenchmarkConfig, seed: int, modality: str, run_rel: str) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in RESULT_COLUMNS}
    row.update(method=entry.name, method_id=entry.method, modality=modality, seed=seed,
               labeled_fraction=cfg.fraction(entry), run_dir=run_rel)
    return row


def _train_and_evaluate(tcfg, store, dataset: Path, run_dir: Path, progress: bool) -> tuple[str, dict, dict]:
    """Train (fresh or resumed) and evaluate one run; returns (action, run info, metrics per modality)."""
    from .engine.trainer import Trainer
    from .pipeline import evaluate_run

    current = tcfg.model_dump(mode="json")
    resume = (run_dir / "checkpoint.pt").is_file()
    if resume:
        saved = run_dir / "config.yaml"
        old = yaml.safe_load(saved.read_text()) if saved.is_file() else None
        if old != current:
            why = _first_difference(old, current) if isinstance(old, dict) else "no config.yaml"
            raise ConfigError(f"holds a run with a different configuration ({why}); delete it or use another out",
                              run_dir)
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # died before its first checkpoint: nothing worth keeping
    info = Trainer(tcfg, store, run_dir, resume=resume, progress=progress).fit()
    eval_dir = run_dir / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)  # an interrupted evaluation is redone in full
    metrics = evaluate_run(run_dir, dataset, eval_dir, progress=progress)
    return ("resumed" if resume else "trained"), info, metrics


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True, only: Sequence[str] | None = None,
                  echo: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the grid (resuming), write the result files into ``cfg.out``; return the result rows.

    ``only``: entry names to run; other entries are not trained, but their finished runs still
    appear in the results. Rows carry ``action`` = trained | resumed | skipped (finished by an
    earlier invocation) | failed, and ``status`` = ok | failed: <one-line error>.
    Raises :class:`ConfigError` / :class:`DataError` for problems of the whole grid (bad names in
    ``only``, missing store or dataset, bad splits file); problems of one run become failed rows.
    """
    from tqdm.auto import tqdm

    if cfg.out is None:
        raise ConfigError("no output folder: set 'out' in the benchmark config or pass --out")
    out = Path(cfg.out).resolve()
    names = [e.name for e in cfg.methods]
    if only is not None:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--only: no method named {', '.join(map(repr, unknown))} (have: {', '.join(names)})")
    selected = set(names if only is None else only)

    bar = None

    def say(text: str) -> None:
        if echo is not None:
            echo(text)
        elif bar is not None:
            bar.write(text)
        else:
            print(text, flush=True)

    out.mkdir(parents=True, exist_ok=True)
    dataset, store_path = _paths(cfg, out)
    _prepare(cfg, out, dataset, store_path, progress, say)

    from .data.splits import load_splits
    from .data.store import SliceStore

    store = SliceStore(store_path)  # opened once: a missing or broken store is ONE error, not N failed runs
    if not dataset.is_dir():
        raise DataError("dataset folder not found (needed to evaluate the test cases)", dataset)
    splits = str(Path(cfg.splits).resolve()) if cfg.splits else None
    if splits:
        load_splits(splits, store)

    # Seeds outer: a grid stopped early still compares every method on the seeds it finished.
    grid = [(e, s) for s in cfg.seeds for e in cfg.methods]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(grid), desc="benchmark", unit="run", disable=not progress, dynamic_ncols=True)
    try:
        for k, (entry, seed) in enumerate(grid, 1):
            run_rel = f"runs/{entry.name}/seed{seed}"
            run_dir = out / run_rel
            tag = f"[{k}/{len(grid)}] {entry.name} seed {seed}"
            bar.set_postfix_str(f"{entry.name} seed {seed}")
            run_rows = _run_one(cfg, entry, seed, store, dataset, run_dir, run_rel, splits, progress,
                                entry.name in selected)
            rows.extend(run_rows)
            say(f"{tag}: {_summary_line(run_rows)}")
            bar.update()
            if run_rows and run_rows[0]["action"] not in ("skipped", None):
                _write_tables(rows, out)  # after every run: an interrupted grid keeps its table
    finally:
        bar.close()
    write_results(rows, out, labeled_fraction=cfg.labeled_fraction, benchmark=cfg)
    return rows


def _run_one(cfg: BenchmarkConfig, entry: MethodEntry, seed: int, store, dataset: Path, run_dir: Path,
             run_rel: str, splits: str | None, progress: bool, selected: bool) -> list[dict[str, Any]]:
    marker = run_dir / RESULT_MARKER
    modalities = list(store.modalities)
    try:
        tcfg = cfg.train_config(entry, seed, splits)
        if tcfg.modalities:
            modalities = [store.modalities[store.modality_index(m)] for m in tcfg.modalities]
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("config") != tcfg.model_dump(mode="json"):
                why = _first_difference(done.get("config"), tcfg.model_dump(mode="json"))
                raise ConfigError(f"finished run has a different configuration ({why}); delete it or use another out",
                                  run_dir)
            rows = [dict(r, action="skipped") for r in done["rows"]]
            return rows
        if not selected:
            return []
        t0 = time.time()
        action, info, metrics = _train_and_evaluate(tcfg, store, dataset, run_dir, progress)
        seconds = round(time.time() - t0, 1)
        rows = []
        for m in info["modalities"]:
            row = _row(entry, cfg, seed, m, run_rel)
            row.update({k: metrics[m].get(k) for k in METRIC_COLUMNS})
            best = info.get("best_val", {}).get(m, {})
            row.update(n_test_cases=len(info["splits"]["test"]),
                       n_labeled_slices=(info.get("labeled") or {}).get("n_labeled_slices"),
                       best_val_dice=best.get("dice"),
                       best_val_iteration=best.get("iteration"),
                       teacher=(info.get("teacher") or {}).get("modality"), iterations=info.get("iterations"),
                       status="ok", action=action, seconds=seconds)
            rows.append(row)
        atomic_write_json(marker, {"name": entry.name, "method": entry.method, "seed": seed,
                                   "labeled_fraction": cfg.fraction(entry), "seconds": seconds,
                                   "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "config": tcfg.model_dump(mode="json"), "rows": rows})
        return rows
    except Exception as err:  # noqa: BLE001 - one run's failure must not stop the grid
        if not isinstance(err, SemicmlError):  # unexpected: keep the traceback for the post-mortem
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(run_dir / "error.txt", traceback.format_exc())
            except OSError:
                pass
        status = f"failed: {_one_line(err)}"
        rows = []
        for m in modalities:
            row = _row(entry, cfg, seed, m, run_rel)
            row.update(status=status, action="failed")
            rows.append(row)
        return rows


def _summary_line(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "not run (excluded by --only)"
    first = rows[0]
    if first["action"] == "failed":
        return first["status"].upper()[:6] + first["status"][6:]
    dice = ", ".join(f"{r['modality']} Dice {_f4(r['dice'])}" for r in rows)
    if first["action"] == "skipped":
        when = "finished earlier (skipped)"
    else:
        when = f"{first['action']} in {first['seconds']:.0f} s"
    teacher = f" | teacher {first['teacher']}" if first.get("teacher") else ""
    return f"{when} | {dice}{teacher}"


# ---------------------------------------------------------------------------------------- results
def _f4(v: Any) -> str:
    x = finite_number(v)
    return "n/a" if x is None else f"{x:.4f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(RESULT_COLUMNS) + [k for r in rows for k in r if k not in RESULT_COLUMNS]
    columns = list(dict.fromkeys(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def _write_tables(rows: Sequence[dict[str, Any]], out: Path, extra: dict[str, Any] | None = None) -> None:
    atomic_write_text(out / "results.csv", _csv_text(rows))
    atomic_write_json(out / "results.json", {**(extra or {}), "rows": list(rows)})


def _ok(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _ordered(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{modality: {method: {"n", "labeled_fraction", "method_id", "seconds", metric: {"mean", "std", "seeds"}}}}``
    over the successful runs (sample std, ddof=1, as in the evaluation reports; 0 for one seed)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for mod in _ordered(r["modality"] for r in rows):
        out[mod] = {}
        for name in _ordered(r["method"] for r in rows):
            sel = [r for r in _ok(rows) if r["modality"] == mod and r["method"] == name]
            allr = [r for r in rows if r["modality"] == mod and r["method"] == name]
            if not allr:
                continue
            entry: dict[str, Any] = {"n": len(sel), "n_failed": sum(r.get("status") != "ok" for r in allr),
                                     "labeled_fraction": allr[0]["labeled_fraction"], "method_id": allr[0]["method_id"]}
            secs = [s for s in (finite_number(r.get("seconds")) for r in sel) if s is not None]
            entry["seconds"] = float(np.mean(secs)) if secs else None
            n_lab = sorted({int(v) for v in (finite_number(r.get("n_labeled_slices")) for r in sel) if v is not None})
            entry["n_labeled_slices"] = n_lab  # the real count: a min_labeled floor can lift it above the fraction
            for key in METRIC_COLUMNS:
                vals = {r["seed"]: finite_number(r.get(key)) for r in sel}
                vals = {s: v for s, v in vals.items() if v is not None}
                arr = np.asarray(list(vals.values()), dtype=np.float64)
                entry[key] = {"mean": float(arr.mean()) if arr.size else None,
                              "std": (float(arr.std(ddof=1)) if arr.size > 1 else 0.0) if arr.size else None,
                              "seeds": vals}
            out[mod][name] = entry
    return out


def _reference(summary: dict[str, dict[str, Any]], fraction: float) -> str | None:
    for name, s in summary.items():
        if s["method_id"] == "supervised" and finite_number(s["labeled_fraction"]) is not None \
                and abs(float(s["labeled_fraction"]) - fraction) < 1e-9:
            return name
    return None


def _paired_delta(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int] | None:
    seeds = [s for s in a if s in b]
    if not seeds:
        return None
    d = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    return float(d.mean()), (float(d.std(ddof=1)) if d.size > 1 else 0.0), d.size


def _labelled_cell(summary: dict[str, Any]) -> str:
    """'10% (66 sl.)': the nominal fraction and the real slice count (a range when seeds differ)."""
    text = _pct(float(summary["labeled_fraction"]))
    counts = summary.get("n_labeled_slices") or []
    if counts:
        text += f" ({counts[0]} sl.)" if len(counts) == 1 else f" ({counts[0]}-{counts[-1]} sl.)"
    return text


def _markdown(rows: Sequence[dict[str, Any]], labeled_fraction: float | None, title: str) -> str:
    summary = summarize_rows(rows)
    if labeled_fraction is None:  # the most common fraction among the runs
        fracs = [r["labeled_fraction"] for r in rows]
        labeled_fraction = max(set(fracs), key=fracs.count) if fracs else 0.1
    seeds = _ordered(r["seed"] for r in rows)
    lines = [f"# {title}", "",
             f"Seeds: {', '.join(map(str, seeds))}. Each cell: mean ± sample std (ddof=1) over the seeds whose run "
             "succeeded (n); test cases only, each modality's network alone, 3D metrics on the original grid.",
             f"**Bold**: best value per column among the methods at the grid's labelled fraction "
             f"({_pct(labeled_fraction)}); rows at another fraction (e.g. the 100% upper bound) are not ranked.",
             "Δ Dice: mean ± std over seeds of the paired per-seed difference (same seed = same split and same "
             "labelled subset) to supervised training on the same slices; positive = better.",
             "Labelled: the nominal fraction of the training slices and, in brackets, the number of labelled slices "
             "actually used (a `min_labeled` floor can raise it).", ""]
    for mod, per_method in summary.items():
        ref_lo = _reference(per_method, labeled_fraction)
        ref_hi = _reference(per_method, 1.0) if labeled_fraction < 1.0 else None
        deltas = [(ref, f"Δ Dice vs sup-{_pct(frac)}") for ref, frac in ((ref_lo, labeled_fraction), (ref_hi, 1.0))
                  if ref is not None]
        best: dict[str, str] = {}
        for key, _, higher in TABLE_METRICS:
            fmt = _fmt_metric(key)
            cands = [fmt(s[key]["mean"]) for s in per_method.values()
                     if s[key]["mean"] is not None and abs(float(s["labeled_fraction"]) - labeled_fraction) < 1e-9]
            if cands:
                best[key] = (max if higher else min)(cands, key=float)
        header = ["Method", "Labelled", "n", *(label for _, label, _ in TABLE_METRICS), *(h for _, h in deltas),
                  "s/run"]
        lines += [f"## {mod} alone", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---", "---:", "---:"] + ["---:"] * (len(TABLE_METRICS) + len(deltas) + 1)) + "|"]
        for name, s in per_method.items():
            n = f"{s['n']}" + (f" ({s['n_failed']} failed)" if s["n_failed"] else "")
            cells = [name.replace("|", "\\|"), _labelled_cell(s), n]
            for key, _, _ in TABLE_METRICS:
                m, sd = s[key]["mean"], s[key]["std"]
                if m is None:
                    cells.append("failed" if s["n_failed"] else "n/a")
                    continue
                fmt = _fmt_metric(key)
                text = f"{fmt(m)} ± {fmt(sd)}"
                in_rank = abs(float(s["labeled_fraction"]) - labeled_fraction) < 1e-9
                cells.append(f"**{text}**" if in_rank and best.get(key) == fmt(m) else text)
            for ref, _ in deltas:
                if ref == name:
                    cells.append("—")
                    continue
                d = _paired_delta(s["dice"]["seeds"], per_method[ref]["dice"]["seeds"])
                cells.append("n/a" if d is None else f"{d[0]:+.4f} ± {d[1]:.4f}")
            cells.append("n/a" if s["seconds"] is None else f"{s['seconds']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        missing = [h for frac, h in ((labeled_fraction, "sup-" + _pct(labeled_fraction)), (1.0, "sup-100%"))
                   if _reference(per_method, frac) is None and (frac < 1.0 or labeled_fraction < 1.0)]
        if missing:
            lines.append("")
            lines.append(f"(no Δ column for {', '.join(dict.fromkeys(missing))}: no successful 'supervised' run at "
                         "that labelled fraction in the grid)")
        lines.append("")
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed runs", ""]
        seen = set()
        for r in failed:
            key = (r["method"], r["seed"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- {r['method']} seed {r['seed']} (`{r['run_dir']}`): {r['status']}")
        lines.append("")
    teachers = [(r["method"], r["seed"], r["teacher"]) for r in _ok(rows) if r.get("teacher")]
    if teachers:
        lines += ["PReL teacher per run: " + ", ".join(f"{m} s{s}: {t}" for m, s, t in _ordered(teachers)), ""]
    return "\n".join(lines)


def _fmt_metric(key: str) -> Callable[[float], str]:
    return (lambda v: f"{v:.2f}") if key in ("hd95", "asd") else (lambda v: f"{v:.4f}")


def plot_val_curves(curves: dict[str, dict[int, list[dict[str, Any]]]], out_path: str | Path) -> Path:
    """Validation Dice vs iteration: one panel per modality, one colour per method; thin lines are
    seeds, the thick line is the mean over seeds at the iterations all seeds validated.

    ``curves`` is ``{method: {seed: log.jsonl records}}`` (records with ``val_dice/<modality>``).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modalities: list[str] = []
    for per_seed in curves.values():
        for records in per_seed.values():
            for r in records:
                for k in r:
                    if k.startswith("val_dice/") and k[9:] not in modalities:
                        modalities.append(k[9:])
    n = max(1, len(modalities))
    fig = Figure(figsize=(6 * n, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    cmap = colormaps["tab10"]
    if not modalities:
        axes[0].text(0.5, 0.5, "no validation records", ha="center", va="center", transform=axes[0].transAxes)
    for ax, mod in zip(axes, modalities):
        key = f"val_dice/{mod}"
        for i, (method, per_seed) in enumerate(curves.items()):
            color = cmap(i % 10)
            series = []
            for records in per_seed.values():
                pts = {int(r["iteration"]): float(r[key]) for r in records
                       if finite_number(r.get(key)) is not None and finite_number(r.get("iteration")) is not None}
                if pts:
                    series.append(pts)
                    xs = sorted(pts)
                    ax.plot(xs, [pts[x] for x in xs], color=color, alpha=0.3, linewidth=0.8)
            if not series:
                continue
            common = sorted(set.intersection(*(set(s) for s in series)))
            if common:
                ax.plot(common, [float(np.mean([s[x] for s in series])) for x in common], color=color, linewidth=2,
                        label=f"{method} (n={len(series)})")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation Dice")
        ax.set_title(f"{mod}: validation Dice (thick: mean over seeds; thin: seeds)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_path


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return records


def write_results(rows: Sequence[dict[str, Any]], out: str | Path, labeled_fraction: float | None = None,
                  benchmark: BenchmarkConfig | None = None, title: str | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json``, ``results.md``, ``dice.png`` and ``val_curves.png``.

    ``labeled_fraction`` is the grid's labelled fraction (default: the most common one in the
    rows); validation curves are read from ``out/<row run_dir>/log.jsonl``. Returns the paths.
    A plot with nothing to show (every run failed) is skipped, not an error.
    """
    from .evaluation.plots import plot_metric_bars

    out = Path(out)
    rows = list(rows)
    extra: dict[str, Any] = {"summary": summarize_rows(rows)}
    if benchmark is not None:
        extra = {"benchmark": benchmark.model_dump(mode="json"), **extra}
    _write_tables(rows, out, extra)
    title = title or f"Benchmark: {out.name}"
    atomic_write_text(out / "results.md", _markdown(rows, labeled_fraction, title))
    paths = {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md"}
    ok = _ok(rows)
    if any(finite_number(r.get("dice")) is not None for r in ok):
        paths["dice"] = plot_metric_bars(ok, "dice", out / "dice.png")
    curves: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in ok:
        per_seed = curves.setdefault(r["method"], {})
        if r["seed"] not in per_seed:
            per_seed[r["seed"]] = _read_log(out / r["run_dir"] / "log.jsonl")
    if curves:
        paths["val_curves"] = plot_val_curves(curves, out / "val_curves.png")
    return paths
