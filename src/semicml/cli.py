"""``semicml`` console command: one verb per stage.

Every user error (bad data, bad config, a run/store/folder another process is writing) is printed
as ONE line on stderr with exit status 2; no traceback. A disk that refuses a write (full,
read-only, no permission) is one line too, with exit status 1: writes are atomic, so the files
written before (store, checkpoint, masks, tables) are intact.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import ConfigError, SemicmlError, storage_problem

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Semi-supervised multi-modal segmentation: train with paired modalities (Semi-CML + PReL), "
                       "segment each modality alone.")


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@app.command()
def phantom(out: Path = typer.Argument(..., help="output folder (nnU-Net raw layout)"),
            kind: str = typer.Option("brain", help="brain (BraTS-like MRI) | headneck (HECKTOR-like CT + PET, the "
                                                   "PET on a coarser grid)"),
            cases: int = typer.Option(12, min=1, help="number of cases"),
            seed: int = typer.Option(0, help="random seed (deterministic output)"),
            shape: str = typer.Option("128,128,48", help="volume shape X,Y,Z (Z axial; the CT's for headneck)"),
            modalities: Optional[str] = typer.Option(None, help="brain only, comma-separated: T2, T1ce, FLAIR, T1 "
                                                     "(default T2,T1ce); headneck is always CT,PT")) -> None:
    """Write a synthetic paired multi-modal dataset (nnU-Net raw layout)."""
    dims = tuple(int(s) for s in shape.split(","))
    if len(dims) != 3 or min(dims) < 8:
        raise ConfigError(f"--shape must be three integers >= 8, got {shape!r}")
    if kind == "headneck":
        from .data.phantom_headneck import write_headneck_phantom

        if modalities is not None and [m.lower() for m in _split_list(modalities) or []] != ["ct", "pt"]:
            raise ConfigError("--modalities: the headneck phantom always has CT,PT")
        path = write_headneck_phantom(out, cases=cases, seed=seed, shape=dims)
    elif kind == "brain":
        from .data.phantom import write_phantom

        path = write_phantom(out, cases=cases, seed=seed, shape=dims,
                             modalities=tuple(_split_list(modalities or "T2,T1ce")))
    else:
        raise ConfigError(f"--kind must be brain or headneck, not {kind!r}")
    typer.echo(f"wrote {cases} {kind} phantom cases to {path}")


@app.command()
def prepare(input: Path = typer.Argument(..., help="dataset root (BraTS, nnU-Net raw or MSD layout)"),
            out: Path = typer.Argument(..., help="slice store to create"),
            format: Optional[str] = typer.Option(None, "--format", help="brats | nnunet | msd (default: detect)"),
            modalities: str = typer.Option(..., help="comma-separated modality names, e.g. t2,t1ce or CT,PT; the "
                                                    "first is the reference grid the others are resampled onto"),
            target: str = typer.Option("wt", help="what to segment. Binary: wt | tc | et | label name(s) joined "
                                                  "by + | values 1,4. Regions (one sigmoid channel each): regions "
                                                  "(BraTS wt,tc,et; nnU-Net dataset.json regions) | a list such as "
                                                  "wt,tc,et. raw (multi-class) can be prepared but not trained"),
            size: int = typer.Option(160, help="in-plane size of the stored slices (multiple of 16)"),
            in_plane: str = typer.Option("crop", help="crop (paper) | resize"),
            spacing: str = typer.Option("median", help="target in-plane spacing: median (of the cases, nnU-Net's "
                                                       "rule) | keep (no resampling) | mm, e.g. 1.0"),
            normalisation: str = typer.Option("auto", help="auto (by channel name: CT -> ct, PT/PET -> pet, others "
                                                           "-> mri) | one of mri, ct, pet, zscore_nonzero, zscore, "
                                                           "none | per modality, e.g. CT=ct,PT=pet"),
            stats_splits: Optional[Path] = typer.Option(None, help="splits.json: only its train and val cases give "
                                                        "the CT/PET statistics (default: every labelled case)"),
            workers: int = typer.Option(2, min=1, help="cases processed in parallel"),
            overwrite: bool = typer.Option(False, help="replace an existing store")) -> None:
    """Turn a NIfTI dataset into a memory-mapped store of 2D axial slices."""
    from .data.prepare import parse_normalisation
    from .data.store import PrepareOptions, prepare_store

    if in_plane not in ("crop", "resize"):
        raise ConfigError(f"--in-plane must be 'crop' or 'resize', not {in_plane!r}")
    try:
        target_spacing: float | str = spacing if spacing in ("median", "keep") else float(spacing)
    except ValueError:
        raise ConfigError(f"--spacing must be median, keep or a number of mm, not {spacing!r}") from None
    opts = PrepareOptions(modalities=tuple(_split_list(modalities) or []), target=target, size=size,
                          in_plane=in_plane, normalisation=parse_normalisation(normalisation), workers=workers,
                          spacing=target_spacing, stats_cases=_stats_cases(stats_splits))
    path = prepare_store(input, out, opts, fmt=format, overwrite=overwrite)
    typer.echo(f"slice store ready: {path}")
    for line in _store_notes(path):
        typer.echo(line)


def _store_notes(path: Path) -> list[str]:
    """What prepare did to cases stored unlike the rest (turned, resampled onto the reference grid)."""
    from .data.store import SliceStore

    manifest = SliceStore(path).manifest
    cases = manifest["cases"]
    notes = []
    orientation = manifest.get("orientation") or {}
    if orientation.get("in_plane"):
        turned = [c["case_id"] for c in cases if c.get("orientation")]
        notes.append(f"orientation: in-plane {','.join(orientation['in_plane'])} ({orientation['rule']}); "
                     f"{len(turned)} case(s) turned to it" + (f": {', '.join(turned[:5])}" if turned else ""))
    moved = [f"{c['case_id']} ({', '.join(c['coregistered'])})" for c in cases if c.get("coregistered")]
    if moved:
        notes.append(f"resampled onto the reference modality's grid: {len(moved)} case(s): {'; '.join(moved[:5])}"
                     + (" ..." if len(moved) > 5 else "") + " (store.json: coregistered)")
    return notes


def _stats_cases(path: Optional[Path]) -> Optional[tuple[str, ...]]:
    if path is None:
        return None
    import json

    try:
        data = json.loads(path.read_text())
        return tuple(str(c) for c in list(data["train"]) + list(data.get("val", [])))
    except FileNotFoundError:
        raise ConfigError("splits file not found", path) from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise ConfigError("not a splits.json with a 'train' list", path) from None


@app.command()
def train(store: Path = typer.Argument(..., help="slice store made by `semicml prepare`"),
          out: Path = typer.Option(..., "--out", help="run directory"),
          method: Optional[str] = typer.Option(None, help="semicml-prel (default) | semicml | prel | supervised | ..."),
          config: Optional[Path] = typer.Option(None, help="YAML config file"),
          profile: Optional[str] = typer.Option(None, help="paper | cpu | tiny (named overrides)"),
          iterations: Optional[int] = typer.Option(None, help="iteration budget (overrides epochs)"),
          epochs: Optional[float] = typer.Option(None, help="budget in passes over the labelled slices"),
          labeled_fraction: Optional[float] = typer.Option(None, help="fraction of training slices labelled"),
          label_level: Optional[str] = typer.Option(None, help="slice | case"),
          splits: Optional[Path] = typer.Option(None, help="splits.json with train/val/test case lists"),
          modalities: Optional[str] = typer.Option(None, help="subset of the store's modalities"),
          teacher: Optional[str] = typer.Option(None, help="PReL teacher modality (default: best val Dice); "
                                                "per-region: region targets, each region's best modality"),
          init: Optional[Path] = typer.Option(None, help="start from this run (method prel after semicml)"),
          seed: Optional[int] = typer.Option(None),
          width: Optional[int] = typer.Option(None, help="base width of the U-Net"),
          context: Optional[int] = typer.Option(None, help="neighbouring slices on each side given to each "
                                                "network (2.5D, 0-3; default 0: 2D)"),
          precision: Optional[str] = typer.Option(None, help="auto | bf16 | fp32"),
          device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
          val_every: Optional[int] = typer.Option(None, help="validate every N iterations"),
          num_workers: Optional[int] = typer.Option(None, help="DataLoader workers"),
          threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: torch's; a run repeats "
                                                "bit for bit only with the same threads, see run.json compute)"),
          augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="paired augmentation"),
          low_resolution: Optional[float] = typer.Option(None, help="probability of a simulated coarser acquisition "
                                                         "per modality and slice (robustness to coarse scans; default 0.25, 0 = off)"),
          lesion_paste: Optional[float] = typer.Option(None, help="probability per labelled slice of receiving "
                                                       "another labelled slice's lesion (copy-paste; default 0.5, 0 = off)"),
          sync_batchnorm: Optional[bool] = typer.Option(None, "--sync-batchnorm/--no-sync-batchnorm",
                                                        help="under torchrun: BatchNorm statistics over the global "
                                                        "batch (default: on with more than one process)"),
          slice_filter: Optional[str] = typer.Option(None, help="nonempty (all brain slices, default) | foreground "
                                                     "(tumour slices only: the paper's protocol)"),
          postprocess: Optional[str] = typer.Option(None, help="auto (chosen on validation, default) | none | "
                                                    "largest | min-size:<mm^3> | near:<mm>"),
          resume: bool = typer.Option(False, help="continue an interrupted run in --out")) -> None:
    """Train a method (default: Semi-CML + PReL); writes one weights file per modality.

    Data-parallel on N processes: torchrun --nproc_per_node N -m semicml train ... (rank 0 writes)."""
    from .config import build_config
    from .engine.trainer import Trainer

    overrides = {"method": method, "iterations": iterations, "epochs": epochs, "labeled_fraction": labeled_fraction,
                 "label_level": label_level, "splits": str(splits) if splits else None,
                 "modalities": _split_list(modalities), "seed": seed, "precision": precision, "device": device,
                 "val_every": val_every, "num_workers": num_workers, "augment": augment,
                 "low_resolution": low_resolution, "lesion_paste": lesion_paste, "sync_batchnorm": sync_batchnorm,
                 "init": str(init) if init else None, "slice_filter": slice_filter,
                 "postprocess": postprocess, "config": config, "profile": profile, "width": width, "teacher": teacher,
                 "context": context}
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise ConfigError("nothing to resume (no config.yaml)", out)
        # A resumed run continues with its saved settings; only where it runs may change.
        changed = [k for k, v in overrides.items() if v is not None and k not in ("device", "num_workers")]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise ConfigError(f"--resume continues the run with its saved settings ({saved.name}); {flags} would "
                              "change them (only --device, --num-workers and --threads may be given)", out)
        cfg = build_config(saved, None, {"device": device, "num_workers": num_workers})
    else:
        overrides = {k: v for k, v in overrides.items() if k not in ("config", "profile", "width", "teacher", "context")}
        model = {k: v for k, v in (("base_width", width), ("context", context)) if v is not None}
        if model:
            overrides["model"] = model
        if teacher is not None:
            overrides["prel"] = ({"teacher_per_region": True} if teacher.lower() == "per-region" else
                                 {"teacher": teacher})
        cfg = build_config(config, profile, overrides)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    trainer = Trainer(cfg, store, out, resume=resume)
    info = trainer.fit()
    if not trainer.dist.is_main:  # under torchrun rank 0 reports
        return
    best = ", ".join(f"{m} {v['dice']:.4f} (it {v['iteration']})" for m, v in info["best_val"].items())
    typer.echo(f"done: {out} | best val Dice: {best or 'n/a (no val split)'}")
    if "teacher" in info:
        typer.echo(f"PReL teacher: {info['teacher']['modality']} (chosen by {info['teacher']['chosen_by']})")
        if "per_region" in info["teacher"]:
            regions = ", ".join(f"{r} {m}" for r, m in info["teacher"]["per_region"].items())
            typer.echo(f"PReL teacher per region: {regions} ({info['teacher']['per_region_chosen_by']})")


@app.command()
def predict(run: list[Path] = typer.Option(..., help="run directory, a weights/<modality>.pt file, or a model written "
                                                "by `semicml export`; repeat it for an ensemble (the mean "
                                                "probability of the runs' networks, e.g. the folds of a benchmark)",
                                metavar="PATH"),
            modality: str = typer.Option(..., help="the one modality available, or several (t2,t1ce): fused, per "
                                               "region the mean of their networks or one alone, as chosen on "
                                               "validation at training"),
            input: Path = typer.Option(..., "--input", help="BraTS / nnU-Net / MSD folder, NIfTI folder or file"),
            out: Path = typer.Option(..., "--out", help="output folder for <case>.nii.gz masks"),
            probabilities: bool = typer.Option(False, help="also write <case>_prob.nii.gz"),
            cases: Optional[str] = typer.Option(None, help="only these case ids (comma-separated)"),
            tta: bool = typer.Option(False, "--tta/--no-tta", help="average over in-plane flips (4x slower)"),
            postprocess: Optional[str] = typer.Option(None, help="default: the choice made on validation and stored "
                                                      "with the weights; or none | largest | min-size:<mm^3> | near:<mm>"),
            engine: str = typer.Option("torch", help="torch | onnxruntime | openvino (CPU; same masks, see README "
                                                     "for speed)"),
            window: str = typer.Option("whole", help="whole (reference) | brain: each slice cut to its non-zero "
                                                     "box, ~3x faster, probabilities move slightly"),
            margin: int = typer.Option(0, help="pixels added around the non-zero box with --window brain"),
            threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: torch's)"),
            compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the network "
                                         "(--engine torch)"),
            uncertainty: bool = typer.Option(False, "--uncertainty/--no-uncertainty", help="also write "
                                             "<case>_uncertainty.nii.gz: std of the flip (and network) probabilities, "
                                             "0..0.5; implies --tta"),
            missing_modality: str = typer.Option("error", help="fused prediction, a case without one of the "
                                                  "modalities: error | skip (fuse the ones it has, recorded)"),
            regions_as_files: bool = typer.Option(False, "--regions-as-files", help="region networks: one mask per "
                                                  "region in OUT/<region>/ instead of one label map"),
            device: str = typer.Option("auto"), precision: str = typer.Option("auto")) -> None:
    """Segment cases from ONE modality with that modality's network, or from several (fused)."""
    names = _split_list(modality) or []
    common = dict(device=device, precision=precision, save_probabilities=probabilities, cases=_split_list(cases),
                  tta=tta, postprocess=postprocess, engine=engine, window=window, margin=margin, threads=threads,
                  compile=compile, uncertainty=uncertainty, regions_as_files=regions_as_files)
    if len(names) > 1:
        from .inference.fusion import predict_fused

        written = predict_fused(run, names, input, out, missing=missing_modality, **common)
    else:
        from .inference.predict import predict_cases

        written = predict_cases(run, names[0] if names else modality, input, out, **common)
    typer.echo(f"wrote {len(written)} masks to {out}")


