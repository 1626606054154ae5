"""Single-modality SSL baselines (mean-teacher, uamt, cps): losses, gradient flow, EMA, isolation.

The gradient tests follow USB's cautionary tale: every unsupervised term must send gradient to the
student(s) it trains, and none to a teacher or to the network that provided the pseudo-label.
"""

from __future__ import annotations

import math

import pytest
import torch

from semicml.config import TrainConfig
from semicml.losses import sigmoid_rampup, supervised_loss
from semicml.methods import get_method
from semicml.methods.base import MethodContext
from semicml.methods.cps import CPS, hard_label
from semicml.methods.mean_teacher import MeanTeacher
from semicml.methods.supervised import Supervised
from semicml.methods.uamt import UAMT, binary_entropy, masked_mse
from semicml.models import UNet2D

MODS = ["T2", "T1ce"]
TOTAL = 10


def make(cls, **cfg_overrides):
    torch.manual_seed(0)
    cfg = TrainConfig(model={"base_width": 4, "levels": 2}, **cfg_overrides)
    ctx = MethodContext(cfg=cfg, modalities=list(MODS), out_channels=1, total_iterations=TOTAL,
                        iterations_per_epoch=2, device=torch.device("cpu"),
                        new_network=lambda: UNet2D(1, 1, widths=(4, 8, 16), dropout=(0.05, 0.1, 0.2)))
    method = cls(ctx)
    method.train()
    return method


def make_batch(n_lab: int = 2, n_unl: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(n_lab, 32, 32, dtype=torch.int64)
    label[:, 8:20, 10:24] = 1
    return {"images_l": torch.randn(n_lab, 2, 32, 32, generator=g), "label_l": label,
            "images_u": torch.randn(n_unl, 2, 32, 32, generator=g)}


def grads_nonzero(net) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def grads_none(net) -> bool:
    return all(p.grad is None for p in net.parameters())


def no_dropout(method):
    for mod in method.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0


def zero(method):
    method.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- registry, shapes
@pytest.mark.parametrize("name, cls", [("mean-teacher", MeanTeacher), ("uamt", UAMT), ("cps", CPS)])
def test_registered_and_single_modal(name, cls):
    assert get_method(name) is cls
    assert cls.multi_modal is False and cls.needs_unlabeled is True


@pytest.mark.parametrize("cls, keys", [
    (MeanTeacher, ["sup/T2", "sup/T1ce", "consistency/T2", "consistency/T1ce"]),
    (UAMT, ["sup/T2", "consistency/T2", "mask_fraction/T2", "threshold/T1ce"]),
    (CPS, ["sup/T2/1", "sup/T2/2", "cps/T2/1<-2", "cps/T2/2<-1", "cps/T1ce/1<-2", "cps/T1ce/2<-1"]),
])
def test_train_step_finite_and_loss_is_weighted_sum(cls, keys):
    method = make(cls)
    it = 3
    out = method.train_step(make_batch(), it)
    for k in [*keys, "loss"]:
        assert k in out and torch.isfinite(out[k]), k
    if cls is CPS:
        w = 1.0 * sigmoid_rampup(it, 0.4 * TOTAL)
        expected = sum(out[f"sup/{m}/1"] + out[f"sup/{m}/2"] + w * (out[f"cps/{m}/1<-2"] + out[f"cps/{m}/2<-1"])
                       for m in MODS)
    else:
        w = 0.1 * sigmoid_rampup(it, 0.4 * TOTAL)
        expected = sum(out[f"sup/{m}"] + w * out[f"consistency/{m}"] for m in MODS)
    assert torch.allclose(out["loss"], expected)
    assert out["loss"].requires_grad


def test_supervised_part_matches_supervised_loss():
    method = make(CPS)
    no_dropout(method)
    batch = make_batch()
    out = method.train_step(batch, 0)
    y = (batch["label_l"] > 0).float().unsqueeze(1)
    # BatchNorm in train mode uses the statistics of the whole (labelled + unlabelled) batch.
    logits = method.students["1b"](torch.cat([batch["images_l"], batch["images_u"]])[:, 1:2])[:2]
    assert torch.allclose(out["sup/T1ce/2"], supervised_loss(logits, y, 10.0, 7.0), atol=1e-5)


# --------------------------------------------------------------------------- ramp-up weights
@pytest.mark.parametrize("cls, attr, scale", [(MeanTeacher, "consistency_weight", 0.1),
                                               (UAMT, "consistency_weight", 0.1), (CPS, "cps_weight", 1.0)])
def test_rampup_weight_formula(cls, attr, scale):
    method = make(cls)
    weight = getattr(method, attr)
    length = 0.4 * TOTAL
    assert weight(0) == pytest.approx(scale * math.exp(-5.0))  # small, not zero
    assert weight(2) == pytest.approx(scale * math.exp(-5.0 * (1 - 2 / length) ** 2))
    assert weight(4) == pytest.approx(scale) and weight(9) == pytest.approx(scale)
    assert weight(0) < weight(1) < weight(2) < weight(3) < weight(4)


@pytest.mark.parametrize("cls, key, attr", [(MeanTeacher, "consistency_weight", "consistency_weight"),
                                             (UAMT, "consistency_weight", "consistency_weight"),
                                             (CPS, "cps_weight", "cps_weight")])
def test_the_weight_in_use_is_logged(cls, key, attr):
    method = make(cls)
    out = method.train_step(make_batch(), 2)
    assert out[key].item() == pytest.approx(getattr(method, attr)(2)) and out[key].item() < 0.5 * (
        1.0 if cls is CPS else 0.1)  # still ramping up at step 2 of 10


def test_input_noise_is_gaussian_clipped_on_both_sides():
    torch.manual_seed(0)
    wide = make(MeanTeacher, mean_teacher={"noise_std": 10.0, "noise_clip": 0.2}).noisy(torch.ones(4000))
    assert wide.min().item() == pytest.approx(0.8) and wide.max().item() == pytest.approx(1.2)
    assert ((wide - 1.0).abs() < 0.19).sum() > 0  # clipped, not replaced by +-0.2
    noise = make(MeanTeacher).noisy(torch.zeros(20000))  # defaults: std 0.1 clipped at 0.2 (2 sigma)
    assert noise.abs().max().item() == pytest.approx(0.2)
    assert 0.09 < noise.std().item() < 0.1 and abs(noise.mean().item()) < 0.005


# --------------------------------------------------------------------------- MT / UA-MT teachers
@pytest.mark.parametrize("cls", [MeanTeacher, UAMT])
def test_teachers_frozen_and_not_trainable(cls):
    method = make(cls)
    assert set(method.teachers) == set(method.students) == {"0", "1"}
    assert all(not p.requires_grad for p in method.teachers.parameters())
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for p in method.students.parameters()}
    assert not trainable & {id(p) for p in method.teachers.parameters()}
    assert method.predictors() == {"T2": method.students["0"], "T1ce": method.students["1"]}


