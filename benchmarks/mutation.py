"""Mutation testing of the core modules with mutmut (not part of CI: it takes tens of minutes).

    pip install "mutmut==3.8.1"
    nice -n 19 python benchmarks/mutation.py --label after            # working tree, core modules
    nice -n 19 python benchmarks/mutation.py --label before --ref issue9 --tests default-before
    python benchmarks/mutation.py --known-bugs                         # the issue-14 hand mutations
    python benchmarks/mutation.py --known-bugs --tests listed          # only the test listed per bug
    python benchmarks/mutation.py --hand predictor                     # hand mutants mutmut cannot make
    python benchmarks/mutation.py --table                              # before / after of every module

What it does: copies the tracked files of ``--ref`` (default: the working tree) to a scratch
directory, writes a ``[tool.mutmut]`` section there (which modules to mutate, which FAST test
files to run), runs ``mutmut run`` and writes, under ``benchmarks/results/mutation/<label>/``:

    summary.json / summary.md   killed / survived / no tests / timeout per module
    survivors.txt               the diff of every surviving mutant (``mutmut show``)
    no_tests.txt                mutants no selected test runs (names only)

``--known-bugs`` applies each of the deliberate bugs listed in issue 14 to a scratch copy and
runs the fast core tests: every bug must make at least one test fail (it prints which).

mutmut 3 mutates functions through a trampoline and does not mutate functions with decorators
other than @staticmethod/@classmethod (here: ``blend_`` and ``mc_soft_labels`` under
``@torch.no_grad()``); those are covered by the direct tests only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "mutation"

# Modules named in issue 14 (relative to src/semicml). The first four are the most important.
MODULES = {
    "methods": "src/semicml/methods/*",
    # Semi-CML's own methods: the base class, stage 1, stage 2 and the teachers (not the
    # single-modality baselines cps / mean_teacher / uamt / supervised).
    "methods/base.py": "src/semicml/methods/base.py",
    "methods/semicml.py": "src/semicml/methods/semicml.py",
    "methods/prel.py": "src/semicml/methods/prel.py",
    "methods/teachers.py": "src/semicml/methods/teachers.py",
    "losses": "src/semicml/losses/*",
    # per file, for the report (--report-only --modules losses/contrastive.py ...)
    "losses/contrastive.py": "src/semicml/losses/contrastive.py",
    "losses/segmentation.py": "src/semicml/losses/segmentation.py",
    "losses/prel.py": "src/semicml/losses/prel.py",
    "losses/validation.py": "src/semicml/losses/validation.py",
    "inference/postprocess.py": "src/semicml/inference/postprocess.py",
    "data/sampler.py": "src/semicml/data/sampler.py",
    "inference": "src/semicml/inference/*",
    "inference/predict.py": "src/semicml/inference/predict.py",
    "inference/predictor.py": "src/semicml/inference/predictor.py",
    "inference/engines.py": "src/semicml/inference/engines.py",
    "inference/export.py": "src/semicml/inference/export.py",
    "inference/weights.py": "src/semicml/inference/weights.py",
    # the single-modality baselines
    "methods/supervised.py": "src/semicml/methods/supervised.py",
    "methods/mean_teacher.py": "src/semicml/methods/mean_teacher.py",
    "methods/uamt.py": "src/semicml/methods/uamt.py",
    "methods/cps.py": "src/semicml/methods/cps.py",
    "evaluation/metrics.py": "src/semicml/evaluation/metrics.py",
    "data/splits.py": "src/semicml/data/splits.py",
    "data/preprocess.py": "src/semicml/data/preprocess.py",
    # preprocessing code that moved out of preprocess.py (issue 9/10)
    "data/normalisation.py": "src/semicml/data/normalisation.py",
    "data/geometry.py": "src/semicml/data/geometry.py",
    # inference modules added by issues 11 and 12
    "inference/fusion.py": "src/semicml/inference/fusion.py",
    "inference/uncertainty.py": "src/semicml/inference/uncertainty.py",
    "inference/quantize.py": "src/semicml/inference/quantize.py",
}
IMPORTANT = ["methods/base.py", "methods/semicml.py", "methods/prel.py", "methods/teachers.py", "losses",
             "inference/postprocess.py", "data/sampler.py"]

# The fast test files that kill the mutants (the runner command of mutmut).
FAST_TESTS = ["tests/test_core_methods.py", "tests/test_core_prel.py", "tests/test_core_inference.py",
              "tests/test_core_data.py",
              "tests/test_losses.py", "tests/test_store.py"]
# Test keywords left out of the runner (``-k "not ..."``), e.g. whole-engine tests; none by default.
SLOW_KEYWORDS: list[str] = []
# The same selection on the code as found (before the core tests existed).
BEFORE_TESTS = ["tests/test_losses.py", "tests/test_store.py"]


def mutmut_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())"]


def copy_tree(ref: str | None, dest: Path) -> None:
    """Tracked (and, for the working tree, untracked non-ignored) files of ``ref`` into ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if ref:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def write_config(dest: Path, modules: list[str], tests: list[str]) -> None:
    toml = (dest / "pyproject.toml").read_text()
    toml = toml.split("\n[tool.mutmut]\n")[0]  # written last by this script: drop an earlier one
    patterns = ", ".join(json.dumps(MODULES[m]) for m in modules)
    pytest_args = ["-m", "not slow and not realdata", "-p", "no:cacheprovider", "-q"]
    if SLOW_KEYWORDS:
        pytest_args[2:2] = ["-k", " and ".join(f"not {k}" for k in SLOW_KEYWORDS)]
    toml += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = [{patterns}]\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        f"pytest_add_cli_args = {json.dumps(pytest_args)}\n"
        'process_isolation = "forkserver"\n'
    )
    (dest / "pyproject.toml").write_text(toml)


