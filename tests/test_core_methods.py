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
from semicml.losses import multi_asc_loss, mutual_mse, prel_loss, sigmoid_rampup, supervised_loss
from semicml.methods import METHODS, get_method
from semicml.methods.base import MethodContext
from semicml.methods.prel import PReL, SemiCMLPReL
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


# --------------------------------------------------------------------------- teacher choice
def test_choose_teacher_is_the_best_validation_modality():
    """Catches the teacher chosen as the WORST modality."""
    for scores, index in (({"T2": 0.3, "T1ce": 0.6}, 1), ({"T2": 0.7, "T1ce": 0.6}, 0)):
        m = make(SemiCMLPReL)
        m.best_val = dict(scores)
        assert m.choose_teacher() == index
        info = m.ctx.info["teacher"]
        assert info == {"modality": MODS[index], "chosen_by": "validation", "val_dice_after_stage1": scores}


def test_choose_teacher_by_name_case_insensitive_and_errors():
    m = make(SemiCMLPReL, prel={"teacher": "t1CE"})
    m.best_val = {"T2": 0.9, "T1ce": 0.1}
    assert m.choose_teacher() == 1 and m.ctx.info["teacher"]["chosen_by"] == "user"
    with pytest.raises(ConfigError, match="not a trained modality"):
        make(SemiCMLPReL, prel={"teacher": "FLAIR"}).choose_teacher()
    with pytest.raises(ConfigError, match="no validation score"):
        make(SemiCMLPReL).choose_teacher()


def test_choose_teacher_starts_never_validated_teachers_from_the_students():
    m = make(SemiCMLPReL)
    with torch.no_grad():
        for p in m.students["1"].parameters():
            p.add_(0.5)
    m.best_val = {"T2": 0.2, "T1ce": 0.4}
    m.choose_teacher()
    assert params(m.teachers["1"]) == params(m.students["1"])
    assert all(b.started for b in m.bma.values())


# --------------------------------------------------------------------------- PReL stage 2
class Recorder(nn.Module):
    """y = w x + b with a learnable w, b; remembers its last input."""

    def __init__(self, w: float, b: float = 0.0):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(b))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.w * x + self.b


def stub_prel(teacher_index: int, iteration_total: int = 10, **prel):
    cfg = {"noise_std": 0.0, "mc_samples": 2, **prel}
    m = make(SemiCMLPReL, total=iteration_total, prel=cfg)
    m.students = nn.ModuleDict({"0": Recorder(1.0), "1": Recorder(-2.0, 0.5)})
    m.teachers = nn.ModuleDict({"0": Recorder(3.0), "1": Recorder(0.5, -1.0)})
    m.teacher_index = teacher_index
    return m


@pytest.mark.parametrize("t", [0, 1])
def test_prel_students_see_their_own_modality_and_learn_the_teachers_soft_labels(t):
    """Catches the weaker students fed the TEACHER's modality instead of their own."""
    m = stub_prel(t, refine_teacher_from=0.0)
    batch = make_batch()
    losses = m.prel_losses(batch, 9)
    x = torch.cat([batch["images_l"], batch["images_u"]])
    for i in (0, 1):
        assert len(m.students[str(i)].seen) == 1
        assert torch.equal(m.students[str(i)].seen[0], x[:, i:i + 1])
    teacher = m.teachers[str(t)]
    assert all(torch.equal(seen, x[:, t:t + 1]) for seen in teacher.seen) and len(teacher.seen) == 2
    assert not m.teachers[str(1 - t)].seen
    soft = torch.sigmoid(teacher.w.detach() * x[:, t:t + 1] + teacher.b.detach())
    for i, mod in enumerate(MODS):
        logits = m.students[str(i)].w.detach() * x[:, i:i + 1] + m.students[str(i)].b.detach()
        assert losses[f"prel/{mod}"].item() == pytest.approx(prel_loss(logits, soft, alpha=0.1).item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((losses["prel/T2"] + losses["prel/T1ce"]).item(), rel=1e-6)
    assert not any(k.startswith("sup/") for k in losses)
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in m.students.parameters())
    assert all(p.grad is None for p in m.teachers.parameters())


def test_prel_refines_the_teacher_modality_only_from_refine_teacher_from():
    m = stub_prel(0, refine_teacher_from=0.5)
    assert m.refines(1, 0) and not m.refines(0, 4) and m.refines(0, 5)
    assert set(m.prel_losses(make_batch(), 4)) == {"prel/T1ce", "loss"}
    assert set(m.prel_losses(make_batch(), 5)) == {"prel/T2", "prel/T1ce", "loss"}
    off = stub_prel(0, refine_teacher_from=0.0, refine_teacher_modality=False)
    assert not off.refines(0, 9) and off.refines(1, 0)


