"""PNG figures: training curves, image/label/prediction overlays, benchmark bar charts and curves.

Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas, never ``pyplot``: no
global figure registry (nothing leaks between calls, safe in worker threads) and no dependency
on a display or on the process-wide backend. Files are written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semicml.evaluation.metrics import DISTANCE_METRICS
from semicml.io_utils import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_LABEL_COLOR = "#00c853"  # green
_PRED_COLOR = "#ff1744"  # red
_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    # Imported lazily: matplotlib is only needed when a plot is made.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)  # attaches itself to fig
    return fig


def _save_png(fig: Figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return out_path


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, NaN, non-numeric)."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _series(log_rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for row in log_rows:
        it, y = finite_number(row.get("iteration")), finite_number(row.get(key))
        if it is not None and y is not None:
            xs.append(it)
            ys.append(y)
    return xs, ys


def _placeholder(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


# Numeric log keys that are not loss terms: the x axis, the schedule, validation, and the
# ramp-up weights some methods log next to their losses (``consistency_weight``, ``cps_weight``).
_NOT_LOSS_KEYS = frozenset({"iteration", "lr", "epoch"})


def _is_loss_key(key: str) -> bool:
    return key not in _NOT_LOSS_KEYS and not key.startswith("val_") and not key.endswith("_weight")


def training_curves_figure(log_rows: Sequence[dict[str, Any]]) -> Figure:
    """The figure of :func:`plot_training_curves` (two axes: losses, validation Dice), unsaved.

    Loss panel: the total ``"loss"`` (thick) and every loss component that the log records, one
    line each, whatever the method names them (``sup/<modality>``, ``asc``, ``mse``,
    ``prel/<modality>``, ``consistency/<modality>``, ``cps/...``, ``loss/<term>``): any numeric key
    except ``iteration``, ``lr``, ``val_*`` and ``*_weight``. Validation panel: one line per
    ``val_dice/<modality>``. Records without a numeric ``"iteration"`` (e.g. event records) and
    missing/NaN values are skipped; a panel with nothing to show says so instead of failing.
    """
    loss_keys: list[str] = []
    val_keys: list[str] = []
    for row in log_rows:
        if finite_number(row.get("iteration")) is None:
            continue
        for key, value in row.items():
            if key.startswith("val_dice/"):
                if key not in val_keys:
                    val_keys.append(key)
            elif _is_loss_key(key) and key not in loss_keys and finite_number(value) is not None:
                loss_keys.append(key)
    loss_keys.sort(key=lambda k: (k != "loss", k))  # total loss first, then terms by name

    fig = _new_figure(12, 4.5)
    ax_loss, ax_val = fig.subplots(1, 2)

    any_loss = any_positive = False
    for key in loss_keys:
        xs, ys = _series(log_rows, key)
        if not xs:
            continue
        any_loss = True
        any_positive |= any(y > 0 for y in ys)
        ax_loss.plot(xs, ys, label=key, linewidth=2.0 if key == "loss" else 1.0)
    if any_loss:
        if any_positive:
            # Log scale needs positive data; zero/negative points are masked by matplotlib.
            ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
    else:
        _placeholder(ax_loss, "no loss records")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Training losses (total and components)")
    ax_loss.grid(True, which="both", alpha=0.3)

    any_val = False
    for key in val_keys:
        xs, ys = _series(log_rows, key)
        if not xs:
            continue
        any_val = True
        ax_val.plot(xs, ys, marker="o", markersize=3, label=key.split("/", 1)[1])
    if any_val:
        ax_val.set_ylim(0.0, 1.0)
        ax_val.legend(title="modality", fontsize=8)
    else:
        _placeholder(ax_val, "no validation records")
    ax_val.set_xlabel("iteration")
    ax_val.set_ylabel("validation Dice")
    ax_val.set_title("Validation Dice per modality")
    ax_val.grid(True, alpha=0.3)

    fig.tight_layout()
    return fig


def plot_training_curves(log_rows: Sequence[dict[str, Any]], out_path: str | Path) -> Path:
    """Write ``training_curves.png`` from training log records (see :func:`training_curves_figure`)."""
    return _save_png(training_curves_figure(log_rows), out_path)


def _overlay(ax: Axes, mask: np.ndarray, color: str) -> None:
    from matplotlib.colors import to_rgba

    if not mask.any():
        return
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[mask] = to_rgba(color, alpha=0.35)
    ax.imshow(rgba, interpolation="nearest")
    if not mask.all():  # contour needs both sides of the 0.5 level
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.0)


def _show_image(ax: Axes, image: np.ndarray) -> None:
    finite = image[np.isfinite(image)]
    # Percentile window: robust to hot spots (PET SUV, CT bone) that would wash out the rest.
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


#: The colour scale of uncertainty maps: 0 (members agree) .. 0.5 (the largest spread of values in [0, 1]).
UNCERTAINTY_RANGE = (0.0, 0.5)
UNCERTAINTY_CMAP = "inferno"


def overlays_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """The figure of :func:`plot_overlays`, unsaved (one row of axes per example)."""
    from semicml.evaluation.metrics import dice_score

    if not rows:
        raise ValueError("plot_overlays needs at least one row")
    prepared = []
    for i, row in enumerate(rows):
        image = np.asarray(row["image"], dtype=np.float32)
        label = np.asarray(row["label"]) != 0
        pred = np.asarray(row["pred"]) != 0
        unc = row.get("uncertainty")
        unc = None if unc is None else np.asarray(unc, dtype=np.float32)
        title = str(row.get("title", f"example {i}"))
        if image.ndim != 2 or label.shape != image.shape or pred.shape != image.shape or (
                unc is not None and unc.shape != image.shape):
            raise ValueError(
                f"row {i} ({title}): image, label, pred (and uncertainty) must be 2D of one shape, got "
                f"{image.shape}, {label.shape}, {pred.shape}" + ("" if unc is None else f", {unc.shape}")
            )
        prepared.append((title, image, label, pred, unc))

    n = len(prepared)
    cols = 4 if any(p[4] is not None for p in prepared) else 3
    fig = _new_figure(3 * cols, 3 * n)
    axes = np.atleast_2d(fig.subplots(n, cols, squeeze=False))
    for (title, image, label, pred, unc), row_axes in zip(prepared, axes, strict=True):
        ax_img, ax_lab, ax_pred = row_axes[:3]
        for ax in (ax_img, ax_lab, ax_pred):
            _show_image(ax, image)
        _overlay(ax_lab, label, _LABEL_COLOR)
        _overlay(ax_pred, pred, _PRED_COLOR)
        ax_img.set_ylabel(title, fontsize=9)
        ax_img.set_title("image", fontsize=9)
        ax_lab.set_title("label", fontsize=9, color=_LABEL_COLOR)
        ax_pred.set_title(f"prediction (Dice {dice_score(pred, label):.3f})", fontsize=9, color=_PRED_COLOR)
        if cols == 4:
            _show_uncertainty(fig, row_axes[3], unc, pred)
    fig.tight_layout()
    return fig


def _show_uncertainty(fig: Figure, ax: Axes, unc: np.ndarray | None, pred: np.ndarray) -> None:
    """The map on a fixed scale (comparable between rows and cases), the prediction's outline on it."""
    ax.set_xticks([])
    ax.set_yticks([])
    if unc is None:
        _placeholder(ax, "no uncertainty map")
        return
    shown = ax.imshow(np.nan_to_num(unc), cmap=UNCERTAINTY_CMAP, vmin=UNCERTAINTY_RANGE[0], vmax=UNCERTAINTY_RANGE[1],
                      interpolation="nearest")
    if pred.any() and not pred.all():
        ax.contour(pred.astype(np.float32), levels=[0.5], colors=[_PRED_COLOR], linewidths=1.0)
    ax.set_title("uncertainty (std of the members)", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)