def module_of(mutant: str, modules: list[str]) -> str:
    """``semicml.methods.prel.x_fn__mutmut_3`` -> the MODULES key it belongs to (most specific)."""
    path = "src/" + mutant.split(".x")[0].split(".xǁ")[0].replace(".", "/") + ".py"
    import fnmatch

    hits = [m for m in modules if fnmatch.fnmatch(path, MODULES[m])]
    return min(hits, key=lambda m: len(MODULES[m].replace("*", "~" * 99))) if hits else path


def mutmut_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    extra = os.environ.get("MUTMUT_SITE")  # a --target install of mutmut, if not in the venv
    if extra:
        env["PYTHONPATH"] = extra
    return env


def survivors_in(work: Path) -> list[str]:
    text = subprocess.run([*mutmut_command(), "results"], cwd=work, env=mutmut_env(), check=True,
                          capture_output=True, text=True).stdout
    return [line.rsplit(":", 1)[0].strip() for line in text.splitlines()
            if line.rstrip().endswith((": survived", ": no tests"))]


def run_mutmut(work: Path, max_children: int, niceness: int = 19) -> None:
    """``mutmut run`` of every mutant without a verdict (results already in ``work`` are kept)."""
    env = mutmut_env()
    cmd = ["nice", "-n", str(niceness), *mutmut_command(), "run", "--max-children", str(max_children)]
    print("running", " ".join(cmd[:3]), "... mutmut run in", work, flush=True)
    subprocess.run(cmd, cwd=work, env=env, check=False)


