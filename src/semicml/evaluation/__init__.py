"""evaluation: 3D metrics, report files, figures.

Heavy dependencies are imported lazily inside the functions (MONAI for surface distances,
matplotlib for plots), so importing this package stays cheap for the training loop.
"""

from semicml.evaluation.metrics import (
    DISTANCE_METRICS,
    EMPTY_MASK_RULE,
    HIGHER_IS_BETTER,
    METRICS,
    case_metrics,
    dice_score,
    volume_diagonal_mm,
)
from semicml.evaluation.plots import (
    plot_metric_bars,
    plot_overlays,
    plot_training_curves,
    plot_val_curves,
    training_curves_figure,
)
from semicml.evaluation.report import STD_DDOF, evaluate_pairs, summarize, write_report

__all__ = [
    "DISTANCE_METRICS",
    "EMPTY_MASK_RULE",
    "HIGHER_IS_BETTER",
    "METRICS",
    "STD_DDOF",
    "case_metrics",
    "dice_score",
    "evaluate_pairs",
    "plot_metric_bars",
    "plot_overlays",
    "plot_training_curves",
    "plot_val_curves",
    "summarize",
    "training_curves_figure",
    "volume_diagonal_mm",
    "write_report",
]
