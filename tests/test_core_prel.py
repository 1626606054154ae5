"""Direct tests of PReL (teacher choice, inputs per modality, refine schedule, state) and of the
settings every Semi-CML stage reads from the config. Helpers come from test_core_methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semicml.config import TrainConfig
from semicml.errors import ConfigError
from semicml.losses import multi_asc_loss, mutual_mse, prel_loss, supervised_loss
from semicml.methods import METHODS, get_method
from semicml.methods.base import MethodContext
from semicml.methods.prel import PReL, SemiCMLPReL
from semicml.methods.semicml import SemiCML
from semicml.methods.teachers import BestModelAverage
from semicml.models import UNet2D

from test_core_methods import MODS, make, make_batch, params


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
    m.cfg.semicml.bce_pos_weight = 3.0
    batch = make_batch()
    losses = m.prel_losses(batch, 9)
    x = torch.cat([batch["images_l"], batch["images_u"]])
    soft = torch.sigmoid(3.0 * x[:, 0:1])
    logits = -2.0 * x[:, 1:2] + 0.5
    expected = prel_loss(logits, soft, alpha=0.3, bce_weight=2.0, dice_weight=5.0, similarity="cosine",
                         temperature=0.5, dice_reduction="slice", pos_weight=3.0)
    assert losses["prel/T1ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() != pytest.approx(prel_loss(logits, soft).item(), rel=1e-3)
    no_pos_weight = prel_loss(logits, soft, alpha=0.3, bce_weight=2.0, dice_weight=5.0, similarity="cosine",
                              temperature=0.5, dice_reduction="slice")
    assert expected.item() != pytest.approx(no_pos_weight.item(), rel=1e-3)


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


def _shift(net: nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(by)


def test_from_best_starts_prel_from_the_best_validated_stage1_weights_and_survives_a_resume():
    """Catches PReL starting from the last weights, a copy taken on a tie or a worse score (not the
    network the trainer saved), copies that share storage with the live network, and copies lost
    in a checkpoint between the best validation and the switch."""
    m = make(SemiCMLPReL, total=10, prel={"from_best": True, "bma_from": 0.0})
    assert m.start_iteration == 6
    _shift(m.students["1"], 0.25)
    m.on_validation(2, {"T2": 0.4, "T1ce": 0.6})
    best = {k: params(m.students[k]) for k in m.students}
    for k in m.students:
        _shift(m.students[k], 1.0)  # training goes on...
    m.on_validation(4, {"T2": 0.4, "T1ce": 0.5})  # ...a tie for T2, worse for T1ce: keep the first copies
    assert {k: params(m.students[k]) for k in m.students} != best
    resumed = make(SemiCMLPReL, total=10, prel={"from_best": True, "bma_from": 0.0})
    resumed.load_extra_state(m.extra_state())  # a checkpoint before the switch
    for k in m.students:
        resumed.students[k].load_state_dict(m.students[k].state_dict())  # the trainer restores the last weights
    for method in (m, resumed):
        method.train_step(make_batch(), 6)  # the switch: teacher chosen, students reset to their best
        assert method.teacher_index == 1
        assert method.best_states == {}  # dropped after use: no dead weight in later checkpoints
        info = method.ctx.info["teacher"]["students_started_from"]
        assert info == {"T2": "best validation", "T1ce": "best validation"}
        # train_step only computes the losses (the engine steps): the parameters are the copies
        assert {k: params(method.students[k]) for k in method.students} == best


def test_lr_scale_applies_to_stage_2_only_and_to_prel_alone_throughout():
    m = make(SemiCMLPReL, total=10, prel={"lr_scale": 0.01})
    assert [m.lr_scale(i) for i in (0, 5, 6, 9)] == [1.0, 1.0, 0.01, 0.01]  # switch at round(0.63 * 10) = 6
    assert make(SemiCMLPReL, total=10).lr_scale(9) == 1.0  # default: the schedule as it is
    assert make(SemiCML, total=10, prel={"lr_scale": 0.01}).lr_scale(9) == 1.0  # no stage 2, no scale


def test_without_from_best_prel_continues_from_the_last_weights_and_keeps_no_copies():
    m = make(SemiCMLPReL, total=10, prel={"bma_from": 0.0})
    m.on_validation(2, {"T2": 0.4, "T1ce": 0.6})
    assert m.best_states == {} and "best_states" not in m.extra_state()
    for k in m.students:
        _shift(m.students[k], 1.0)
    last = {k: params(m.students[k]) for k in m.students}
    m.teacher_index = m.choose_teacher()
    assert {k: params(m.students[k]) for k in m.students} == last
    assert "students_started_from" not in m.ctx.info["teacher"]


def test_semicml_reads_its_settings_from_the_config():
    m = make(SemiCML, prel={"max_alpha": 0.9, "pool_size": 3},
             semicml={"temperature": 0.5, "bce_weight": 2.0, "dice_weight": 5.0, "dice_reduction": "slice",
                      "bce_pos_weight": 2.5})
    assert all(b.max_alpha == 0.9 and b.pool_size == 3 for b in m.bma.values())
    batch = make_batch(n_lab=3)
    logits, n_lab = m.forward_all(batch)
    assert n_lab == 3 and logits[0].shape == (6, 1, 32, 32)
    losses = m.semicml_losses(batch, 0)
    y = (batch["label_l"] > 0).float().unsqueeze(1)
    sup = supervised_loss(logits[0][:3], y, bce_weight=2.0, dice_weight=5.0, dice_reduction="slice",
                          pos_weight=2.5)
    assert sup.item() != pytest.approx(supervised_loss(logits[0][:3], y, bce_weight=2.0, dice_weight=5.0,
                                                       dice_reduction="slice").item(), rel=1e-3)
    assert losses["sup/T2"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert m.supervised(logits[0][:3], y).item() == pytest.approx(sup.item(), rel=1e-5)
    probs = [torch.sigmoid(lg[3:]) for lg in logits]
    assert losses["asc"].item() == pytest.approx(multi_asc_loss(probs, temperature=0.5).item(), rel=1e-5)


@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_bce_pos_weight_must_be_positive_and_defaults_to_the_plain_bce(bad):
    from pydantic import ValidationError

    assert TrainConfig().semicml.bce_pos_weight == 1.0
    with pytest.raises(ValidationError, match="bce_pos_weight"):
        TrainConfig(semicml={"bce_pos_weight": bad})


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