def collect(work: Path, modules: list[str], out: Path, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("MUTMUT_SITE"):
        env["PYTHONPATH"] = os.environ["MUTMUT_SITE"]
    text = subprocess.run([*mutmut_command(), "results", "--all", "true"], cwd=work, env=env, check=True,
                          capture_output=True, text=True).stdout
    per: dict[str, Counter] = defaultdict(Counter)
    survivors, untested = [], []
    for line in text.splitlines():
        if ":" not in line:
            continue
        name, status = (s.strip() for s in line.rsplit(":", 1))
        per[module_of(name, modules)][status] += 1
        if status == "survived":
            survivors.append(name)
        elif status == "no tests":
            untested.append(name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "no_tests.txt").write_text("".join(f"{name}\n" for name in untested))
    with open(out / "survivors.txt", "w") as fh:  # one mutmut process for every diff
        script = ("import sys\nfrom mutmut.__main__ import cli\n"
                  "for name in sys.argv[1:]:\n"
                  "    try:\n        cli(['show', name], standalone_mode=False)\n"
                  "    except SystemExit:\n        pass\n")
        if survivors:
            fh.write(subprocess.run([sys.executable, "-c", script, *survivors], cwd=work, env=env,
                                    capture_output=True, text=True).stdout)
    rows = {}
    for mod in sorted(per):
        c = per[mod]
        total = sum(c.values())
        killed = c["killed"] + c["timeout"] + c["caught by type check"]
        checked = total - c["not checked"]
        rows[mod] = {"total": total, "killed": c["killed"], "timeout": c["timeout"], "survived": c["survived"],
                     "no_tests": c["no tests"], "not_checked": c["not checked"],
                     "other": checked - killed - c["survived"] - c["no tests"],
                     "score": round(killed / checked, 4) if checked else None}
    keys = ("total", "killed", "timeout", "survived", "no_tests", "not_checked", "other")
    total = {k: sum(r[k] for r in rows.values()) for k in keys}
    checked = total["total"] - total["not_checked"]
    total["score"] = round((total["killed"] + total["timeout"]) / checked, 4) if checked else None
    summary = {"modules": rows, "total": total, "seconds": round(seconds), "survivors": survivors}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["| module | mutants | killed | timeout | survived | no tests | not run | killed % of run |",
             "|---|---|---|---|---|---|---|---|"]
    for mod, r in list(rows.items()) + [("**all**", total)]:
        score = "-" if r["score"] is None else f"{100 * r['score']:.1f}"
        lines.append(f"| {mod} | {r['total']} | {r['killed']} | {r['timeout']} | {r['survived']} | {r['no_tests']} "
                     f"| {r['not_checked']} | {score} |")
    (out / "summary.md").write_text("\n".join(lines) + f"\n\nwall time: {seconds / 60:.1f} min\n")
    print("\n".join(lines))
    return summary


# --------------------------------------------------------------------------- issue 14 hand bugs
KNOWN_BUGS = [
    ("BMA alpha inverted", "src/semicml/methods/teachers.py",
     "min(1 - (score - pool_min) / score, self.max_alpha)", "min((score - pool_min) / score, self.max_alpha)"),
    ("ASC dropped from the Semi-CML loss", "src/semicml/methods/semicml.py",
     "total = total + sc.asc_weight * losses[\"asc\"]", "total = total"),
    ("PReL students fed the teacher's modality", "src/semicml/methods/prel.py",
     "logits = self.students[str(i)](self.channel(x, i)).float()",
     "logits = self.students[str(i)](self.channel(x, t)).float()"),
    ("predict not moved back to the input orientation", "src/semicml/data/preprocess.py",
     "return from_axial_last(restore_in_plane(on_grid, self.grid, order=1), self.axis)",
     "return restore_in_plane(on_grid, self.grid, order=1)"),
    ("label flipped on another axis than the images", "src/semicml/data/sampler.py",
     "label = None if label is None else np.flip(label, axis=axis - 1)",
     "label = None if label is None else np.flip(label, axis=2 - axis)"),
    ("label rotated the other way", "src/semicml/data/sampler.py",
     "label = ndimage.affine_transform(label, matrix, offset, order=0",
     "label = ndimage.affine_transform(label, matrix.T, centre - matrix.T @ centre, order=0"),
    ("normalisation statistics without the tumour", "src/semicml/data/prepare.py",
     "normed = {m: normalise_volume(vols[m], plan.normalisation[m]) for m in modalities}",
     "normed = {m: normalise_volume(np.where(apply_target(to_axial_last(case.label, axis), Target(**plan.target)) > 0, "
     "0, vols[m]) if case.label is not None else vols[m], plan.normalisation[m]) for m in modalities}"),
    ("teacher chosen as the WORST modality", "src/semicml/methods/prel.py",
     "index, how = max(range(len(mods))", "index, how = min(range(len(mods))"),
]
CORE_TESTS = ["tests/test_core_methods.py", "tests/test_core_prel.py", "tests/test_core_inference.py",
              "tests/test_core_data.py"]


# Hand mutants of the slice predictor. (Written when ``predict_planes`` was under
# ``@torch.no_grad()`` and mutmut 3 could not mutate it; since the engines it has no decorator and
# mutmut mutates inference/predictor.py itself, so these are a cross-check.) Each: (what, file, old, new).
PREDICTOR = "src/semicml/inference/predictor.py"
ENGINES = "src/semicml/inference/engines.py"
HAND_MUTANTS = {
    "predictor": ([
        ("empty slices predicted too", PREDICTOR, ".max(axis=1) > 0)", ".max(axis=1) >= 0)"),
        ("only the first slice of each batch", PREDICTOR, "part = members[start : start + batch_size]",
         "part = members[start : start + 1]"),
        ("last slice of each batch dropped", PREDICTOR, "part = members[start : start + batch_size]",
         "part = members[start : start + batch_size - 1]"),
        ("network left in train mode", ENGINES, "self.net.eval()", "self.net.train()"),
        ("modes not restored", ENGINES, "with modes_restored(self.net), torch.no_grad():", "with torch.no_grad():"),
        ("TTA flips one axis twice", PREDICTOR, "((), (2,), (3,), (2, 3))", "((), (2,), (2,), (2, 3))"),
        ("TTA prediction not flipped back", PREDICTOR, "(torch.flip(probs, dims) if dims else probs)", "probs"),
        ("TTA sum not averaged", PREDICTOR, "acc /= len(flips)", "acc /= 1"),
        ("logits instead of probabilities", PREDICTOR, "probs = torch.sigmoid(engine(", "probs = (engine("),
        ("first channel of the image flipped instead of the slice", PREDICTOR, "engine(torch.flip(x, dims) if dims",
         "engine(torch.flip(x, tuple(d - 1 for d in dims)) if dims"),
    ], ["tests/test_core_inference.py", "tests/test_predictor.py", "tests/test_engines.py",
        "tests/test_engine_units.py"]),
}


def check_hand_mutants(bugs: list[tuple[str, str, str, str]], tests: list[str], out_name: str) -> int:
    """Apply each hand mutant to a scratch copy and run ``tests``: each must make one fail."""
    failures = 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="semicml-bugs-") as tmp:
        work = Path(tmp) / "repo"
        copy_tree(None, work)
        for title, rel, old, new in bugs:
            path = work / rel
            original = path.read_text()
            if original.count(old) != 1:
                print(f"!! {title}: pattern not found once in {rel}")
                failures += 1
                continue
            path.write_text(original.replace(old, new))
            env = dict(os.environ, PYTHONPATH=str(work / "src"))
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                                  "-rf", *tests], cwd=work, env=env, capture_output=True, text=True)
            path.write_text(original)
            failed = sorted({m.group(1) for m in re.finditer(r"^FAILED (\S+)", res.stdout, re.M)})
            ok = res.returncode == 1 and failed
            failures += not ok
            rows.append({"bug": title, "file": rel, "caught": bool(ok), "failing_tests": failed})
            print(("caught " if ok else "MISSED ") + title)
            for name in failed:
                print("    ", name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / out_name).write_text(json.dumps(rows, indent=1))
    return 1 if failures else 0


