"""Running the grid: prepare the data once, then train and evaluate every (method, seed) run,
resuming what an earlier invocation left; one run's failure never stops the grid."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from semicml.benchmark.config import BenchmarkConfig, MethodEntry
from semicml.benchmark.tables import RESULT_COLUMNS, summary_line, write_results, write_tables
from semicml.config import with_absent_settings
from semicml.errors import ConfigError, DataError, SemicmlError
from semicml.evaluation.metrics import METRICS
from semicml.io_utils import atomic_write_json, atomic_write_text
from semicml.locking import exclusive

__all__ = ["RESULT_MARKER", "run_benchmark"]

RESULT_MARKER = "result.json"


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


# Prepare keys added later, with the value every earlier benchmark store was made with.
LEGACY_PREPARE = {"spacing": "median"}


def _prepare(cfg: BenchmarkConfig, out: Path, dataset: Path, store: Path, progress: bool,
             say: Callable[[str], None]) -> None:
    """Create the phantom dataset and/or the store when the config asks for them and they are absent."""
    prep = cfg.prepare
    if prep is None or cfg.store is not None:
        return
    intent = {"prepare": prep.model_dump(mode="json"), "dataset": str(dataset), "store": str(store)}
    marker = out / "prepare.json"
    if marker.is_file():
        # folders prepared before these keys existed were made with what they mean now
        old = json.loads(marker.read_text())
        old["prepare"] = {**LEGACY_PREPARE, **old.get("prepare", {})}
        if old != intent:
            raise ConfigError("the data/store in this output folder were made with a different 'prepare' section "
                              f"({first_difference(old, intent)}); use another out or delete {store}", marker)
    else:
        atomic_write_json(marker, intent)
    if prep.is_phantom and not dataset.exists():
        from semicml.data.phantom import write_phantom

        say(f"phantom: {prep.phantom.cases} cases {tuple(prep.phantom.shape)} -> {dataset}")
        write_phantom(dataset, cases=prep.phantom.cases, seed=prep.phantom.seed, shape=tuple(prep.phantom.shape),
                      modalities=tuple(prep.modalities))
    if not store.exists():
        from semicml.data.store import PrepareOptions, prepare_store

        say(f"prepare slice store -> {store}")
        from semicml.data.prepare import parse_normalisation

        # A fixed split keeps its test labels out of the CT/PET statistics; cross-validation shares
        # one store across folds, so there they come from every labelled case (MRI is per case).
        stats = None
        if cfg.splits is not None:
            split = json.loads(Path(cfg.splits).read_text())
            stats = tuple(split.get("train", [])) + tuple(split.get("val", []))
        opts = PrepareOptions(modalities=tuple(prep.modalities), target=prep.target, size=prep.size,
                              in_plane=prep.in_plane, normalisation=parse_normalisation(prep.normalisation),
                              workers=prep.workers, spacing=prep.spacing, stats_cases=stats)
        prepare_store(dataset, store, opts, fmt=prep.format, progress=progress)


def config_difference(saved: Any, current: Any) -> str | None:
    """Where a finished run's recorded configuration differs from ``current`` (a TrainConfig);
    None when they are the same. A run recorded before a setting existed is read through today's
    schema first, the setting taking the value that meant the behaviour before it
    (``config.BEFORE_IT_EXISTED``), else its default; so the finished run stands exactly when
    today's grid asks for what it did."""
    from pydantic import ValidationError

    now = current.model_dump(mode="json")
    if saved == now:
        return None
    if isinstance(saved, dict):
        try:
            read = type(current).model_validate(with_absent_settings(saved)).model_dump(mode="json")
        except ValidationError:  # a setting renamed or removed since: a real difference
            read = None
        if read is not None:
            return None if read == now else first_difference(read, now)
    return first_difference(saved, now)


def _split_sets(split: Any) -> dict[str, list[str]] | None:
    if not isinstance(split, dict):
        return None
    return {k: sorted(map(str, split.get(k) or [])) for k in ("train", "val", "test")}


def _run_split(run_dir: Path) -> dict[str, list[str]] | None:
    """The patients a run was trained, selected and tested on: its splits.json (written at its
    start), else its run.json (exported grids keep only that)."""
    for name, pick in (("splits.json", lambda d: d), ("run.json", lambda d: d.get("splits"))):
        path = run_dir / name
        if path.is_file():
            try:
                return _split_sets(pick(json.loads(path.read_text())))
            except (OSError, ValueError, AttributeError):
                return None
    return None


