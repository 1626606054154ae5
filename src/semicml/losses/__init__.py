"""losses: supervised (BCE + Dice), ASC contrastive, mutual consistency and PReL soft-label losses."""

from semicml.losses.contrastive import ASCLoss, asc_loss, multi_asc_loss, similarity_matrix
from semicml.losses.prel import prel_loss
from semicml.losses.segmentation import (
    SupervisedLoss,
    dice_loss,
    mutual_mse,
    sigmoid_rampup,
    soft_dice_similarity,
    supervised_loss,
)

__all__ = [
    "ASCLoss",
    "SupervisedLoss",
    "asc_loss",
    "dice_loss",
    "multi_asc_loss",
    "mutual_mse",
    "prel_loss",
    "sigmoid_rampup",
    "similarity_matrix",
    "soft_dice_similarity",
    "supervised_loss",
]