# The fast test expected to catch each bug (README table): ``--known-bugs --tests listed`` runs
# only these (a few CPU-minutes less than the four core files on a loaded machine).
KNOWN_BUG_TESTS = [
    "tests/test_core_methods.py::test_bma_first_entry_copies_the_student_then_blends_with_alpha_from_the_improvement",
    "tests/test_core_methods.py::test_semicml_loss_is_sum_of_supervised_plus_weighted_asc_and_ramped_mse",
    "tests/test_core_prel.py::test_prel_students_see_their_own_modality_and_learn_the_teachers_soft_labels",
    "tests/test_core_inference.py::test_prediction_of_a_copying_network_gives_back_the_input_mask_voxel_for_voxel",
    "tests/test_core_data.py::test_flip_moves_label_and_every_modality_together",
    "tests/test_core_data.py::test_rotation_and_zoom_move_label_and_every_modality_together",
    "tests/test_core_data.py::test_stored_slices_are_the_documented_normalisation_of_each_whole_modality",
    "tests/test_core_prel.py::test_choose_teacher_is_the_best_validation_modality",
]


def known_bugs(tests: list[str] = CORE_TESTS) -> int:
    """Apply each bug of issue 14 to a scratch copy; the fast core tests must fail on every one."""
    return check_hand_mutants(KNOWN_BUGS, tests, "known_bugs.json")