def _grid_folds_moved(saved: Any, fold: int | None, splits: str | None, run_dir: Path) -> Any:
    """A fold's splits file lives in the grid's own ``splits/`` folder, recorded by absolute path;
    a grid copied or moved elsewhere records the old place. The recorded path is rebased onto this
    grid's fold file only when the run used exactly that fold's patients (a run copied in from a
    grid with other folds keeps its old path, so it reads as a different configuration)."""
    if fold is None or splits is None or not isinstance(saved, dict) or not isinstance(saved.get("splits"), str):
        return saved
    if saved["splits"] == splits or re.split(r"[\\/]", saved["splits"])[-2:] != ["splits", f"fold{fold}.json"]:
        return saved
    try:
        grid_fold = _split_sets(json.loads(Path(splits).read_text()))
    except (OSError, ValueError):
        return saved
    run = _run_split(run_dir)
    return dict(saved, splits=splits) if run is not None and run == grid_fold else saved


def first_difference(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return where or "?"
    return f"{where or 'value'}: {old!r} -> {new!r}"


def _row(entry: MethodEntry, cfg: BenchmarkConfig, seed: int, modality: str, run_rel: str,
         fold: int | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in RESULT_COLUMNS}
    row.update(method=entry.name, method_id=entry.method, modality=modality, seed=seed, fold=fold,
               labeled_fraction=cfg.fraction(entry), run_dir=run_rel)
    return row


def _reused(row: dict[str, Any], entry: MethodEntry, cfg: BenchmarkConfig, seed: int, run_rel: str,
            fold: int | None) -> dict[str, Any]:
    """A finished run's recorded row under this grid's name for it (an entry renamed, or runs moved
    in from another grid with the same configuration, are labelled as the grid says)."""
    ident = _row(entry, cfg, seed, row["modality"], run_rel, fold)
    keys = ("method", "method_id", "seed", "fold", "labeled_fraction", "run_dir")
    return {**row, **{k: ident[k] for k in keys}, "action": "skipped"}


def _fold_splits(cfg: BenchmarkConfig, store, out: Path) -> dict[int, str]:
    """Write (or check) ``OUT/splits/fold<k>.json``; a grid resumed under other folds is refused."""
    from semicml.data.splits import make_cv_splits

    cv = cfg.cross_validation
    paths: dict[int, str] = {}
    for k, splits in enumerate(make_cv_splits(store, cv.folds, cv.val_cases, cv.seed)):
        path = out / "splits" / f"fold{k}.json"
        data = {"description": f"fold {k} of {cv.folds}-fold cross-validation (seed {cv.seed})", **splits.to_json()}
        if path.is_file() and json.loads(path.read_text()) != data:
            raise ConfigError("holds another cross-validation split; use another out", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data)
        paths[k] = str(path)
    return paths


def _train_and_evaluate(tcfg, store, dataset: Path, run_dir: Path, progress: bool,
                        fused: bool = False, fold: int | None = None) -> tuple[str, dict, dict]:
    """Train (fresh or resumed) and evaluate one run; returns (action, run info, metrics per modality)."""
    from semicml.engine.trainer import Trainer
    from semicml.pipeline import evaluate_run

    resume = (run_dir / "checkpoint.pt").is_file()
    if resume:
        saved = run_dir / "config.yaml"
        old = _grid_folds_moved(yaml.safe_load(saved.read_text()) if saved.is_file() else None, fold,
                                tcfg.splits, run_dir)
        # read like a finished run's record: a setting added since the run started does not stop it
        # when the grid asks for what the run did before the setting existed
        why = config_difference(old, tcfg) if isinstance(old, dict) else "no config.yaml"
        if why:
            raise ConfigError(f"holds a run with a different configuration ({why}); delete it or use another out",
                              run_dir)
    elif run_dir.exists():
        # died before its first checkpoint: nothing worth keeping, unless another process is
        # training it right now (a second grid or script on the same folder): then fail, delete nothing
        with exclusive(run_dir, "training run"):
            shutil.rmtree(run_dir)
    info = Trainer(tcfg, store, run_dir, resume=resume, progress=progress).fit()
    eval_dir = run_dir / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)  # an interrupted evaluation is redone in full
    metrics = evaluate_run(run_dir, dataset, eval_dir, progress=progress, fused=fused)
    return ("resumed" if resume else "trained"), info, metrics


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True, only: Sequence[str] | None = None,
                  echo: Callable[[str], None] | None = None, jobs: int = 1,
                  threads: int | None = None) -> list[dict[str, Any]]:
    """Run the grid (resuming), write the result files into ``cfg.out``; return the result rows.

    ``only``: entry names to run; other entries are not trained, but their finished runs still
    appear in the results. Rows carry ``action`` = trained | resumed | skipped (finished by an
    earlier invocation) | failed, and ``status`` = ok | failed: <one-line error>.
    Raises :class:`ConfigError` / :class:`DataError` for problems of the whole grid (bad names in
    ``only``, missing store or dataset, bad splits file); problems of one run become failed rows.
    ``jobs`` > 1 trains that many runs at once, each in its own process (one GPU or many cores
    shared), with ``threads`` CPU threads each (default: the cores / ``jobs``; serial: torch's
    default). Every run is seeded, but float sums depend on the thread count: the same ``threads``
    (and CPU kind and precision, see run.json ``compute``) repeat a grid bit for bit, other threads
    give other last bits, which training amplifies into differences as large as a reseed's.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1 (got {threads})")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1 (got {jobs})")
    if cfg.out is None:
        raise ConfigError("no output folder: set 'out' in the benchmark config or pass --out")
    out = Path(cfg.out).resolve()
    names = [e.name for e in cfg.methods]
    if only is not None:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--only: no method named {', '.join(map(repr, unknown))} (have: {', '.join(names)})")
    selected = set(names if only is None else only)

    with exclusive(out, "benchmark output folder"):  # two benchmarks into one folder would race
        return _run_grid(cfg, out, progress, selected, echo, jobs, threads)


def _grid_runs(cfg: BenchmarkConfig) -> list[tuple[MethodEntry, int, int | None, str, str]]:
    """(entry, seed, fold, run folder relative to out, "seed S fold F") of every run of the grid.
    Seeds outer, then folds: a grid stopped early still compares every method on what it finished."""
    return [(e, s, f, f"runs/{e.name}/seed{s}" + ("" if f is None else f"/fold{f}"),
             f"seed {s}" + ("" if f is None else f" fold {f}"))
            for s in cfg.seeds for f in cfg.folds() for e in cfg.methods]


def report_benchmark(cfg: BenchmarkConfig, echo: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The result files of the runs finished so far, from their markers alone: no store, no
    dataset and nothing trained (``semicml benchmark --report-only``), so a grid copied from
    another machine can be reported where its data is not. A marker whose configuration differs
    from the grid's is reported as failed, never mixed in."""
    if cfg.out is None:
        raise ConfigError("no output folder: set 'out' in the benchmark config or pass --out")
    out = Path(cfg.out).resolve()
    if not (out / "runs").is_dir():
        raise ConfigError("no run to report (no runs/ folder)", out)
    say = echo or (lambda text: print(text, flush=True))
    fixed = str(Path(cfg.splits).resolve()) if cfg.splits else None
    rows: list[dict[str, Any]] = []
    with exclusive(out, "benchmark output folder"):
        grid = _grid_runs(cfg)
        for k, (entry, seed, fold, run_rel, where) in enumerate(grid):
            marker = out / run_rel / RESULT_MARKER
            if not marker.is_file():
                continue
            done = json.loads(marker.read_text())
            splits = fixed if fold is None else str(out / "splits" / f"fold{fold}.json")
            why = config_difference(_grid_folds_moved(done.get("config"), fold, splits, out / run_rel),
                                    cfg.train_config(entry, seed, splits))
            status = (f"failed: {out / run_rel}: finished run has a different configuration ({why})" if why
                      else None)
            run_rows = [_reused(r, entry, cfg, seed, run_rel, fold) if status is None else
                        {**_row(entry, cfg, seed, r["modality"], run_rel, fold), "status": status, "action": "failed"}
                        for r in done["rows"]]
            say(f"[{k + 1}/{len(grid)}] {entry.name} {where}: {summary_line(run_rows)}")
            rows += run_rows
        write_results(rows, out, labeled_fraction=cfg.labeled_fraction, benchmark=cfg)
    return rows