def plot_overlays(rows: Sequence[dict[str, Any]], out_path: str | Path) -> Path:
    """Grid of examples, one per row: image | image + label (green) | image + prediction (red),
    and, when a row has ``"uncertainty"`` (2D, from ``predict --uncertainty``), a fourth panel:
    the map in the ``inferno`` colours on the fixed scale 0..0.5, with the prediction's outline.

    Each row is ``{"title": str, "image": 2D array, "label": 2D bool, "pred": 2D bool}`` (plus
    the optional ``"uncertainty"``), all of the same shape. The prediction panel's title carries
    the slice Dice.

    Raises:
        ValueError: no rows, or a row whose arrays are not 2D of one shape.
    """
    return _save_png(overlays_figure(rows), out_path)


def plot_metric_bars(df_rows: Sequence[dict[str, Any]], metric: str, out_path: str | Path) -> Path:
    """Grouped bar chart for a benchmark: one group per method, one bar (colour) per modality.

    ``df_rows`` are ``{"method", "modality", "seed", metric}`` records. Bar height is the mean
    over seeds; each seed's value is drawn as a point on its bar. Rows whose ``metric`` is
    missing or NaN are skipped. Methods and modalities keep their first-seen order.

    Raises:
        ValueError: no row has a numeric ``metric`` value.
    """
    methods: list[str] = []
    modalities: list[str] = []
    values: dict[tuple[str, str], list[float]] = {}
    for row in df_rows:
        y = finite_number(row.get(metric))
        if y is None:
            continue
        method, modality = str(row["method"]), str(row["modality"])
        if method not in methods:
            methods.append(method)
        if modality not in modalities:
            modalities.append(modality)
        values.setdefault((method, modality), []).append(y)
    if not values:
        raise ValueError(f"no numeric values for metric {metric!r}")

    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    n_mod = len(modalities)
    width = 0.8 / n_mod
    fig = _new_figure(max(6.0, 1.2 * len(methods) * max(1, n_mod) / 2 + 2), 4.5)
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # fixed jitter: the same inputs give the same image
    for j, modality in enumerate(modalities):
        color = cmap(j % 10)
        labelled = False  # one legend entry per modality
        for i, method in enumerate(methods):
            ys = values.get((method, modality))
            if not ys:
                continue
            x = i - 0.4 + width * (j + 0.5)
            label = None if labelled else modality
            labelled = True
            ax.bar(x, float(np.mean(ys)), width=width * 0.9, color=color, alpha=0.75, label=label)
            jitter = rng.uniform(-width * 0.2, width * 0.2, size=len(ys))
            ax.scatter(x + jitter, ys, s=14, color="black", zorder=3)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=20, ha="right")
    unit = " (mm)" if metric in DISTANCE_METRICS else ""
    ax.set_ylabel(f"{metric}{unit}")
    ax.set_title(f"{metric}: mean over seeds (points: individual seeds)")
    ax.legend(title="modality", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save_png(fig, out_path)


def plot_val_curves(curves: dict[str, dict[int, list[dict[str, Any]]]], out_path: str | Path) -> Path:
    """Validation Dice vs iteration: one panel per modality, one colour per method; thin lines are
    seeds, the thick line is the mean over seeds at the iterations all seeds validated.

    ``curves`` is ``{method: {seed: log.jsonl records}}`` (records with ``val_dice/<modality>``).
    """
    from matplotlib import colormaps

    modalities: list[str] = []
    for per_seed in curves.values():
        for records in per_seed.values():
            for r in records:
                for k in r:
                    if k.startswith("val_dice/") and k[9:] not in modalities:
                        modalities.append(k[9:])
    n = max(1, len(modalities))
    fig = _new_figure(6 * n, 4.5)
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
    return _save_png(fig, out_path)