# --------------------------------------------------------------------------- consolidated table
# module -> (before run, after run): the latest run of each under RESULTS (a tuple: the first that
# has a result for the module). A module key matches the per-module rows of a run by prefix
# ("losses" sums losses/*.py).
LATEST = {
    "methods/base.py": ("before", ("after4/core", "after")),
    "methods/semicml.py": ("before", ("after4/core", "after")),
    "methods/prel.py": ("before", ("after4/core", "after")),
    "methods/teachers.py": ("before", ("after4/core", "after")),
    "methods/supervised.py": ("before2/supervised", "after2/supervised"),
    "methods/mean_teacher.py": ("before2/mean_teacher", "after2/mean_teacher"),
    "methods/uamt.py": ("before2/uamt", ("after4/core", "after2/uamt")),
    "methods/cps.py": ("before2/cps", "after2/cps"),
    "losses": ("before2/losses", ("after4/core", "after2/losses")),
    "evaluation/metrics.py": ("before2/metrics", "after2/metrics"),
    "data/splits.py": ("before2/splits", "after2/splits"),
    "data/sampler.py": ("before", ("after4/core", "after3/sampler", "after")),
    "data/preprocess.py": ("before2/preprocess", ("after5/preprocess", "after4/preprocess", "after2/preprocess")),
    # moved out of preprocess.py by issues 9/10: "before" is round 5's first pass, with the tests as they were
    "data/normalisation.py": (("after5-pass1/preprocess", "after4-pass1/preprocess"),
                              ("after5/preprocess", "after4/preprocess")),
    "data/geometry.py": (("after5-pass1/preprocess", "after4-pass1/preprocess"), ("after5/preprocess", "after4/preprocess")),
    "inference/postprocess.py": ("before", "after2/postprocess"),
    # code and tests as on 8085c9e, so after3 is also their "before"; else the runs of the old predict.py
    # after4/inference was stopped before predict.py / predictor.py were run (707 / 122 not run)
    "inference/predict.py": (("after3/inference", "before2/predict"),
                             ("after5/inference", "after3/inference", "after2/predict")),
    "inference/predictor.py": (("after3/inference", "after5-pass1/inference"), ("after5/inference", "after3/inference")),
    "inference/engines.py": ("before3/inference", ("after4/inference-engines", "after3/inference")),
    "inference/export.py": ("before3/inference", ("after4/inference-engines", "after3/inference")),
    "inference/weights.py": ("before3/inference", ("after4/inference-engines", "after3/inference")),
    # added by issues 11 and 12: "before" is this round's first pass, with the tests they came with
    "inference/fusion.py": ("after4-pass1/inference", ("after5/inference", "after4/inference")),
    "inference/uncertainty.py": ("after4-pass1/inference", ("after4/inference-uq", "after4/inference")),
    "inference/quantize.py": ("after4-pass1/inference", ("after4/inference-uq", "after4/inference")),
}
COUNTS = ("total", "killed", "timeout", "survived", "no_tests", "not_checked")


def run_counts(labels: str | tuple[str, ...], module: str) -> tuple[str, dict | None]:
    for label in (labels,) if isinstance(labels, str) else labels:
        path = RESULTS / label / "summary.json"
        rows = json.loads(path.read_text())["modules"] if path.is_file() else {}
        hits = [r for key, r in rows.items() if key == module or key.startswith(module + "/")]
        if hits:
            return label, {k: sum(r[k] for r in hits) for k in COUNTS}
    return "-", None


