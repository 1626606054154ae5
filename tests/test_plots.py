"""Figures: what each one draws (the data behind its lines, bars, images and texts), the pixels
of the PNG it writes, and sparse inputs."""

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


def _assert_png(path, size: tuple[float, float] | None = None) -> np.ndarray:
    """The PNG's pixels (H, W, RGBA); ``size``: the figure's inches, drawn at 100 dpi."""
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # atomic: no leftovers
    pixels = mpimg.imread(path)
    if size is not None:
        assert pixels.shape[:2] == (round(100 * size[1]), round(100 * size[0]))
    ink = (pixels[..., :3] < 0.9).any(axis=-1)  # anything not (near) white
    assert 0.001 < ink.mean() < 0.9  # something is drawn on a white page
    return pixels


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
    _assert_png(out, size=(12, 4.5))


def test_saved_png_holds_the_figures_pixels(tmp_path):
    """A figure whose left half is black: the PNG has the figure's size at 100 dpi, and the
    left half of its pixels black, the right half white."""
    from matplotlib.patches import Rectangle

    from semicml.evaluation.plots import _new_figure, _save_png

    fig = _new_figure(4, 2)
    fig.patches.append(Rectangle((0, 0), 0.5, 1, transform=fig.transFigure, color="black", figure=fig))
    pixels = _assert_png(_save_png(fig, tmp_path / "half.png"), size=(4, 2))
    grey = pixels[..., :3].mean(axis=-1)
    assert grey[:, :195].max() < 0.05 and grey[:, 205:].min() > 0.95
    assert abs((grey < 0.5).mean() - 0.5) < 0.01


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


NO_LOSS, NO_VAL = "no loss records", "no validation records"


@pytest.mark.parametrize(
    "rows,losses,val,placeholders,yscale",
    [
        ([], {}, {}, [NO_LOSS, NO_VAL], "linear"),  # nothing logged yet
        # losses but no validation records
        (None, {"loss": 20, "loss/asc": 20, "loss/sup": 20}, {}, [NO_VAL], "log"),
        ([{"event": "teacher_selected", "modality": "T1ce"}], {}, {}, [NO_LOSS, NO_VAL], "linear"),  # no iteration
        # no positive loss: drawn on a linear scale; the NaN point is skipped
        ([{"iteration": 0, "loss": 0.0}, {"iteration": 1, "loss": float("nan")}], {"loss": 1}, {}, [NO_VAL], "linear"),
        ([{"iteration": 0, "loss": None, "val_dice/CT": 0.2}], {}, {"CT": 1}, [NO_LOSS], "linear"),
    ],
)
def test_training_curves_sparse_logs(tmp_path, rows, losses, val, placeholders, yscale):
    rows = _log_rows(with_val=False) if rows is None else rows
    fig = training_curves_figure(rows)
    ax_loss, ax_val = fig.axes
    assert {k: len(v) for k, v in _drawn(ax_loss).items()} == losses  # lines and their point counts
    assert {k: len(v) for k, v in _drawn(ax_val).items()} == val
    assert sorted(t.get_text() for ax in fig.axes for t in ax.texts) == sorted(placeholders)
    assert ax_loss.get_yscale() == yscale
    _assert_png(plot_training_curves(rows, tmp_path / "c.png"), size=(12, 4.5))


def test_overlays(tmp_path):
    yy, xx = np.mgrid[:48, :48]
    image = np.sin(xx / 5.0) + np.cos(yy / 7.0)
    disk = (yy - 24) ** 2 + (xx - 24) ** 2 < 100
    rows = [
        {"title": "case1 z=10", "image": image, "label": disk, "pred": np.roll(disk, 3, axis=1)},
        {"title": "empty pred", "image": image, "label": disk, "pred": np.zeros_like(disk)},
        {"title": "all fg", "image": np.zeros((48, 48)), "label": np.ones((48, 48), bool), "pred": disk},
    ]
    _assert_png(plot_overlays(rows, tmp_path / "overlay.png"), size=(9, 9))


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