@pytest.mark.parametrize("cls", [MeanTeacher, UAMT])
def test_consistency_alone_trains_student_not_teacher(cls):
    method = make(cls)
    out = method.train_step(make_batch(), TOTAL)  # ramps complete: weight and threshold at max
    if cls is UAMT:
        assert out["mask_fraction/T2"] > 0  # otherwise the term would be trivially zero
    assert out["consistency/T2"] > 0
    out["consistency/T2"].backward()
    assert grads_nonzero(method.students["0"])
    assert grads_none(method.students["1"])  # other modality untouched
    assert grads_none(method.teachers)


@pytest.mark.parametrize("cls", [MeanTeacher, UAMT])
def test_full_loss_never_reaches_teachers_and_modalities_isolated(cls):
    method = make(cls)
    out = method.train_step(make_batch(), 5)
    out["loss"].backward()
    assert grads_nonzero(method.students["0"]) and grads_nonzero(method.students["1"])
    assert grads_none(method.teachers)
    zero(method)
    out = method.train_step(make_batch(), 5)
    (out["sup/T2"] + out["consistency/T2"]).backward()
    assert grads_nonzero(method.students["0"]) and grads_none(method.students["1"])


@pytest.mark.parametrize("cls", [MeanTeacher, UAMT])
def test_consistency_value_by_hand_without_noise_or_dropout(cls):
    """With noise and dropout off every forward is deterministic: recompute the term exactly."""
    method = make(cls, mean_teacher={"noise_std": 0.0})
    no_dropout(method)
    batch = make_batch()
    out = method.train_step(batch, TOTAL)  # threshold ln 2: the mask is not empty
    for i, m in enumerate(MODS):
        x = torch.cat([batch["images_l"], batch["images_u"]])[:, i : i + 1]
        with torch.no_grad():
            p_s = torch.sigmoid(method.students[str(i)](x))[2:]  # train-mode BN over L + U, as in the step
            p_t = torch.sigmoid(method.teachers[str(i)].eval()(x[2:]))  # this modality's own teacher
        method.teachers.train()
        if cls is MeanTeacher:
            expected = ((p_s - p_t) ** 2).mean()
        else:  # p_bar == p_t when the teacher is deterministic
            mask = (binary_entropy(p_t) < method.threshold(TOTAL)).float()
            assert mask.sum() > 0
            expected = (mask * (p_s - p_t) ** 2).sum() / mask.sum()
            assert out[f"mask_fraction/{m}"].item() == pytest.approx(mask.mean().item())
        assert out[f"consistency/{m}"].item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("iteration, alpha", [(0, 0.0), (3, 0.75), (49, 0.98), (1000, 0.99)])