def consolidated_table() -> str:
    """Markdown table of every module's before and after run (and the totals); also table.json."""
    head = ("| module | before: mutants | killed | survived | no tests | not run | killed % "
            "| after: mutants | killed | survived | no tests | not run | killed % | runs |")
    lines = [head, "|" + "---|" * 14]
    sums = {"before": Counter(), "after": Counter()}
    data = {}

    def cells(c: dict | None, side: str | None) -> list[str]:
        if c is None:
            return ["-"] * 6
        if side:
            sums[side].update(c)
        killed = c["killed"] + c["timeout"]
        run = c["total"] - c["not_checked"]
        return [str(c["total"]), str(killed), str(c["survived"]), str(c["no_tests"]), str(c["not_checked"]),
                f"{100 * killed / run:.1f}" if run else "-"]

    for module, (before, after) in LATEST.items():
        (before, b), (after, a) = run_counts(before, module), run_counts(after, module)
        data[module] = {"before": b, "after": a, "runs": [before, after]}
        lines.append(f"| {module} | " + " | ".join(cells(b, "before") + cells(a, "after")) + f" | {before}, {after} |")
    lines.append("| **all** | " + " | ".join(cells(dict(sums["before"]) or None, None)
                                              + cells(dict(sums["after"]) or None, None))
                 + " | |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "table.md").write_text(text)
    (RESULTS / "table.json").write_text(json.dumps(data, indent=1))
    readme = RESULTS / "README.md"  # the table between its markers there, kept in step
    start, end = "<!-- table -->\n", "<!-- /table -->\n"
    doc = readme.read_text() if readme.is_file() else ""
    if start in doc and end in doc:
        readme.write_text(doc.split(start)[0] + start + text + end + doc.split(end, 1)[1])
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="results go to benchmarks/results/mutation/<label>")
    parser.add_argument("--ref", default=None, help="git ref to test (default: the working tree)")
    parser.add_argument("--modules", nargs="+", default=IMPORTANT, choices=sorted(MODULES),
                        help=f"modules to mutate (default: {' '.join(IMPORTANT)})")
    parser.add_argument("--tests", nargs="+", default=["default"],
                        help="test files for mutmut ('default': FAST_TESTS; 'default-before': BEFORE_TESTS)")
    # one child by default: the machine is shared; more children only help on idle cores
    parser.add_argument("--max-children", type=int, default=1)
    # 19 yields to everything else; on a busy shared machine that starves the run (a nice-19
    # process gets ~1% of a core against five busy ones), so a run that must finish uses 0
    parser.add_argument("--nice", type=int, default=19, help="niceness of mutmut run (default 19)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, kept)")
    parser.add_argument("--resume", action="store_true", help="reuse --workdir as it is (mutmut keeps its results)")
    parser.add_argument("--report-only", action="store_true",
                        help="only write the report of the results already in --workdir (e.g. an interrupted run)")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="with --resume: copy the working tree's tests/ and src/ into --workdir and run "
                             "the mutants that survived (or had no test) there, and every mutant of a function "
                             "whose code changed since (mutmut re-makes those)")
    parser.add_argument("--known-bugs", action="store_true", help="check the issue-14 hand mutations instead")
    parser.add_argument("--table", action="store_true",
                        help="write table.md / table.json: every module's latest before and after run")
    parser.add_argument("--hand", choices=sorted(HAND_MUTANTS),
                        help="check the hand mutants of code mutmut cannot reach (writes hand_<name>.json)")
    args = parser.parse_args()
    if args.known_bugs:
        listed = {"default": CORE_TESTS, "listed": KNOWN_BUG_TESTS}
        return known_bugs(listed.get(args.tests[0], args.tests) if len(args.tests) == 1 else args.tests)
    if args.table:
        print(consolidated_table(), end="")
        return 0
    if args.hand:
        bugs, hand_tests = HAND_MUTANTS[args.hand]
        return check_hand_mutants(bugs, hand_tests, f"hand_{args.hand}.json")
    tests = {"default": FAST_TESTS, "default-before": BEFORE_TESTS}.get(args.tests[0], args.tests) \
        if len(args.tests) == 1 else args.tests
    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"semicml-mutation-{args.label.replace('/', '-')}-"))
    if args.report_only:  # keep the wall time of the run that made the results
        previous = RESULTS / args.label / "summary.json"
        seconds = json.loads(previous.read_text()).get("seconds", 0) if previous.is_file() else 0.0
        collect(work, args.modules, RESULTS / args.label, seconds)
        return 0
    if not (args.resume and work.is_dir()):
        copy_tree(args.ref, work)
    write_config(work, args.modules, tests)
    names: list[str] = []
    if args.rerun_survivors:
        names = survivors_in(work)
        shutil.rmtree(work / "tests")
        shutil.copytree(REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        # the code as it is now: the new tests may test new behaviour. copytree keeps the files'
        # times, so mutmut re-makes (and forgets the verdicts of) only the functions edited since
        shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
        shutil.rmtree(work / "mutants" / "tests", ignore_errors=True)
        shutil.copytree(REPO / "tests", work / "mutants" / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        # forget their verdicts and the test-to-function map, so that mutmut re-collects which
        # tests run each function (the new tests included) and re-checks these mutants
        for meta_path in (work / "mutants").rglob("*.py.meta"):
            meta = json.loads(meta_path.read_text())
            codes = meta.get("exit_code_by_key", {})
            if any(n in codes for n in names):
                meta["exit_code_by_key"] = {k: (None if k in names else v) for k, v in codes.items()}
                meta_path.write_text(json.dumps(meta))
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        print(f"re-running {len(names)} surviving mutants with the current tests", flush=True)
    start = time.monotonic()
    # every mutant without a verdict: on a re-check the survivors just reset and those of edited functions
    run_mutmut(work, args.max_children, args.nice)
    summary = collect(work, args.modules, RESULTS / args.label, time.monotonic() - start)
    meta = {"ref": args.ref or "working tree", "modules": args.modules, "tests": tests, "workdir": str(work)}
    (RESULTS / args.label / "run.json").write_text(json.dumps(meta, indent=1))
    return 0 if summary["total"]["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