def test_prel_keep_supervised_adds_the_labelled_loss_per_refined_modality():
    m = stub_prel(1, refine_teacher_from=0.9, keep_supervised=True)
    batch = make_batch()
    losses = m.prel_losses(batch, 0)
    assert set(losses) == {"prel/T2", "sup/T2", "loss"}
    x = batch["images_l"][:, 0:1]
    y = (batch["label_l"] > 0).float().unsqueeze(1)
    assert losses["sup/T2"].item() == pytest.approx(supervised_loss(x * 1.0, y).item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((losses["prel/T2"] + losses["sup/T2"]).item(), rel=1e-6)


def test_train_step_switches_stage_and_chooses_the_teacher_once():
    m = make(SemiCMLPReL, total=10, prel={"start_fraction": 0.5, "mc_samples": 1})
    batch = make_batch()
    assert "asc" in m.train_step(batch, 4) and m.teacher_index is None
    m.best_val = {"T2": 0.1, "T1ce": 0.8}
    losses = m.train_step(batch, 5)
    assert m.teacher_index == 1 and "prel/T2" in losses and "asc" not in losses
    m.best_val = {"T2": 0.9, "T1ce": 0.8}  # no re-choice once made
    m.train_step(batch, 6)
    assert m.teacher_index == 1


def test_prel_alone_needs_init_and_starts_at_zero():
    with pytest.raises(ConfigError, match="--init"):
        make(PReL)
    m = make(PReL, init="somewhere")
    assert m.start_iteration == 0 and m.phase(0) == "prel" and PReL.continues_schedule


def test_predictors_and_trainable_parameters_are_the_students():
    m = make(SemiCMLPReL)
    assert m.predictors() == {"T2": m.students["0"], "T1ce": m.students["1"]}
    ids = {id(p) for p in m.trainable_parameters()}
    assert ids == {id(p) for p in m.students.parameters()}
    assert not ids & {id(p) for p in m.teachers.parameters()}


def test_semicml_train_step_is_the_stage_one_loss():
    m = make(SemiCML)
    batch = make_batch()
    a, b = m.train_step(batch, 3), m.semicml_losses(batch, 3)
    assert set(a) == set(b) and all(a[k].item() == pytest.approx(b[k].item(), rel=1e-6) for k in a)


def test_error_messages_name_the_problem_exactly():
    with pytest.raises(ConfigError, match=r"^method 'prel' needs --init RUN \(a finished semicml run to start from\)$"):
        make(PReL)
    with pytest.raises(ConfigError, match=r"^unknown method 'x' \(choose from [a-z-]+(, [a-z0-9%-]+)+\)$") as err:
        get_method("x")
    assert ", ".join(sorted(METHODS)) in str(err.value)


def test_prel_loss_uses_the_configured_weights_similarity_temperature_and_reduction():
    cfg = dict(alpha=0.3)
    m = stub_prel(0, refine_teacher_from=0.0, **cfg)
    m.cfg.semicml.bce_weight, m.cfg.semicml.dice_weight = 2.0, 5.0
    m.cfg.semicml.similarity, m.cfg.semicml.temperature, m.cfg.semicml.dice_reduction = "cosine", 0.5, "slice"
    batch = make_batch()
    losses = m.prel_losses(batch, 9)
    x = torch.cat([batch["images_l"], batch["images_u"]])
    soft = torch.sigmoid(3.0 * x[:, 0:1])
    logits = -2.0 * x[:, 1:2] + 0.5
    expected = prel_loss(logits, soft, alpha=0.3, bce_weight=2.0, dice_weight=5.0, similarity="cosine",
                         temperature=0.5, dice_reduction="slice")
    assert losses["prel/T1ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() != pytest.approx(prel_loss(logits, soft).item(), rel=1e-3)


@pytest.mark.parametrize("n_lab", [0, 1, 3])
def test_prel_keep_supervised_on_the_labelled_slices_only(n_lab):
    m = stub_prel(1, refine_teacher_from=0.9, keep_supervised=True)
    batch = make_batch(n_lab=max(n_lab, 1))
    if n_lab == 0:
        batch["images_l"], batch["label_l"] = batch["images_l"][:0], batch["label_l"][:0]
    losses = m.prel_losses(batch, 0)
    assert ("sup/T2" in losses) == (n_lab > 0)
    if n_lab:
        y = (batch["label_l"] > 0).float().unsqueeze(1)
        assert losses["sup/T2"].item() == pytest.approx(supervised_loss(batch["images_l"][:, 0:1], y).item(), rel=1e-5)


def test_state_defaults_and_best_validation_kept():
    m = make(SemiCMLPReL, prel={"bma_from": 0.0})
    assert m.extra_state()["teacher_info"] == {}
    m.on_validation(0, {"T2": 0.5})
    m.on_validation(1, {"T2": 0.3, "T1ce": 0.2})
    assert m.best_val == {"T2": 0.5, "T1ce": 0.2}
    fresh = make(SemiCMLPReL)
    fresh.load_extra_state({})  # an older checkpoint without method state
    assert fresh.teacher_index is None and fresh.best_val == {} and fresh.bma["0"].pool == []
    fresh.load_extra_state({"teacher_index": 0})
    assert fresh.teacher_index == 0


def test_semicml_reads_its_settings_from_the_config():
    m = make(SemiCML, prel={"max_alpha": 0.9, "pool_size": 3},
             semicml={"temperature": 0.5, "bce_weight": 2.0, "dice_weight": 5.0, "dice_reduction": "slice"})
    assert all(b.max_alpha == 0.9 and b.pool_size == 3 for b in m.bma.values())
    batch = make_batch(n_lab=3)
    logits, n_lab = m.forward_all(batch)
    assert n_lab == 3 and logits[0].shape == (6, 1, 32, 32)
    losses = m.semicml_losses(batch, 0)
    y = (batch["label_l"] > 0).float().unsqueeze(1)
    sup = supervised_loss(logits[0][:3], y, bce_weight=2.0, dice_weight=5.0, dice_reduction="slice")
    assert losses["sup/T2"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert m.supervised(logits[0][:3], y).item() == pytest.approx(sup.item(), rel=1e-5)
    probs = [torch.sigmoid(lg[3:]) for lg in logits]
    assert losses["asc"].item() == pytest.approx(multi_asc_loss(probs, temperature=0.5).item(), rel=1e-5)


@pytest.mark.parametrize("asc, mse, keys", [(0.0, 1.0, {"mse"}), (1.0, 0.0, {"asc"}), (1.0, 1.0, {"asc", "mse"})])
def test_zero_weights_switch_terms_off(asc, mse, keys):
    losses = make(SemiCML, semicml={"asc_weight": asc, "mse_weight": mse}).semicml_losses(make_batch(), 0)
    assert {k for k in losses if k in ("asc", "mse")} == keys


def test_three_modalities_average_every_pair():
    torch.manual_seed(0)
    ctx = MethodContext(cfg=TrainConfig(model={"base_width": 4, "levels": 2}), modalities=["A", "B", "C"],
                        out_channels=1, total_iterations=10, iterations_per_epoch=2.0, device=torch.device("cpu"),
                        new_network=lambda: UNet2D(1, 1, widths=(4, 8, 16), dropout=(0.05, 0.1, 0.2)))
    m = SemiCML(ctx)
    m.train()
    g = torch.Generator().manual_seed(2)
    batch = {"images_l": torch.randn(2, 3, 32, 32, generator=g), "label_l": torch.zeros(2, 32, 32, dtype=torch.int64),
             "images_u": torch.randn(3, 3, 32, 32, generator=g)}
    losses = m.semicml_losses(batch, 0)
    logits, n_lab = m.forward_all(batch)
    probs = [torch.sigmoid(lg[n_lab:]) for lg in logits]
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert losses["mse"].item() == pytest.approx(sum(mutual_mse(probs[a], probs[b]) for a, b in pairs).item() / 3,
                                                 rel=1e-5)
    assert set(losses) == {"sup/A", "sup/B", "sup/C", "asc", "mse", "loss"}


def test_progress_over_the_whole_schedule():
    ctx = make(SemiCML, total=1).ctx
    assert ctx.progress(1) == 1.0 and ctx.progress(0) == 0.0
    ctx.total_iterations, ctx.schedule_offset, ctx.schedule_total = 4, 6, 10
    assert ctx.progress(2) == pytest.approx(0.8)


def test_register_adds_to_the_registry():
    from semicml.methods.base import Method, register

    class Dummy(Method):
        name = "dummy-for-test"

    try:
        assert register(Dummy) is Dummy and get_method("dummy-for-test") is Dummy
    finally:
        METHODS.pop("dummy-for-test", None)


def test_bma_defaults_are_the_reference():
    bma = BestModelAverage()
    assert (bma.pool_size, bma.max_alpha, bma.pool) == (6, 0.99, []) and bma.started is False


def test_choose_teacher_with_a_missing_score_and_exact_messages():
    m = make(SemiCMLPReL)
    m.best_val = {"T1ce": 0.1}  # T2 never validated
    assert m.choose_teacher() == 1
    assert m.ctx.info["teacher"]["val_dice_after_stage1"] == {"T2": None, "T1ce": 0.1}
    with pytest.raises(ConfigError, match=r"^prel\.teacher 'FLAIR' is not a trained modality \(T2, T1ce\)$"):
        make(SemiCMLPReL, prel={"teacher": "FLAIR"}).choose_teacher()
    with pytest.raises(ConfigError, match=r"^cannot choose the PReL teacher: no validation score yet \(validate more "
                                          r"often, give a val split, or name prel\.teacher\)$"):
        make(SemiCMLPReL).choose_teacher()
