"""Losses: hand-computed values, edge cases, shape errors, gradient flow, bf16 autocast."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from semicml.losses import (
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
from semicml.models import UNet2D

EPS = 1e-5


def t(rows, shape=None) -> torch.Tensor:
    x = torch.tensor(rows, dtype=torch.float32)
    return x if shape is None else x.reshape(shape)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------------------------
# Dice
# --------------------------------------------------------------------------------------------
# Sample A: p = [[.5, 1], [0, .5]], y = [[1, 1], [0, 0]]
#   sum(p y) = .5 + 1 = 1.5; sum(p^2) = .25 + 1 + 0 + .25 = 1.5; sum(y^2) = 2
#   s = (3 + eps) / (3.5 + eps) ~ 0.857143; loss = 1 - s ~ 0.142857
# Sample B: p = 0, y = 0 -> s = eps / eps = 1, loss 0.
# Batch mean = 0.0714; a global (not per-sample) Dice would give 0.142857 instead.
S_A = (3 + EPS) / (3.5 + EPS)


@pytest.mark.parametrize(
    "p, y, expected_sim",
    [
        ([[[[0.5, 1.0], [0.0, 0.5]]]], [[[[1.0, 1.0], [0.0, 0.0]]]], [S_A]),
        ([[[[0.0, 0.0], [0.0, 0.0]]]], [[[[0.0, 0.0], [0.0, 0.0]]]], [1.0]),
        # perfect binary prediction with 3 foreground pixels: (6 + eps) / (6 + eps)
        ([[[[1.0, 1.0], [1.0, 0.0]]]], [[[[1.0, 1.0], [1.0, 0.0]]]], [1.0]),
        # disjoint: eps / (2 + 2 + eps)
        ([[[[1.0, 1.0], [0.0, 0.0]]]], [[[[0.0, 0.0], [1.0, 1.0]]]], [EPS / (4 + EPS)]),
        # two samples at once: similarity is per sample
        (
            [[[[0.5, 1.0], [0.0, 0.5]]], [[[0.0, 0.0], [0.0, 0.0]]]],
            [[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]],
            [S_A, 1.0],
        ),
    ],
)
def test_soft_dice_similarity_and_dice_loss(p, y, expected_sim):
    p, y = t(p), t(y)
    sim = soft_dice_similarity(p, y)
    assert sim.shape == (p.shape[0],)
    torch.testing.assert_close(sim, t(expected_sim), atol=1e-6, rtol=0)
    expected_loss = sum(1 - s for s in expected_sim) / len(expected_sim)
    assert dice_loss(p, y, reduction="slice").item() == pytest.approx(expected_loss, abs=1e-6)
    # Batch Dice (the default, the reference's): one Dice with sums over every slice of the batch.
    p64, y64 = p.double(), y.double()
    batch = 1 - (2 * (p64 * y64).sum() + EPS) / ((p64 * p64).sum() + (y64 * y64).sum() + EPS)
    assert dice_loss(p, y).item() == pytest.approx(batch.item(), abs=1e-6)


def test_batch_dice_does_not_punish_a_faint_prediction_on_a_healthy_slice():
    # A tumour slice predicted well and a tumour-free slice with a faint 0.05 haze: the per-slice
    # mean charges the healthy slice a loss of ~1 (as much as missing a whole tumour); the batch
    # Dice only counts the haze as the few false-positive pixels it is.
    tumour = torch.zeros(1, 1, 8, 8)
    tumour[..., 2:6, 2:6] = 1.0
    p = torch.cat([tumour * 0.9, torch.full((1, 1, 8, 8), 0.05)])
    y = torch.cat([tumour, torch.zeros(1, 1, 8, 8)])
    # Hand computation: sum(p y) = 16 * 0.9 = 14.4; sum p^2 = 16 * 0.81 + 64 * 0.0025 = 13.12; sum y^2 = 16.
    assert dice_loss(p, y).item() == pytest.approx(1 - 28.8 / 29.12, abs=1e-5)
    assert dice_loss(p, y, reduction="slice").item() > 0.5
    with pytest.raises(ValueError, match="reduction"):
        dice_loss(p, y, reduction="mean")


def test_dice_loss_extremes():
    y = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert dice_loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(y, 1 - y).item() == pytest.approx(1.0, abs=1e-5)


def test_dice_loss_multichannel_sums_over_channels():
    # C=2, 1x1 pixels: p = (1, 0), y = (1, 1): (2*1 + eps) / (1 + 2 + eps)
    p, y = t([1.0, 0.0], (1, 2, 1, 1)), t([1.0, 1.0], (1, 2, 1, 1))
    assert dice_loss(p, y, reduction="slice").item() == pytest.approx(1 - (2 + EPS) / (3 + EPS), abs=1e-6)
    # Batch Dice is per channel (region), then averaged: channel 0 perfect (0), channel 1 missed (~1).
    expected = ((1 - (2 + EPS) / (2 + EPS)) + (1 - EPS / (1 + EPS))) / 2
    assert dice_loss(p, y).item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Supervised loss
# --------------------------------------------------------------------------------------------
def _hand_supervised(logits, target, wb=10.0, wd=7.0):
    ps = [sig(z) for z in logits]
    bce = sum(-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in zip(ps, target)) / len(ps)
    num = 2 * sum(p * y for p, y in zip(ps, target)) + EPS
    den = sum(p * p for p in ps) + sum(y * y for y in target) + EPS
    return wb * bce + wd * (1 - num / den)


@pytest.mark.parametrize(
    "logits, target, wb, wd, expected",
    [
        # logits (0, 2), y (1, 0): BCE = (log 2 + log(1 + e^2)) / 2 = (0.693147 + 2.126928) / 2
        # sigmoid = (.5, .880797): Dice = 1 - (1 + eps) / (.25 + .775803 + 1 + eps)
        ([0.0, 2.0], [1.0, 0.0], 10.0, 7.0,
         10 * (math.log(2) + math.log(1 + math.e**2)) / 2
         + 7 * (1 - (1 + EPS) / (0.25 + sig(2.0) ** 2 + 1 + EPS))),
        ([0.0, 2.0], [1.0, 0.0], 1.0, 0.0, (math.log(2) + math.log(1 + math.e**2)) / 2),
        # soft target (0.3, 0.8)
        ([-1.0, 1.5], [0.3, 0.8], 10.0, 7.0, _hand_supervised([-1.0, 1.5], [0.3, 0.8])),
    ],
)
def test_supervised_loss_hand(logits, target, wb, wd, expected):
    z, y = t(logits, (1, 1, 1, 2)), t(target, (1, 1, 1, 2))
    assert supervised_loss(z, y, bce_weight=wb, dice_weight=wd).item() == pytest.approx(expected, abs=1e-5)


def test_supervised_loss_pos_weight_scales_only_the_foreground_bce_term():
    # logits (0, 2, -1), y (1, 0, 1), w = 3: BCE = (3 log 2 + log(1 + e^2) + 3 log(1 + e)) / 3
    z, y = t([0.0, 2.0, -1.0], (1, 1, 1, 3)), t([1.0, 0.0, 1.0], (1, 1, 1, 3))
    expected = (3 * math.log(2) + math.log(1 + math.e**2) + 3 * math.log(1 + math.e)) / 3
    assert supervised_loss(z, y, bce_weight=1.0, dice_weight=0.0, pos_weight=3.0).item() == pytest.approx(
        expected, abs=1e-5)
    # the Dice term is untouched
    dice_only = supervised_loss(z, y, bce_weight=0.0, dice_weight=1.0)
    assert supervised_loss(z, y, bce_weight=0.0, dice_weight=1.0, pos_weight=3.0).item() == dice_only.item()
    # soft target 0.4: the foreground part 0.4 * log(p) is scaled, the background part 0.6 * log(1 - p) not
    soft = supervised_loss(t([0.5], (1, 1, 1, 1)), t([0.4], (1, 1, 1, 1)), bce_weight=1.0, dice_weight=0.0,
                           pos_weight=2.0)
    assert soft.item() == pytest.approx(-(2 * 0.4 * math.log(sig(0.5)) + 0.6 * math.log(1 - sig(0.5))), abs=1e-5)


def test_supervised_loss_pos_weight_one_is_the_plain_loss_bit_for_bit_and_nonpositive_is_refused():
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(2, 1, 8, 8, generator=g), (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    assert torch.equal(supervised_loss(z, y, pos_weight=1.0), supervised_loss(z, y))
    # a missed foreground pixel pulls harder: the gradient on its logit is -w (1 - p) / n
    z1 = z.clone().requires_grad_()
    supervised_loss(z1, y, bce_weight=1.0, dice_weight=0.0, pos_weight=4.0).backward()
    fg = y.bool()
    expected = -4.0 * (1 - torch.sigmoid(z[fg])) / z.numel()
    assert torch.allclose(z1.grad[fg], expected, atol=1e-6)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="pos_weight"):
            supervised_loss(z, y, pos_weight=bad)


def test_supervised_loss_large_logits_stable():
    z = t([100.0, -100.0], (1, 1, 1, 2))
    y = t([1.0, 0.0], (1, 1, 1, 2))
    assert supervised_loss(z, y).item() == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------------------------
# ASC, worked by hand
# --------------------------------------------------------------------------------------------
# U = 2 slices of 1x1x1x2 maps:
#   a1 = [1, 0], a2 = [0, 1]   (modality a)
#   b1 = [.5, 0], b2 = [.5, .5] (modality b)
# z = [a1, a2, b1, b2]; positives: a1<->b1, a2<->b2.
# Squared norms: a1 1, a2 1, b1 .25, b2 .5. Dots: a1.a2 0, a1.b1 .5, a1.b2 .5, a2.b1 0,
# a2.b2 .5, b1.b2 .25.
# Dice s = (2 dot + eps) / (|u|^2 + |v|^2 + eps):
#          a1      a2      b1      b2
#   a1     1       ~0      0.8     0.6667
#   a2     ~0      1       ~0      0.6667
#   b1     0.8     ~0      1       0.6667
#   b2     0.6667  0.6667  0.6667  1
# Cosine:  a1.a2 0, a1.b1 1, a1.b2 1/sqrt2, a2.b1 0, a2.b2 1/sqrt2, b1.b2 1/sqrt2.
P_A = t([[1.0, 0.0], [0.0, 1.0]], (2, 1, 1, 2))
P_B = t([[0.5, 0.0], [0.5, 0.5]], (2, 1, 1, 2))


def _d(dot, n1, n2):
    return (2 * dot + EPS) / (n1 + n2 + EPS)


DICE = {
    ("a1", "a2"): _d(0, 1, 1), ("a1", "b1"): _d(0.5, 1, 0.25), ("a1", "b2"): _d(0.5, 1, 0.5),
    ("a2", "b1"): _d(0, 1, 0.25), ("a2", "b2"): _d(0.5, 1, 0.5), ("b1", "b2"): _d(0.25, 0.25, 0.5),
}
R = 1 / math.sqrt(2)
COS = {
    ("a1", "a2"): 0.0, ("a1", "b1"): 1.0, ("a1", "b2"): R,
    ("a2", "b1"): 0.0, ("a2", "b2"): R, ("b1", "b2"): R,
}
POS = {"a1": "b1", "a2": "b2", "b1": "a1", "b2": "a2"}


def _hand_asc(table, tau):
    def s(u, v):
        return table[(u, v)] if (u, v) in table else table[(v, u)]

    names = ["a1", "a2", "b1", "b2"]
    total = 0.0
    for k in names:
        denom = sum(math.exp(s(k, l) / tau) for l in names if l != k)
        total += -math.log(math.exp(s(k, POS[k]) / tau) / denom)
    return total / 4


@pytest.mark.parametrize(
    "similarity, tau, table",
    [("dice", 1.0, DICE), ("dice", 0.5, DICE), ("cosine", 1.0, COS), ("cosine", 0.5, COS)],
)
def test_asc_hand_worked(similarity, tau, table):
    expected = _hand_asc(table, tau)
    got = asc_loss(P_A, P_B, similarity=similarity, temperature=tau)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_asc_hand_worked_explicit_number():
    # Anchor a1, tau 1: -log(e^.8 / (e^~0 + e^.8 + e^.6667)) ; written out for all four anchors.
    e = math.exp
    d0, d1, d2 = EPS / (2 + EPS), (1 + EPS) / (1.25 + EPS), (1 + EPS) / (1.5 + EPS)
    d3 = EPS / (1.25 + EPS)  # a2.b1
    d4 = (0.5 + EPS) / (0.75 + EPS)  # b1.b2
    l_a1 = -math.log(e(d1) / (e(d0) + e(d1) + e(d2)))
    l_a2 = -math.log(e(d2) / (e(d0) + e(d3) + e(d2)))
    l_b1 = -math.log(e(d1) / (e(d1) + e(d3) + e(d4)))
    l_b2 = -math.log(e(d2) / (e(d2) + e(d2) + e(d4)))
    expected = (l_a1 + l_a2 + l_b1 + l_b2) / 4  # ~ 1.0027
    assert asc_loss(P_A, P_B).item() == pytest.approx(expected, abs=1e-5)


def test_similarity_matrix_values():
    z = torch.cat([P_A, P_B])
    s = similarity_matrix(z, "dice")
    assert s.shape == (4, 4)
    assert s[0, 2].item() == pytest.approx(0.8, abs=1e-5)
    assert s[2, 3].item() == pytest.approx(2 / 3, abs=1e-5)
    torch.testing.assert_close(s, s.T)
    c = similarity_matrix(z, "cosine")
    assert c[0, 3].item() == pytest.approx(R, abs=1e-6)
    # all-zero maps: cosine is finite (0), Dice is 1
    zero = torch.zeros(2, 1, 2, 2)
    assert torch.equal(similarity_matrix(zero, "cosine"), torch.zeros(2, 2))
    torch.testing.assert_close(similarity_matrix(zero, "dice"), torch.ones(2, 2))


def _loop_asc(p_a, p_b, tau=1.0):
    """Independent reference with python loops (no masking tricks)."""
    z = [m.flatten().double() for m in torch.cat([p_a, p_b])]
    n, u = len(z), p_a.shape[0]

    def s(x, y):
        return ((2 * (x * y).sum() + EPS) / ((x * x).sum() + (y * y).sum() + EPS)).item()

    total = 0.0
    for k in range(n):
        denom = sum(math.exp(s(z[k], z[l]) / tau) for l in range(n) if l != k)
        total += -math.log(math.exp(s(z[k], z[(k + u) % n]) / tau) / denom)
    return total / n


@pytest.mark.parametrize("u", [2, 3, 5])
def test_asc_matches_loop_reference_any_batch(u):
    g = torch.Generator().manual_seed(u)
    p_a, p_b = torch.rand(u, 1, 3, 3, generator=g), torch.rand(u, 1, 3, 3, generator=g)
    assert asc_loss(p_a, p_b, temperature=0.7).item() == pytest.approx(_loop_asc(p_a, p_b, 0.7), abs=1e-5)


def test_asc_symmetric_and_permutation_invariant():
    g = torch.Generator().manual_seed(1)
    p_a, p_b = torch.rand(4, 1, 4, 4, generator=g), torch.rand(4, 1, 4, 4, generator=g)
    ref = asc_loss(p_a, p_b)
    torch.testing.assert_close(asc_loss(p_b, p_a), ref)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(asc_loss(p_a[perm], p_b[perm]), ref)


def test_asc_single_slice_is_exactly_zero():
    p_a = torch.rand(1, 1, 4, 4, requires_grad=True)
    p_b = torch.rand(1, 1, 4, 4, requires_grad=True)
    loss = asc_loss(p_a, p_b)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(p_a.grad) == 0 and torch.count_nonzero(p_b.grad) == 0


def test_asc_empty_batch_zero_with_graph():
    p_a = torch.rand(0, 1, 4, 4, requires_grad=True)
    loss = asc_loss(p_a, torch.rand(0, 1, 4, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def test_asc_prefers_correct_pairing():
    # Two disjoint maps: matched pairing (identical positives) must beat the swapped pairing.
    m1 = t([[1.0, 1.0], [0.0, 0.0]], (1, 1, 2, 2))
    m2 = t([[0.0, 0.0], [1.0, 1.0]], (1, 1, 2, 2))
    p_a = torch.cat([m1, m2])
    good = asc_loss(p_a, torch.cat([m1, m2]))
    bad = asc_loss(p_a, torch.cat([m2, m1]))
    # Hand values, tau 1, s(same)=1, s(disjoint)=eps/(4+eps)~0: each anchor sees one same-map
    # term and two ~0 terms. good: -log(e / (e + 2)); bad: positive ~0, denominator e + 2.
    assert good.item() == pytest.approx(-math.log(math.e / (math.e + 2)), abs=1e-4)
    assert bad.item() == pytest.approx(-math.log(1 / (math.e + 2)), abs=1e-4)
    assert good < bad


@pytest.mark.parametrize(
    "a_shape, b_shape, kw",
    [
        ((2, 1, 4, 4), (2, 1, 4, 5), {}),
        ((2, 1, 4, 4), (3, 1, 4, 4), {}),
        ((2, 4, 4), (2, 4, 4), {}),
        ((2, 1, 4, 4), (2, 1, 4, 4), {"similarity": "l2"}),
        ((2, 1, 4, 4), (2, 1, 4, 4), {"temperature": 0.0}),
        ((2, 1, 4, 4), (2, 1, 4, 4), {"temperature": -1.0}),
    ],
)
def test_asc_invalid_inputs(a_shape, b_shape, kw):
    with pytest.raises(ValueError):
        asc_loss(torch.rand(a_shape), torch.rand(b_shape), **kw)


@pytest.mark.parametrize(
    "fn", [dice_loss, supervised_loss, soft_dice_similarity, mutual_mse, prel_loss]
)
def test_pairwise_losses_reject_shape_mismatch(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 3))
    with pytest.raises(ValueError):
        fn(torch.rand(2, 16), torch.rand(2, 16))


def test_multi_asc_is_mean_of_pairs():
    g = torch.Generator().manual_seed(3)
    ps = [torch.rand(3, 1, 4, 4, generator=g) for _ in range(3)]
    pair_mean = sum(asc_loss(a, b).item() for a, b in itertools.combinations(ps, 2)) / 3
    assert multi_asc_loss(ps).item() == pytest.approx(pair_mean, abs=1e-6)
    assert multi_asc_loss(ps[:2], temperature=0.5).item() == pytest.approx(
        asc_loss(ps[0], ps[1], temperature=0.5).item(), abs=1e-6
    )
    with pytest.raises(ValueError):
        multi_asc_loss(ps[:1])


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def test_mutual_mse_hand():
    # ((.2 - .5)^2 + (.8 - .5)^2) / 2 = (.09 + .09) / 2 = .09
    a, b = t([0.2, 0.8], (1, 1, 1, 2)), t([0.5, 0.5], (1, 1, 1, 2))
    assert mutual_mse(a, b).item() == pytest.approx(0.09, abs=1e-7)


@pytest.mark.parametrize(
    "step, length, expected",
    [
        (0, 200, math.exp(-5)),
        (100, 200, math.exp(-1.25)),  # t = .5: exp(-5 * .25)
        (200, 200, 1.0),
        (500, 200, 1.0),  # clipped
        (-10, 200, math.exp(-5)),  # clipped
        (7, 0, 1.0),  # no ramp-up
    ],
)
def test_sigmoid_rampup(step, length, expected):
    assert sigmoid_rampup(step, length) == pytest.approx(expected, rel=1e-12)


def test_prel_loss_is_weighted_sum():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 1, 4, 4, generator=g)
    y = torch.rand(3, 1, 4, 4, generator=g)
    expected = 0.7 * supervised_loss(z, y) + 0.3 * asc_loss(y, torch.sigmoid(z), temperature=0.5)
    got = prel_loss(z, y, alpha=0.3, temperature=0.5)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert prel_loss(z, y, alpha=0.0).item() == pytest.approx(supervised_loss(z, y).item(), abs=1e-5)
    with pytest.raises(ValueError):
        prel_loss(z, y, alpha=1.5)


# --------------------------------------------------------------------------------------------
# Gradient flow (the USB Mean-Teacher lesson: test that each term reaches the right parameters)
# --------------------------------------------------------------------------------------------
def _net(seed: int) -> UNet2D:
    torch.manual_seed(seed)
    return UNet2D(widths=(4, 8, 16), dropout=(0.0, 0.1, 0.2)).train()


def _grad_norm(m: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)


def _assert_all_params_have_grad(m: torch.nn.Module) -> None:
    assert all(p.grad is not None for p in m.parameters())
    assert _grad_norm(m) > 0
    assert m.encoder[0][0].weight.grad.abs().sum() > 0  # reaches the very first layer


@pytest.fixture
def pair_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)


@pytest.mark.parametrize("term", ["asc", "asc_cosine", "mse"])
def test_mutual_terms_reach_both_students(term, pair_batch):
    x_a, x_b = pair_batch
    f_a, f_b = _net(0), _net(1)
    p_a, p_b = torch.sigmoid(f_a(x_a)), torch.sigmoid(f_b(x_b))
    if term == "asc":
        loss = asc_loss(p_a, p_b)
    elif term == "asc_cosine":
        loss = asc_loss(p_a, p_b, similarity="cosine", temperature=0.5)
    else:
        loss = mutual_mse(p_a, p_b)
    loss.backward()
    _assert_all_params_have_grad(f_a)
    _assert_all_params_have_grad(f_b)


def test_supervised_loss_gives_gradient(pair_batch):
    x_a, _ = pair_batch
    f_a = _net(0)
    y = (torch.rand(3, 1, 8, 8) > 0.5).float()
    supervised_loss(f_a(x_a), y).backward()
    _assert_all_params_have_grad(f_a)


def test_prel_loss_grad_to_weak_student_none_to_teacher(pair_batch):
    x_weak, x_strong = pair_batch
    weak = _net(0)
    teacher = copy.deepcopy(_net(1))
    # Deliberately NOT under no_grad: prel_loss itself must cut the graph to the teacher.
    soft = torch.sigmoid(teacher(x_strong))
    assert soft.requires_grad
    prel_loss(weak(x_weak), soft, alpha=0.1).backward()
    _assert_all_params_have_grad(weak)
    assert all(p.grad is None or not p.grad.any() for p in teacher.parameters())


# --------------------------------------------------------------------------------------------
# bf16 autocast
# --------------------------------------------------------------------------------------------
def test_losses_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 1, 8, 8, generator=g).bfloat16()
    p_a = torch.rand(3, 1, 8, 8, generator=g).bfloat16()
    p_b = torch.rand(3, 1, 8, 8, generator=g).bfloat16()
    y = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = {
            "dice": dice_loss(p_a, y),
            "sup": supervised_loss(z, y),
            "sim": soft_dice_similarity(p_a, p_b),
            "simmat": similarity_matrix(p_a, "cosine"),
            "asc": asc_loss(p_a, p_b),
            "multi": multi_asc_loss([p_a, p_b, y]),
            "mse": mutual_mse(p_a, p_b),
            "prel": prel_loss(z, p_b),
        }
        # Dice similarity matrix computed in fp32 even under autocast: matches the fp32 result.
        ref_asc = asc_loss(p_a.float(), p_b.float())
    for name, v in outs.items():
        assert v.dtype == torch.float32, name
        assert torch.isfinite(v).all(), name
    assert outs["asc"].item() == pytest.approx(ref_asc.item(), abs=1e-6)
