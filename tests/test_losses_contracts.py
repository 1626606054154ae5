"""Loss contracts the value tests of test_losses.py leave open: the exact error messages, the
defaults, non-default arguments reaching the inner losses, empty and one-element batches, and
the module wrappers. Written against the surviving mutants of benchmarks/mutation.py (losses/).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semicml.losses import (
    ASCLoss,
    SupervisedLoss,
    asc_loss,
    dice_loss,
    multi_asc_loss,
    mutual_mse,
    prel_loss,
    sigmoid_rampup,
    similarity_matrix,
    soft_dice_similarity,
    supervised_loss,
)
from semicml.losses.validation import zero_with_graph

SIMS = "('dice', 'cosine')"


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def message(fn, *args, **kw) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kw)
    return str(info.value)


# ------------------------------------------------------------------------------ error messages
@pytest.mark.parametrize("fn, name, a, b", [
    (dice_loss, "dice_loss", "probs", "target"),
    (supervised_loss, "supervised_loss", "logits", "target"),
    (soft_dice_similarity, "soft_dice_similarity", "u", "v"),
    (mutual_mse, "mutual_mse", "p_a", "p_b"),
    (prel_loss, "prel_loss", "logits_weak", "soft_labels"),
    (asc_loss, "asc_loss", "p_a", "p_b"),
])
def test_shape_errors_name_the_loss_its_arguments_and_both_shapes(fn, name, a, b):
    got = message(fn, rand(2, 1, 4, 4), rand(2, 1, 4, 3))
    assert got == f"{name}: {a} and {b} must be 4D (B, C, H, W) with the same shape, got (2, 1, 4, 4) and (2, 1, 4, 3)"


@pytest.mark.parametrize("call, expected", [
    (lambda: similarity_matrix(rand(2, 16)), "similarity_matrix: z must be 4D (N, C, H, W), got shape (2, 16)"),
    (lambda: similarity_matrix(rand(2, 1, 2, 2), "l2"), f"similarity must be one of {SIMS}, got 'l2'"),
    (lambda: asc_loss(rand(2, 1, 2, 2), rand(2, 1, 2, 2), similarity="l2"),
     f"asc_loss: similarity must be one of {SIMS}, got 'l2'"),
    (lambda: asc_loss(rand(2, 1, 2, 2), rand(2, 1, 2, 2), temperature=0.0),
     "asc_loss: temperature must be > 0, got 0.0"),
    (lambda: multi_asc_loss([rand(2, 1, 2, 2)]), "multi_asc_loss needs at least 2 modalities, got 1"),
    (lambda: sigmoid_rampup(3, -1), "sigmoid_rampup: length must be >= 0, got -1"),
    (lambda: prel_loss(rand(2, 1, 2, 2), rand(2, 1, 2, 2), alpha=1.5), "prel_loss: alpha must be in [0, 1], got 1.5"),
    (lambda: dice_loss(rand(2, 1, 2, 2), rand(2, 1, 2, 2), reduction="mean"),
     "dice_loss: reduction must be 'batch' or 'slice', got 'mean'"),
    (lambda: ASCLoss(similarity="l2"), f"ASCLoss: similarity must be one of {SIMS}, got 'l2'"),
    (lambda: ASCLoss(temperature=-1.0), "ASCLoss: temperature must be > 0, got -1.0"),
    (lambda: ASCLoss(temperature=0.0), "ASCLoss: temperature must be > 0, got 0.0"),
])
def test_argument_errors_say_what_is_wrong(call, expected):
    assert message(call) == expected


# ------------------------------------------------------------------------------ defaults
def test_similarity_matrix_defaults_to_dice():
    z = rand(3, 1, 2, 2)
    flat = z.flatten(1)
    gram = flat @ flat.T
    sq = gram.diagonal()
    expected = (2 * gram + 1e-5) / (sq[:, None] + sq[None, :] + 1e-5)
    assert torch.allclose(similarity_matrix(z), expected, atol=1e-6)


def test_prel_loss_defaults_are_the_papers():
    """alpha 0.1, 10 BCE + 7 Dice (batch), ASC with Dice similarity at temperature 1."""
    z, y = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)), rand(3, 1, 4, 4, seed=2)
    bce = F.binary_cross_entropy_with_logits(z, y)
    sup = 10.0 * bce + 7.0 * dice_loss(torch.sigmoid(z), y, reduction="batch")
    asc = asc_loss(y, torch.sigmoid(z), similarity="dice", temperature=1.0)
    assert prel_loss(z, y).item() == pytest.approx((0.9 * sup + 0.1 * asc).item(), rel=1e-6)


def test_prel_loss_passes_every_argument_on():
    z, y = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(3)), rand(3, 1, 4, 4, seed=4)
    kw = {"bce_weight": 2.0, "dice_weight": 3.0, "dice_reduction": "slice"}
    got = prel_loss(z, y, alpha=0.4, similarity="cosine", temperature=0.5, **kw)
    expected = 0.6 * supervised_loss(z, y, **kw) + 0.4 * asc_loss(y, torch.sigmoid(z), similarity="cosine",
                                                                  temperature=0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # the three parts differ enough that dropping any one argument changes the value
    assert supervised_loss(z, y, 2.0, 3.0, "batch").item() != pytest.approx(supervised_loss(z, y, **kw).item())
    assert asc_loss(y, torch.sigmoid(z), similarity="dice", temperature=0.5).item() != pytest.approx(
        asc_loss(y, torch.sigmoid(z), similarity="cosine", temperature=0.5).item())


def test_prel_loss_alpha_one_is_allowed_and_is_the_asc_term_alone():
    z, y = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5)), rand(3, 1, 4, 4, seed=6)
    assert prel_loss(z, y, alpha=1.0).item() == pytest.approx(asc_loss(y, torch.sigmoid(z)).item(), rel=1e-6)
    assert prel_loss(z, y, alpha=0.0).item() == pytest.approx(supervised_loss(z, y).item(), rel=1e-6)


def test_supervised_loss_slice_reduction_reaches_the_dice_term():
    z = torch.tensor([4.0, -4.0, 0.0, 0.0]).view(2, 1, 1, 2)  # slice 1 confident, slice 2 at 0.5
    y = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(2, 1, 1, 2)  # slice 2 is healthy
    p = torch.sigmoid(z)
    bce = F.binary_cross_entropy_with_logits(z, y)
    slice_dice = (1 - soft_dice_similarity(p, y)).mean()
    got = supervised_loss(z, y, bce_weight=1.0, dice_weight=1.0, dice_reduction="slice")
    assert got.item() == pytest.approx((bce + slice_dice).item(), rel=1e-6)
    assert got.item() != pytest.approx(supervised_loss(z, y, 1.0, 1.0, "batch").item(), rel=1e-3)


# ------------------------------------------------------------------------------ empty / tiny batches
@pytest.mark.parametrize("fn", [supervised_loss, dice_loss, mutual_mse, asc_loss])
@pytest.mark.parametrize("grad_side", [0, 1])
def test_empty_batch_is_a_zero_attached_to_both_inputs(fn, grad_side):
    a, b = torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4)
    (a, b)[grad_side].requires_grad_(True)
    out = fn(a, b)
    assert out.dtype == torch.float32 and out.shape == () and out.item() == 0.0
    assert out.requires_grad  # whichever side carries the graph
    out.backward()


def test_empty_batch_with_slice_reduction_is_zero_not_nan():
    assert dice_loss(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4), reduction="slice").item() == 0.0


def test_slice_dice_uses_the_given_eps():
    p = torch.tensor([0.5, 0.0]).view(1, 1, 1, 2)
    y = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    # 1 - (2 * 0.5 + 1) / (0.25 + 1 + 1) = 1 - 2 / 2.25
    assert dice_loss(p, y, eps=1.0, reduction="slice").item() == pytest.approx(1 - 2 / 2.25, rel=1e-6)


def test_zero_with_graph_is_zero_even_for_non_empty_tensors():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = zero_with_graph(x, torch.ones(3))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(x.grad, torch.zeros(2))


def test_mutual_mse_of_single_pixels_is_the_squared_difference():
    assert mutual_mse(torch.full((1, 1, 1, 1), 0.25), torch.full((1, 1, 1, 1), 0.75)).item() == 0.25


# ------------------------------------------------------------------------------ module wrappers
def test_supervised_loss_module_defaults_and_arguments():
    z, y = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(7)), rand(2, 1, 4, 4, seed=8)
    default = SupervisedLoss()
    assert (default.bce_weight, default.dice_weight, default.dice_reduction) == (10.0, 7.0, "batch")
    assert default(z, y).item() == pytest.approx(supervised_loss(z, y, 10.0, 7.0, "batch").item(), rel=1e-6)
    custom = SupervisedLoss(bce_weight=2.0, dice_weight=3.0, dice_reduction="slice")
    assert custom(z, y).item() == pytest.approx(supervised_loss(z, y, 2.0, 3.0, "slice").item(), rel=1e-6)


def test_asc_loss_module_defaults_and_arguments():
    a, b = rand(3, 1, 4, 4, seed=9), rand(3, 1, 4, 4, seed=10)
    default = ASCLoss()
    assert (default.similarity, default.temperature) == ("dice", 1.0)
    assert default(a, b).item() == pytest.approx(asc_loss(a, b, similarity="dice", temperature=1.0).item(), rel=1e-6)
    custom = ASCLoss(similarity="cosine", temperature=0.5)
    expected = asc_loss(a, b, similarity="cosine", temperature=0.5).item()
    assert custom(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(asc_loss(a, b, similarity="dice", temperature=0.5).item(), rel=1e-3)
    assert expected != pytest.approx(asc_loss(a, b, similarity="cosine", temperature=1.0).item(), rel=1e-3)
