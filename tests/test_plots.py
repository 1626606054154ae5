"""Figures: each call writes a real, non-trivial PNG and tolerates sparse inputs."""

from __future__ import annotations

import numpy as np
import pytest

from semicml.evaluation.plots import (
    plot_metric_bars,
    plot_overlays,
    plot_training_curves,
    training_curves_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # atomic: no leftovers


def _log_rows(with_val: bool = True) -> list[dict]:
    rows = []
    for it in range(0, 200, 10):
        rows.append({"iteration": it, "loss": 2.0 / (1 + it), "loss/sup": 1.5 / (1 + it), "loss/asc": 0.5, "lr": 1e-3})
        if with_val and it % 50 == 0:
            rows.append({"iteration": it, "val_dice/T2": it / 250, "val_dice/T1ce": it / 300})
    return rows


def test_training_curves(tmp_path):
    out = plot_training_curves(_log_rows(), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    _assert_png(out)


def _drawn(ax) -> dict[str, list[tuple[float, float]]]:
    return {line.get_label(): [tuple(p) for p in line.get_xydata()] for line in ax.get_lines()}


def test_training_curves_draw_every_logged_loss_component_and_val_dice_per_modality():
    # Records as the trainer writes them for Semi-CML + PReL: per-modality supervised terms, ASC
    # and MSE in stage 1, per-modality PReL terms in stage 2, validation Dice on some records,
    # plus numbers that are not losses (lr, a ramp-up weight) and an event record.
    rows = [
        {"iteration": 2, "phase": "semicml", "lr": 6e-3, "sup/T2": 15.4, "sup/T1ce": 10.6, "asc": 1.15,
         "mse": 0.07, "consistency_weight": 0.1, "loss": 30.1},
        {"iteration": 4, "phase": "semicml", "lr": 6e-4, "sup/T2": 15.0, "sup/T1ce": 10.3, "asc": 1.16,
         "mse": 0.06, "consistency_weight": 0.2, "loss": 29.3, "val_dice/T2": 0.4, "val_dice/T1ce": 0.2},
        {"event": "teacher_selected", "modality": "T2"},
        {"iteration": 6, "phase": "prel", "lr": 6e-5, "prel/T2": 6.4, "prel/T1ce": 9.2, "loss": 15.6,
         "val_dice/T2": 0.5, "val_dice/T1ce": 0.3},
    ]
    fig = training_curves_figure(rows)
    ax_loss, ax_val = fig.axes
    losses = _drawn(ax_loss)
    assert sorted(losses) == ["asc", "loss", "mse", "prel/T1ce", "prel/T2", "sup/T1ce", "sup/T2"]
    assert losses["loss"] == [(2, 30.1), (4, 29.3), (6, 15.6)]
    assert losses["sup/T1ce"] == [(2, 10.6), (4, 10.3)]
    assert losses["asc"] == [(2, 1.15), (4, 1.16)]
    assert losses["prel/T2"] == [(6, 6.4)]
    assert ax_loss.get_yscale() == "log"
    assert _drawn(ax_val) == {"T2": [(4, 0.4), (6, 0.5)], "T1ce": [(4, 0.2), (6, 0.3)]}


@pytest.mark.parametrize(
    "rows",
    [
        [],  # nothing logged yet
        None,  # filled in below: losses but no validation records
        [{"event": "teacher_selected", "modality": "T1ce"}],  # no iteration: skipped
        [{"iteration": 0, "loss": 0.0}, {"iteration": 1, "loss": float("nan")}],  # no positive loss
        [{"iteration": 0, "loss": None, "val_dice/CT": 0.2}],
    ],
)
def test_training_curves_sparse_logs(tmp_path, rows):
    rows = _log_rows(with_val=False) if rows is None else rows
    _assert_png(plot_training_curves(rows, tmp_path / "c.png"))


def test_overlays(tmp_path):
    yy, xx = np.mgrid[:48, :48]
    image = np.sin(xx / 5.0) + np.cos(yy / 7.0)
    disk = (yy - 24) ** 2 + (xx - 24) ** 2 < 100
    rows = [
        {"title": "case1 z=10", "image": image, "label": disk, "pred": np.roll(disk, 3, axis=1)},
        {"title": "empty pred", "image": image, "label": disk, "pred": np.zeros_like(disk)},
        {"title": "all fg", "image": np.zeros((48, 48)), "label": np.ones((48, 48), bool), "pred": disk},
    ]
    _assert_png(plot_overlays(rows, tmp_path / "overlay.png"))


def test_overlays_reject_bad_rows(tmp_path):
    with pytest.raises(ValueError):
        plot_overlays([], tmp_path / "x.png")
    bad = {"title": "t", "image": np.zeros((8, 8)), "label": np.zeros((8, 8), bool), "pred": np.zeros((8, 9), bool)}
    with pytest.raises(ValueError, match="t"):
        plot_overlays([bad], tmp_path / "x.png")


def test_metric_bars(tmp_path):
    rows = []
    for m_i, method in enumerate(["supervised", "mean_teacher", "semicml"]):
        for modality in ["T2", "T1ce"]:
            for seed in range(3):
                rows.append({"method": method, "modality": modality, "seed": seed, "dice": 0.5 + 0.1 * m_i + 0.01 * seed})
    rows.append({"method": "cps", "modality": "T2", "seed": 0, "dice": float("nan")})  # skipped
    rows.append({"method": "cps", "modality": "T1ce", "seed": 0, "dice": 0.6})  # only one modality
    _assert_png(plot_metric_bars(rows, "dice", tmp_path / "bars.png"))
    _assert_png(plot_metric_bars(rows[:3], "dice", tmp_path / "bars1.png"))


def test_metric_bars_without_values(tmp_path):
    with pytest.raises(ValueError, match="hd95"):
        plot_metric_bars([{"method": "a", "modality": "CT", "seed": 0, "dice": 0.5}], "hd95", tmp_path / "b.png")