@app.command()
def export(run: Path = typer.Option(..., help="run directory (or a weights/<modality>.pt file)"),
           modality: str = typer.Option(..., help="the modality whose network is exported"),
           format: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
           out: Optional[Path] = typer.Option(None, "--out", help="model file (default: RUN/export/<modality>.onnx "
                                              "or .torchscript.pt); its preprocessing goes to <out>.json"),
           quantize: Optional[str] = typer.Option(None, help="int8: post-training static quantization (ONNX only), "
                                                  "calibrated on the run's training slices; faster on CPUs, masks "
                                                  "not identical to float32")) -> None:
    """Export one modality's network (ONNX or TorchScript) with the preprocessing predict needs."""
    from .inference.export import export_model, sidecar_path

    path = export_model(run, modality, format, out, quantize)
    typer.echo(f"wrote {path} and {sidecar_path(path).name}")


@app.command()
def evaluate(pred: Path = typer.Option(..., help="folder of predicted <case>.nii.gz masks"),
             ref: Path = typer.Option(..., help="dataset root with reference labels"),
             out: Path = typer.Option(..., help="report folder (metrics.csv, summary.json, summary.md)"),
             target: str = typer.Option("wt", help="target of the reference labels; regions (or wt,tc,et): every "
                                                   "metric per region and their mean, from label maps"),
             format: Optional[str] = typer.Option(None, "--format", help="brats | nnunet | msd"),
             cases: Optional[str] = typer.Option(None, help="cases that must be evaluated (comma-separated; "
                                                 "default: every labelled reference case)"),
             missing: str = typer.Option("error", help="a case without a prediction: error (stop) | worst "
                                                       "(score it Dice 0, distances = volume diagonal)")) -> None:
    """3D metrics per case (Dice, Jaccard, HD95, ASD, precision, sensitivity) and mean +- std."""
    from .evaluation.evaluate import evaluate_predictions

    summary = evaluate_predictions(pred, ref, target, out, fmt=format, cases=_split_list(cases), missing=missing)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"{summary['n_cases']} cases evaluated -> {out}")


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), help="output folder"),
         kind: str = typer.Option("brain", help="brain (T2 + T1ce, BraTS-like) | headneck (CT + PET, HECKTOR-like)"),
         cases: int = typer.Option(24, help="phantom cases"),
         iterations: Optional[int] = typer.Option(None, help="training iterations (default: demo profile)"),
         seed: int = typer.Option(0)) -> None:
    """The main job on built-in phantom data: generate, prepare, train Semi-CML + PReL, evaluate, plot."""
    from .pipeline import run_demo

    if kind not in ("brain", "headneck"):
        raise ConfigError(f"--kind must be brain or headneck, not {kind!r}")
    run_demo(out, cases=cases, iterations=iterations, seed=seed, kind=kind)