# --------------------------------------------------------------------------- what is drawn
@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, captured instead of written."""
    import semicml.evaluation.plots as plots

    captured = []
    monkeypatch.setattr(plots, "_save_png", lambda fig, path: captured.append(fig) or path)
    return captured


def test_overlays_draw_the_image_the_label_and_the_prediction_where_they_are(figures, tmp_path):
    yy, xx = np.mgrid[:32, :32]
    image = (xx + 2 * yy).astype(np.float32)
    label = (yy - 16) ** 2 + (xx - 12) ** 2 < 40
    pred = np.zeros_like(label)
    pred[10:20, 14:26] = True
    plot_overlays([{"title": "case z=3", "image": image, "label": label, "pred": pred},
                   {"title": "empty", "image": image, "label": label, "pred": np.zeros_like(label)}], tmp_path / "o.png")
    (fig,) = figures
    axes = np.array(fig.axes[:6]).reshape(2, 3)
    ax_img, ax_lab, ax_pred = axes[0]
    assert np.array_equal(ax_img.images[0].get_array(), image)
    assert ax_img.images[0].get_clim() == pytest.approx(tuple(np.percentile(image, [1, 99])))
    assert len(ax_img.images) == 1 and ax_img.get_ylabel() == "case z=3"
    # the overlay is opaque exactly on the mask it shows, green for the label, red for the prediction
    lab_rgba, pred_rgba = ax_lab.images[1].get_array(), ax_pred.images[1].get_array()
    assert np.array_equal(lab_rgba[..., 3] > 0, label) and np.array_equal(pred_rgba[..., 3] > 0, pred)
    assert lab_rgba[label][0, 1] > lab_rgba[label][0, 0] and pred_rgba[pred][0, 0] > pred_rgba[pred][0, 1]
    inter = np.count_nonzero(label & pred)
    assert f"Dice {2 * inter / (label.sum() + pred.sum()):.3f}" in ax_pred.get_title()
    # an empty prediction draws no overlay and scores 0
    assert len(axes[1, 2].images) == 1 and "Dice 0.000" in axes[1, 2].get_title()


def test_metric_bars_draw_the_mean_over_seeds_and_every_seed(figures, tmp_path):
    rows = [{"method": m, "modality": mod, "seed": s, "hd95": v}
            for m, mod, s, v in [("a", "T2", 0, 1.0), ("a", "T2", 1, 3.0), ("a", "T1ce", 0, 5.0),
                                 ("b", "T2", 0, 2.0), ("b", "T2", 1, float("nan")), ("b", "T1ce", 0, 7.0),
                                 ("b", "T1ce", 1, 9.0)]]
    plot_metric_bars(rows, "hd95", tmp_path / "b.png")
    (fig,) = figures
    (ax,) = fig.axes
    bars = {(round(p.get_x() + p.get_width() / 2, 6)): p.get_height() for p in ax.patches}
    # x: method i, modality j of 2 -> i - 0.4 + 0.4 (j + 0.5)
    assert bars == pytest.approx({-0.2: 2.0, 0.2: 5.0, 0.8: 2.0, 1.2: 8.0})
    points = sorted(float(y) for c in ax.collections for y in c.get_offsets()[:, 1])
    assert points == [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]  # the NaN seed is skipped
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["T2", "T1ce"]
    assert ax.get_ylabel() == "hd95 (mm)"


def test_val_curves_draw_each_seed_and_the_mean_at_common_iterations(figures, tmp_path):
    from semicml.evaluation.plots import plot_val_curves

    curves = {
        "semicml": {0: [{"iteration": 10, "val_dice/T2": 0.2}, {"iteration": 20, "val_dice/T2": 0.4},
                        {"iteration": 30, "val_dice/T2": 0.6}],
                    1: [{"iteration": 10, "val_dice/T2": 0.4}, {"iteration": 30, "val_dice/T2": 0.8},
                        {"iteration": 40, "val_dice/T2": float("nan")}]},
        "cps": {0: [{"iteration": 10, "val_dice/T1ce": 0.5}, {"loss": 1.0}]},
    }
    plot_val_curves(curves, tmp_path / "v.png")
    (fig,) = figures
    ax_t2, ax_t1ce = fig.axes
    lines = [(line.get_linewidth(), [tuple(p) for p in line.get_xydata()]) for line in ax_t2.get_lines()]
    thin = sorted(xy for w, xy in lines if w < 1)
    thick = [xy for w, xy in lines if w == 2]
    assert thin == [[(10, 0.2), (20, 0.4), (30, 0.6)], [(10, 0.4), (30, 0.8)]]
    assert thick == [[(10, pytest.approx(0.3)), (30, pytest.approx(0.7))]]
    assert [t.get_text() for t in ax_t2.get_legend().get_texts()] == ["semicml (n=2)"]
    assert [tuple(p) for p in ax_t1ce.get_lines()[-1].get_xydata()] == [(10, 0.5)]
    assert ax_t2.get_ylim() == (0.0, 1.0) and "T2" in ax_t2.get_title()


def test_overlays_draw_the_uncertainty_map_on_its_fixed_scale(figures, tmp_path):
    """The fourth panel's PIXELS: the map's 0.5 block in the top colour of the scale, 0 in the bottom
    one, a mid value in between; a row without a map says so."""
    from matplotlib import colormaps

    from semicml.evaluation.plots import UNCERTAINTY_CMAP

    image = np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32)
    label = np.zeros((40, 40), bool)
    unc = np.zeros((40, 40), np.float32)
    unc[5:15, 5:15] = 0.5
    unc[25:35, 25:35] = 0.25
    plot_overlays([{"title": "u", "image": image, "label": label, "pred": label, "uncertainty": unc},
                   {"title": "none", "image": image, "label": label, "pred": label}], tmp_path / "u.png")
    (fig,) = figures
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = pixels.shape[0]
    ax = fig.axes[3]  # row 0, fourth panel
    assert "uncertainty" in ax.get_title()

    def colour_at(col: float, row: float) -> np.ndarray:
        x, y = ax.transData.transform((col, row))
        return pixels[int(round(height - y)), int(round(x))]

    cmap = colormaps[UNCERTAINTY_CMAP]
    for (col, row), value in (((10, 10), 1.0), ((30, 30), 0.5), ((20, 5), 0.0), ((35, 10), 0.0)):
        expected = np.round(np.asarray(cmap(value)[:3]) * 255)
        assert np.abs(colour_at(col, row) - expected).max() <= 6, (col, row, value)
    assert fig.axes[7].texts[0].get_text() == "no uncertainty map"  # row 1, fourth panel
    with pytest.raises(ValueError, match="uncertainty"):
        plot_overlays([{"image": image, "label": label, "pred": label, "uncertainty": unc[:3]}], tmp_path / "x.png")