def _run_grid(cfg: BenchmarkConfig, out: Path, progress: bool, selected: set[str],
              echo: Callable[[str], None] | None, jobs: int = 1, threads: int | None = None) -> list[dict[str, Any]]:
    import torch
    from tqdm.auto import tqdm

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

    from semicml.data.splits import load_splits
    from semicml.data.store import SliceStore

    store = SliceStore(store_path)  # opened once: a missing or broken store is ONE error, not N failed runs
    if not dataset.is_dir():
        raise DataError("dataset folder not found (needed to evaluate the test cases)", dataset)
    splits = str(Path(cfg.splits).resolve()) if cfg.splits else None
    if splits:
        load_splits(splits, store)
    fold_splits = _fold_splits(cfg, store, out) if cfg.cross_validation else {}

    grid = _grid_runs(cfg)
    tasks = [(entry, seed, fold, run_rel, where, splits if fold is None else fold_splits[fold])
             for entry, seed, fold, run_rel, where in grid]
    done: dict[int, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(grid), desc="benchmark", unit="run", disable=not progress, dynamic_ncols=True)

    def record(k: int, run_rows: list[dict[str, Any]]) -> None:
        entry, seed, fold, run_rel, where, _ = tasks[k]
        done[k] = run_rows
        say(f"[{k + 1}/{len(grid)}] {entry.name} {where}: {summary_line(run_rows)}")
        bar.update()
        if run_rows and run_rows[0]["action"] not in ("skipped", None):
            # after every run, in grid order: an interrupted grid keeps its table
            write_tables([r for j in sorted(done) for r in done[j]], out)

    serial_threads = torch.get_num_threads()
    try:
        if jobs == 1:
            torch.set_num_threads(threads or serial_threads)
            for k, (entry, seed, fold, run_rel, where, run_splits) in enumerate(tasks):
                bar.set_postfix_str(f"{entry.name} {where}")
                record(k, _run_one(cfg, entry, seed, store, dataset, out / run_rel, run_rel, run_splits, progress,
                                   entry.name in selected, fold))
        else:
            _run_parallel(cfg, tasks, store, dataset, out, selected, jobs, record, threads)
    finally:
        torch.set_num_threads(serial_threads)
        bar.close()
    rows = [r for k in sorted(done) for r in done[k]]
    write_results(rows, out, labeled_fraction=cfg.labeled_fraction, benchmark=cfg)
    return rows


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # jobs share the cores instead of oversubscribing them