@app.command()
def benchmark(config: Path = typer.Argument(..., help="benchmark YAML (relative paths: relative to its folder)"),
              out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the file's 'out')"),
              only: Optional[str] = typer.Option(None, help="run only these method names (comma-separated)"),
              jobs: int = typer.Option(1, "--jobs", "-j", min=1,
                                       help="runs trained at once, each in its own process (a GPU or many cores)"),
              threads: Optional[int] = typer.Option(None, min=1, help="CPU threads per run (default: the logical "
                                                    "CPUs / --jobs with --jobs > 1, else torch's default); on a CPU "
                                                    "the same threads repeat a grid's numbers bit for bit"),
              report_only: bool = typer.Option(False, "--report-only",
                                                help="train nothing: tables and plots of the runs finished so far"),
              progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bars")) -> None:
    """Run a grid of methods x seeds with one budget; tables and plots of the results."""
    from .benchmark import load_benchmark_config, run_benchmark
    from .benchmark.runner import report_benchmark

    cfg = load_benchmark_config(config, out=out)
    if report_only and (only or threads):
        raise ConfigError("--report-only trains nothing; it cannot be combined with --only or --threads")
    rows = (report_benchmark(cfg) if report_only else
            run_benchmark(cfg, progress=progress, only=_split_list(only), jobs=jobs, threads=threads))
    failed = sorted({(r["method"], r["seed"]) for r in rows if r["status"] != "ok"})
    skipped = len({(r["method"], r["seed"]) for r in rows if r["action"] == "skipped"})
    typer.echo((Path(cfg.out) / "results.md").read_text())
    typer.echo(f"{len({(r['method'], r['seed']) for r in rows})} runs ({skipped} finished earlier, "
               f"{len(failed)} failed) -> {cfg.out} (results.csv, results.md, dice.png, val_curves.png)")


@app.command()
def methods() -> None:
    """List the registered training methods."""
    from .methods import METHODS, get_method

    get_method("semicml")  # import all
    for name, cls in sorted(METHODS.items()):
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:22s} {doc}")


def main() -> None:
    try:
        app()
    except SemicmlError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except OSError as err:
        problem = storage_problem(err)
        if problem is None:
            raise
        typer.echo(f"error: {problem}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("error: interrupted (resume training with --resume)", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