def test_after_step_is_ema_with_warmup(iteration, alpha):
    method = make(MeanTeacher)
    student, teacher = method.students["1"], method.teachers["1"]
    with torch.no_grad():  # make student and teacher differ (as after an optimiser step)
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student.head.bias.fill_(2.0)
        teacher.head.bias.fill_(-1.0)
        student.encoder[0][1].running_mean.fill_(3.0)
    t_before = teacher.encoder[0][0].weight.clone()
    s_now = student.encoder[0][0].weight.clone()
    assert not torch.allclose(t_before, s_now)
    assert method.ema_alpha(iteration) == pytest.approx(alpha)
    method.after_step(iteration)
    assert torch.allclose(teacher.encoder[0][0].weight, alpha * t_before + (1 - alpha) * s_now, atol=1e-6)
    assert teacher.head.bias.item() == pytest.approx(alpha * -1.0 + (1 - alpha) * 2.0)
    assert teacher.encoder[0][1].running_mean[0].item() == pytest.approx(alpha * 0.0 + (1 - alpha) * 3.0)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_teacher_forward_leaves_teacher_state_and_mode_unchanged():
    method = make(UAMT)
    before = {k: v.clone() for k, v in method.teachers.state_dict().items()}
    s_before = method.students["0"].encoder[0][1].running_mean.clone()
    method.train_step(make_batch(), 5)
    after = method.teachers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats of the teacher not touched
    assert not torch.equal(s_before, method.students["0"].encoder[0][1].running_mean)  # student's are
    assert method.teachers.training and all(m.training for m in method.teachers.modules())


def test_predict_with_teacher_switch():
    class MTTeacherPredicts(MeanTeacher):
        predict_with_teacher = True

    method = make(MTTeacherPredicts)
    assert method.predictors() == {"T2": method.teachers["0"], "T1ce": method.teachers["1"]}


# --------------------------------------------------------------------------- UA-MT specifics
def test_uamt_threshold_ramps_from_three_quarters_ln2_to_ln2():
    method = make(UAMT)
    ln2 = math.log(2)
    assert method.threshold(0) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * ln2)
    assert method.threshold(TOTAL // 2) == pytest.approx((0.75 + 0.25 * math.exp(-5 * 0.25)) * ln2)
    assert method.threshold(TOTAL) == pytest.approx(ln2)
    values = [method.threshold(t) for t in range(TOTAL + 1)]
    assert values == sorted(values) and values[0] < values[-1]


def test_uamt_mask_fraction_and_uncertainty_bounds():
    method = make(UAMT)
    for it in (0, TOTAL):
        out = method.train_step(make_batch(), it)
        for m in MODS:
            assert 0.0 <= out[f"mask_fraction/{m}"].item() <= 1.0
            assert out[f"threshold/{m}"].item() == pytest.approx(method.threshold(it))
    x_u = make_batch()["images_u"][:, :1]
    p_bar = method.mc_mean("0", x_u)
    assert p_bar.shape == (3, 1, 32, 32) and bool(((p_bar >= 0) & (p_bar <= 1)).all())
    u = binary_entropy(p_bar)
    assert bool((u >= -1e-6).all()) and bool((u <= math.log(2) + 1e-6).all())


def test_binary_entropy_and_masked_mse_by_hand():
    p = torch.tensor([0.5, 0.0, 1.0, 0.25])
    assert torch.allclose(binary_entropy(p), torch.tensor(
        [math.log(2), 0.0, 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]), atol=1e-5)
    ps = torch.tensor([0.2, 0.9, 0.5, 0.1]).view(1, 1, 2, 2)
    pt = torch.tensor([0.4, 0.6, 0.5, 0.7]).view(1, 1, 2, 2)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    assert masked_mse(ps, pt, mask).item() == pytest.approx((0.04 + 0.09) / 2)
    assert masked_mse(ps, pt, torch.zeros_like(mask)).item() == 0.0
    # Equals SSL4MIS's binary softmax form sum(mask * sum_c d_c) / (2 sum(mask)) with 2 channels.
    two = lambda p: torch.cat([1 - p, p], dim=1)  # noqa: E731
    ssl4mis = (mask * ((two(ps) - two(pt)) ** 2).sum(1, keepdim=True)).sum() / (2 * mask.sum())
    assert masked_mse(ps, pt, mask).item() == pytest.approx(ssl4mis.item())
    # With a full mask it is Mean Teacher's plain MSE.
    assert masked_mse(ps, pt, torch.ones_like(mask)).item() == pytest.approx(((ps - pt) ** 2).mean().item())


# --------------------------------------------------------------------------- CPS
def test_cps_networks_registered_and_differently_initialised():
    method = make(CPS)
    assert set(method.students) == {"0", "1", "0b", "1b"}
    assert all("." not in k for k in method.students)
    for i in ("0", "1"):
        a, b = method.students[i].state_dict(), method.students[f"{i}b"].state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)
    assert len(method.trainable_parameters()) == 4 * len(list(method.students["0"].parameters()))
    assert method.predictors() == {"T2": method.students["0"], "T1ce": method.students["1"]}