def _run_in_worker(cfg: BenchmarkConfig, entry: MethodEntry, seed: int, store_path: str, dataset: Path,
                   run_dir: Path, run_rel: str, splits: str | None, fold: int | None) -> list[dict[str, Any]]:
    from semicml.data.store import SliceStore

    return _run_one(cfg, entry, seed, SliceStore(store_path), dataset, run_dir, run_rel, splits, False, True, fold)


def _run_parallel(cfg: BenchmarkConfig, tasks: list, store, dataset: Path, out: Path, selected: set[str],
                  jobs: int, record: Callable[[int, list[dict[str, Any]]], None], threads: int | None = None) -> None:
    """Finished and unselected runs are answered here; the rest go to ``jobs`` spawned processes
    (spawn, not fork: CUDA cannot be used in a forked child)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pending = []
    for k, (entry, seed, fold, run_rel, _, run_splits) in enumerate(tasks):
        if (out / run_rel / RESULT_MARKER).is_file() or entry.name not in selected:
            record(k, _run_one(cfg, entry, seed, store, dataset, out / run_rel, run_rel, run_splits, False,
                               entry.name in selected, fold))
        else:
            pending.append(k)
    # Many runs at once finish a method on every fold before the next method starts: a grid stopped
    # early then holds complete per-patient comparisons for the entries listed first.
    order = {e.name: i for i, e in enumerate(cfg.methods)}
    pending.sort(key=lambda k: (tasks[k][1], order[tasks[k][0].name], -1 if tasks[k][2] is None else tasks[k][2]))
    if not pending:
        return
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {}
        for k in pending:
            entry, seed, fold, run_rel, _, run_splits = tasks[k]
            futures[pool.submit(_run_in_worker, cfg, entry, seed, str(store.root), dataset, out / run_rel, run_rel,
                                run_splits, fold)] = k
        for future in as_completed(futures):
            k = futures[future]
            try:
                run_rows = future.result()
            except Exception as err:  # noqa: BLE001 - a worker that died (OOM, signal) fails its run only
                entry, seed, fold, run_rel, _, _ = tasks[k]
                run_rows = []
                for m in store.modalities:
                    row = _row(entry, cfg, seed, m, run_rel, fold)
                    row.update(status=f"failed: {_one_line(err)}", action="failed")
                    run_rows.append(row)
            record(k, run_rows)


def _add_fused(done: dict, rows: list[dict[str, Any]], dataset: Path, run_dir: Path, marker: Path,
               progress: bool) -> list[dict[str, Any]]:
    """Evaluate the fused prediction of a run finished without it; its row joins the marker."""
    from semicml.pipeline import evaluate_run

    metrics = evaluate_run(run_dir, dataset, run_dir / "eval", progress=progress, fused=True, singles=False)
    for name, values in metrics.items():
        row = dict(rows[0], modality=name, best_val_dice=None, best_val_iteration=None)
        row.update({k: values.get(k) for k in METRICS})
        rows.append(row)
        done["rows"].append({k: v for k, v in row.items() if k != "action"} | {"action": done["rows"][0]["action"]})
    atomic_write_json(marker, done)
    return rows


def _run_one(cfg: BenchmarkConfig, entry: MethodEntry, seed: int, store, dataset: Path, run_dir: Path,
             run_rel: str, splits: str | None, progress: bool, selected: bool,
             fold: int | None = None) -> list[dict[str, Any]]:
    marker = run_dir / RESULT_MARKER
    modalities = list(store.modalities)
    try:
        tcfg = cfg.train_config(entry, seed, splits)
        if tcfg.modalities:
            modalities = [store.modalities[store.modality_index(m)] for m in tcfg.modalities]
        if marker.is_file():
            done = json.loads(marker.read_text())
            why = config_difference(_grid_folds_moved(done.get("config"), fold, splits, run_dir), tcfg)
            if why:
                raise ConfigError(f"finished run has a different configuration ({why}); delete it or use another out",
                                  run_dir)
            rows = [_reused(r, entry, cfg, seed, run_rel, fold) for r in done["rows"]]
            if cfg.fused and selected and len(rows) >= 2 and not any("+" in r["modality"] for r in rows):
                rows = _add_fused(done, rows, dataset, run_dir, marker, progress)  # finished before fused was asked
            return rows
        if not selected:
            return []
        t0 = time.time()
        action, info, metrics = _train_and_evaluate(tcfg, store, dataset, run_dir, progress, cfg.fused, fold)
        seconds = time.time() - t0
        if "seconds_trained" in info:  # a resumed run: its training in every session, not only this one's
            seconds += info["seconds_trained"] - info.get("seconds_last_session", 0.0)
        seconds = round(seconds, 1)
        rows = []
        for m in metrics:  # each modality alone, then the fused prediction when asked for
            row = _row(entry, cfg, seed, m, run_rel, fold)
            row.update({k: metrics[m].get(k) for k in METRICS})
            best = info.get("best_val", {}).get(m, {})  # none for a fused row
            row.update(n_test_cases=len(info["splits"]["test"]),
                       n_labeled_slices=(info.get("labeled") or {}).get("n_labeled_slices"),
                       best_val_dice=best.get("dice"),
                       best_val_iteration=best.get("iteration"),
                       teacher=(info.get("teacher") or {}).get("modality"), iterations=info.get("iterations"),
                       status="ok", action=action, seconds=seconds,
                       train_threads=(info.get("compute") or {}).get("threads"),
                       train_precision=info.get("precision"),
                       compute_changes="; ".join(info.get("compute_changes") or []) or None)
            rows.append(row)
        atomic_write_json(marker, {"name": entry.name, "method": entry.method, "seed": seed, "fold": fold,
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
            row = _row(entry, cfg, seed, m, run_rel, fold)
            row.update(status=status, action="failed")
            rows.append(row)
        return rows
