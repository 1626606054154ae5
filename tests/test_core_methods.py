"""Direct, hand-computed tests of the Semi-CML / PReL core: BMA, MC soft labels, teacher choice,
the stage-1 loss composition, PReL inputs per modality, the BMA freeze and the refine schedule.

Each test is written to fail on a specific broken implementation (see benchmarks/mutation.py and
benchmarks/results/mutation/README.md); the names of the bugs they catch are in the docstrings.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semicml.config import TrainConfig
from semicml.errors import ConfigError
from semicml.losses import multi_asc_loss, mutual_mse, sigmoid_rampup, supervised_loss
from semicml.methods import METHODS, get_method
from semicml.methods.base import MethodContext
from semicml.methods.prel import SemiCMLPReL
from semicml.methods.semicml import SemiCML, SemiCMLASCOnly, SemiCMLCosine, SemiCMLMSEOnly
from semicml.methods.teachers import BestModelAverage, blend_, frozen_copy, mc_soft_labels
from semicml.models import UNet2D

MODS = ["T2", "T1ce"]


def make(cls, total: int = 10, ipe: float = 2.0, **cfg):
    torch.manual_seed(0)
    cfg.setdefault("model", {"base_width": 4, "levels": 2})
    ctx = MethodContext(cfg=TrainConfig(**cfg), modalities=list(MODS),
                        out_channels=1, total_iterations=total, iterations_per_epoch=ipe, device=torch.device("cpu"),
                        new_network=lambda: UNet2D(1, 1, widths=(4, 8, 16), dropout=(0.05, 0.1, 0.2)))
    method = cls(ctx)
    method.train()
    return method


def make_batch(n_lab: int = 2, n_unl: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(n_lab, 32, 32, dtype=torch.int64)
    label[:, 8:20, 10:24] = 1
    label[-1, 2:6, 2:30] = 2  # a second class: the binary target is label > 0
    return {"images_l": torch.randn(n_lab, 2, 32, 32, generator=g), "label_l": label,
            "images_u": torch.randn(n_unl, 2, 32, 32, generator=g)}


def linear(weight: float, bias: float) -> nn.Linear:
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(weight)
        net.bias.fill_(bias)
    return net


def params(net: nn.Module) -> list[float]:
    return [float(p) for p in torch.cat([p.detach().flatten() for p in net.parameters()])]


# --------------------------------------------------------------------------- best-model averaging
def test_bma_first_entry_copies_the_student_then_blends_with_alpha_from_the_improvement():
    """Catches the inverted alpha (``delta/d`` instead of ``1 - delta/d``)."""
    bma = BestModelAverage(pool_size=2, max_alpha=0.99)
    teacher, student = linear(10.0, -10.0), linear(1.0, 2.0)
    assert bma.update(0.5, teacher, student) == 0.0
    assert params(teacher) == [1.0, 2.0] and bma.started and bma.pool == [0.5]
    student2 = linear(4.0, 8.0)
    alpha = bma.update(0.6, teacher, student2)
    assert alpha == pytest.approx(1 - (0.6 - 0.5) / 0.6) == pytest.approx(0.8333333)
    a = 1 - 0.1 / 0.6
    assert params(teacher) == pytest.approx([a * 1.0 + (1 - a) * 4.0, a * 2.0 + (1 - a) * 8.0])
    assert bma.pool == [0.6, 0.5]  # sorted, best first
    # a full pool refuses a score not better than its worst entry: teacher untouched
    before = params(teacher)
    assert bma.update(0.5, teacher, linear(100.0, 100.0)) is None
    assert bma.update(0.4, teacher, linear(100.0, 100.0)) is None
    assert params(teacher) == before and bma.pool == [0.6, 0.5]
    # a better one replaces the worst entry; the pool stays at its size
    assert bma.update(0.55, teacher, student2) == pytest.approx(1 - 0.05 / 0.55)
    assert bma.pool == [0.6, 0.55]


def test_bma_pool_not_full_accepts_any_score_and_alpha_is_capped():
    bma = BestModelAverage(pool_size=3, max_alpha=0.9)
    teacher, student = linear(0.0, 0.0), linear(1.0, 1.0)
    bma.update(0.5, teacher, student)
    # a worse score still enters a pool that is not full; 1 - (0.4-0.5)/0.4 = 1.25 -> capped
    assert bma.update(0.4, teacher, linear(3.0, 3.0)) == pytest.approx(0.9)
    assert params(teacher) == pytest.approx([0.9 * 1 + 0.1 * 3] * 2)
    assert bma.pool == [0.5, 0.4]
    # a non-positive score uses max_alpha instead of dividing by it
    assert bma.update(0.0, teacher, student) == pytest.approx(0.9)
    assert bma.pool == [0.5, 0.4, 0.0]


def test_bma_state_round_trip():
    bma = BestModelAverage(pool_size=2)
    bma.update(0.7, linear(0, 0), linear(1, 1))
    other = BestModelAverage(pool_size=2)
    other.load(bma.state())
    assert other.pool == [0.7] and other.started is True
    assert bma.state() == {"pool": [0.7], "started": True}


def test_blend_mixes_float_state_and_copies_integer_buffers():
    teacher, student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
        teacher.running_mean.fill_(2.0)
        student.running_mean.fill_(4.0)
    student.num_batches_tracked.fill_(7)
    blend_(teacher, student, 0.25)
    assert torch.allclose(teacher.weight, torch.full((2,), 0.25 * 1 + 0.75 * 3))
    assert torch.allclose(teacher.running_mean, torch.full((2,), 0.25 * 2 + 0.75 * 4))
    assert int(teacher.num_batches_tracked) == 7
    assert torch.all(student.weight == 3.0)  # the student is never changed


def test_frozen_copy_is_independent_and_gradient_free():
    net = linear(2.0, 1.0)
    copy = frozen_copy(net)
    assert all(not p.requires_grad for p in copy.parameters())
    assert all(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        net.weight.fill_(5.0)
    assert params(copy) == [2.0, 1.0]


# --------------------------------------------------------------------------- MC soft labels
class Identity(nn.Module):
    def forward(self, x):
        return x


def test_mc_soft_labels_without_noise_is_the_sigmoid_mean():
    x = torch.linspace(-3, 3, 16).reshape(1, 1, 4, 4)
    out = mc_soft_labels(Identity(), x, samples=3, noise_std=0.0, noise_clip=0.2)
    assert torch.allclose(out, torch.sigmoid(x), atol=1e-6)


def test_mc_soft_labels_noise_is_clipped_and_applied():
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 8, 8)
    out = mc_soft_labels(Identity(), x, samples=1, noise_std=10.0, noise_clip=0.2)
    # |noise| <= clip, and a std of 10 saturates almost every draw at +-clip
    assert out.min() >= torch.sigmoid(torch.tensor(-0.2)) - 1e-6
    assert out.max() <= torch.sigmoid(torch.tensor(0.2)) + 1e-6
    assert ((out - 0.5).abs() > 0.04).float().mean() > 0.9


def test_mc_soft_labels_uses_dropout_and_restores_modes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(1))
    net.eval()
    x = torch.ones(1, 1, 16, 16)
    out = mc_soft_labels(net, x, samples=1, noise_std=0.0, noise_clip=0.0)
    # eval BatchNorm (identity at init) after active dropout: sigmoid(0) or sigmoid(2) per pixel
    values = set(round(v, 4) for v in out.flatten().tolist())
    assert values == {round(0.5, 4), round(1 / (1 + math.exp(-2.0)), 4)}
    assert not net.training and not net[0].training and not net[1].training
    assert net[1].num_batches_tracked == 0  # BatchNorm ran in eval mode


# --------------------------------------------------------------------------- Semi-CML stage 1
def test_semicml_loss_is_sum_of_supervised_plus_weighted_asc_and_ramped_mse():
    """Catches a dropped ASC term, a wrong weight and a wrong ramp."""
    m = make(SemiCML, semicml={"mse_rampup_epochs": 4.0, "mse_weight": 2.0})
    batch = make_batch()
    it = 4  # epoch 2 of a 4-epoch ramp: w = 2 exp(-5 (1/2)^2)
    losses = m.semicml_losses(batch, it)
    x = torch.cat([batch["images_l"], batch["images_u"]])
    y = (batch["label_l"] > 0).float().unsqueeze(1)
    logits = [m.students[str(i)](x[:, i:i + 1]) for i in range(2)]
    sup = [supervised_loss(lg[:2], y) for lg in logits]
    probs_u = [torch.sigmoid(lg[2:]) for lg in logits]
    asc = multi_asc_loss(probs_u)
    mse = mutual_mse(*probs_u)
    w = 2.0 * math.exp(-5 * 0.25)
    assert sigmoid_rampup(it / 2.0, 4.0) * 2.0 == pytest.approx(w)
    assert losses["sup/T2"].item() == pytest.approx(sup[0].item(), rel=1e-5)
    assert losses["sup/T1ce"].item() == pytest.approx(sup[1].item(), rel=1e-5)
    assert losses["asc"].item() == pytest.approx(asc.item(), rel=1e-5)
    assert losses["mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert asc.item() > 0.1 and mse.item() > 1e-4  # non-trivial terms: a dropped one would show
    expected = sup[0] + sup[1] + 3.5 * asc + w * mse
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(losses) == {"sup/T2", "sup/T1ce", "asc", "mse", "loss"}


def test_semicml_asc_gradient_reaches_both_students_and_no_teacher():
    m = make(SemiCML)
    m.semicml_losses(make_batch(), 0)["asc"].backward()
    for i in ("0", "1"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.students[i].parameters())
        assert all(p.grad is None for p in m.teachers[i].parameters())


def test_semicml_mse_weight_follows_the_ramp_over_epochs():
    m = make(SemiCML, semicml={"mse_rampup_epochs": 10.0})
    batch = make_batch()
    early, late = m.semicml_losses(batch, 2), m.semicml_losses(batch, 20)  # epochs 1 and 10
    for losses, epoch in ((early, 1.0), (late, 10.0)):
        rest = losses["sup/T2"] + losses["sup/T1ce"] + 3.5 * losses["asc"]
        w = sigmoid_rampup(epoch, 10.0)
        assert losses["loss"].item() == pytest.approx((rest + w * losses["mse"]).item(), rel=1e-5)


@pytest.mark.parametrize("cls, keys", [(SemiCMLMSEOnly, {"mse"}), (SemiCMLASCOnly, {"asc"}), (SemiCML, {"asc", "mse"})])
def test_ablations_switch_exactly_one_term(cls, keys):
    losses = make(cls).semicml_losses(make_batch(), 3)
    assert {k for k in losses if k in ("asc", "mse")} == keys


def test_cosine_ablation_uses_cosine_similarity():
    m = make(SemiCMLCosine)
    batch = make_batch()
    losses = m.semicml_losses(batch, 0)
    x = batch["images_u"]
    probs = [torch.sigmoid(m.students[str(i)](x[:, i:i + 1])) for i in range(2)]
    assert losses["asc"].item() == pytest.approx(multi_asc_loss(probs, similarity="cosine").item(), rel=1e-5)
    assert losses["asc"].item() != pytest.approx(multi_asc_loss(probs, similarity="dice").item(), rel=1e-3)


def test_semicml_needs_two_modalities_and_is_registered():
    assert get_method("semicml") is SemiCML and get_method("semicml-prel") is SemiCMLPReL
    assert {"semicml-mse-only", "semicml-asc-only", "semicml-cosine", "prel"} <= set(METHODS)
    assert SemiCML.multi_modal
    ctx = make(SemiCML).ctx
    ctx.modalities = ["T2"]
    with pytest.raises(ValueError, match="two modalities"):
        SemiCML(ctx)
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("no-such-method")


def test_students_train_without_dropout_teachers_keep_theirs():
    m = make(SemiCML)
    drops = lambda net: [mod for mod in net.modules() if isinstance(mod, nn.Dropout)]  # noqa: E731
    assert drops(m.students["0"]) and not any(d.training for d in drops(m.students["0"]))
    assert all(d.training for d in drops(m.teachers["0"]))
    assert m.students["0"].training  # the rest is in train mode
    kept = make(SemiCML, model={"base_width": 4, "levels": 2, "student_dropout": True})
    assert all(d.training for d in drops(kept.students["1"]))


# --------------------------------------------------------------------------- BMA during training
def test_bma_offered_only_after_bma_from_and_frozen_once_prel_starts():
    m = make(SemiCMLPReL, total=10, prel={"start_fraction": 0.5, "bma_from": 0.2, "pool_size": 6})
    assert m.start_iteration == 5 and m.phase(4) == "semicml" and m.phase(5) == "prel"
    m.on_validation(1, {"T2": 0.9, "T1ce": 0.9})  # progress 0.1 < bma_from
    assert m.bma["0"].pool == [] and m.best_val == {"T2": 0.9, "T1ce": 0.9}
    m.on_validation(2, {"T2": 0.3, "T1ce": 0.2})
    assert m.bma["0"].pool == [0.3] and m.bma["1"].pool == [0.2]
    m.on_validation(5, {"T2": 0.4})  # the boundary still scores the end of stage 1
    assert m.bma["0"].pool == [0.4, 0.3] and m.bma["1"].pool == [0.2]
    frozen = params(m.teachers["0"])
    with torch.no_grad():
        for p in m.students["0"].parameters():
            p.add_(1.0)
    m.on_validation(6, {"T2": 0.95, "T1ce": 0.95})
    assert m.bma["0"].pool == [0.4, 0.3] and params(m.teachers["0"]) == frozen
    assert m.best_val == {"T2": 0.95, "T1ce": 0.95}


def test_semicml_alone_keeps_offering_to_bma():
    m = make(SemiCML, total=10, prel={"bma_from": 0.2})
    assert not m.offer_to_bma(1) and m.offer_to_bma(2) and m.offer_to_bma(9)


def test_extra_state_round_trip():
    m = make(SemiCMLPReL, total=10, prel={"start_fraction": 0.5, "bma_from": 0.0})
    m.on_validation(0, {"T2": 0.3, "T1ce": 0.6})
    m.teacher_index = m.choose_teacher()
    state = m.extra_state()
    fresh = make(SemiCMLPReL, total=10, prel={"start_fraction": 0.5, "bma_from": 0.0})
    fresh.load_extra_state(state)
    assert fresh.teacher_index == 1 and fresh.best_val == {"T2": 0.3, "T1ce": 0.6}
    assert fresh.bma["1"].pool == [0.6] and fresh.bma["1"].started
    assert fresh.ctx.info["teacher"]["modality"] == "T1ce"
    none = make(SemiCMLPReL).extra_state()
    assert none["teacher_index"] == -1
    again = make(SemiCMLPReL)
    again.load_extra_state(none)
    assert again.teacher_index is None


def test_compile_option_compiles_every_network_the_method_builds():
    """cfg.compile: each network (students, and the teachers copied from them) is the module
    new_network built, compiled in place (same object, same state_dict keys)."""
    built = []

    def new_network() -> nn.Module:
        built.append(UNet2D(1, 1, widths=(4, 8, 16), dropout=(0.05, 0.1, 0.2)))
        return built[-1]

    ctx = MethodContext(cfg=TrainConfig(compile=True), modalities=list(MODS), out_channels=1, total_iterations=10,
                        iterations_per_epoch=2, device=torch.device("cpu"), new_network=new_network)
    net = ctx.new_network()
    assert net is built[-1] and net._compiled_call_impl is not None
    plain = MethodContext(cfg=TrainConfig(), modalities=list(MODS), out_channels=1, total_iterations=10,
                          iterations_per_epoch=2, device=torch.device("cpu"), new_network=new_network)
    assert plain.new_network is new_network and plain.new_network()._compiled_call_impl is None


def test_forward_is_the_train_step(monkeypatch):
    method = make(SemiCML)
    calls = []
    monkeypatch.setattr(method, "train_step", lambda batch, it: calls.append((batch, it)) or {"loss": it})
    batch = {"images_l": torch.zeros(1)}
    assert method(batch, 7) == {"loss": 7} and calls == [(batch, 7)]