@pytest.mark.parametrize("term, trained, source", [("cps/T2/1<-2", "0", "0b"), ("cps/T2/2<-1", "0b", "0"),
                                                   ("cps/T1ce/1<-2", "1", "1b")])
def test_cps_term_trains_only_its_own_network(term, trained, source):
    method = make(CPS)
    out = method.train_step(make_batch(), TOTAL)
    assert out[term] > 0
    out[term].backward()
    assert grads_nonzero(method.students[trained])
    assert grads_none(method.students[source])  # the pseudo-label target is detached
    others = set(method.students) - {trained, source}
    assert all(grads_none(method.students[k]) for k in others)  # other modality untouched


def test_cps_modalities_isolated():
    method = make(CPS)
    out = method.train_step(make_batch(), 5)
    sum(v for k, v in out.items() if "/T2/" in k).backward()
    assert grads_nonzero(method.students["0"]) and grads_nonzero(method.students["0b"])
    assert grads_none(method.students["1"]) and grads_none(method.students["1b"])


def test_cps_pseudo_label_is_hard_and_on_labelled_plus_unlabelled():
    z = torch.tensor([-2.0, 0.0, 0.1, 3.0], requires_grad=True)
    h = hard_label(z)
    assert h.tolist() == [0.0, 0.0, 1.0, 1.0] and not h.requires_grad
    method = make(CPS)
    no_dropout(method)  # deterministic forwards (train-mode BN uses batch statistics)
    batch = make_batch()
    out = method.train_step(batch, 5)
    x = torch.cat([batch["images_l"], batch["images_u"]])[:, :1]
    with torch.no_grad():
        z1, z2 = method.students["0"](x), method.students["0b"](x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    on_all = bce(z1, (z2 > 0).float()).item()
    on_unlabelled = bce(z1[2:], (z2[2:] > 0).float()).item()
    assert out["cps/T2/1<-2"].item() == pytest.approx(on_all, rel=1e-5)
    assert on_all != pytest.approx(on_unlabelled, rel=1e-5)


# --------------------------------------------------------------------------- supervised-only
def test_supervised_trains_each_modality_on_its_own_channel_with_the_labels_alone():
    method = make(Supervised)
    assert get_method("supervised") is Supervised and Supervised.needs_unlabeled is False
    assert Supervised.multi_modal is False
    batch = make_batch()
    batch["label_l"][0, 0, :4] = 2  # another class: the binary target is label > 0
    out = method.train_step(batch, 3)
    y = (batch["label_l"] > 0).float().unsqueeze(1)
    for i, m in enumerate(MODS):
        with torch.no_grad():
            logits = method.students[str(i)](batch["images_l"][:, i : i + 1])
        assert out[f"sup/{m}"].item() == pytest.approx(supervised_loss(logits, y, 10.0, 7.0).item(), rel=1e-5)
    assert set(out) == {"sup/T2", "sup/T1ce", "loss"}
    assert out["loss"].item() == pytest.approx(out["sup/T2"].item() + out["sup/T1ce"].item(), rel=1e-6)
    out["loss"].backward()
    assert grads_nonzero(method.students["0"]) and grads_nonzero(method.students["1"])


# --------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("cls", [MeanTeacher, UAMT, CPS])
def test_bf16_autocast_and_engine_cycle(cls):
    """The engine's order: autocast(train_step) -> backward -> optimizer.step -> after_step(it)."""
    method = make(cls)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    snapshots = []
    for it in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method.train_step(make_batch(seed=it), it)
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.after_step(it)
        snapshots.append(method.students["0"].head.weight.detach().clone())
    if cls is not CPS:  # step 0: alpha = 0 (teacher := student); step 1: alpha = 1/2
        assert not torch.equal(snapshots[0], snapshots[1])
        expected = 0.5 * snapshots[0] + 0.5 * snapshots[1]
        assert torch.allclose(method.teachers["0"].head.weight, expected, atol=1e-6)


@pytest.mark.parametrize("cls", [MeanTeacher, UAMT, CPS])
def test_empty_unlabelled_batch_gives_finite_loss(cls):
    method = make(cls)
    out = method.train_step(make_batch(n_unl=0), 5)
    assert torch.isfinite(out["loss"])
    if cls is not CPS:
        assert out["consistency/T2"].item() == 0.0
    if cls is UAMT:
        assert out["mask_fraction/T2"].item() == 0.0  # logged as 0, not the NaN mean of nothing
