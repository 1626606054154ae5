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

from semicml.benchmark.config import BenchmarkConfig, MethodEntry, PrepareSection, load_benchmark_config
from semicml.benchmark.runner import run_benchmark
from semicml.benchmark.tables import RESULT_COLUMNS, write_results

__all__ = ["BenchmarkConfig", "MethodEntry", "PrepareSection", "load_benchmark_config", "run_benchmark",
           "write_results", "RESULT_COLUMNS"]
