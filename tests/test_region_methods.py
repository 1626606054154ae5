"""Region targets in the methods (issue 11): per-channel targets and losses, ASC over all channels
or per channel, PReL soft labels and the per-region teacher choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semicml.config import TrainConfig
from semicml.losses import asc_loss, prel_loss
from semicml.methods import get_method
from semicml.methods.base import MethodContext
from semicml.methods.prel import SemiCMLPReL
from semicml.methods.teachers import mc_soft_labels
from semicml.models import UNet2D

REGIONS = ["wt", "tc", "et"]
PC = "joint"  # the default semicml.asc_channels


def make_regions(cls, mods=("T2", "T1ce"), total: int = 10, **cfg):
    torch.manual_seed(0)
    cfg.setdefault("model", {"base_width": 4, "levels": 2})
    ctx = MethodContext(cfg=TrainConfig(**cfg), modalities=list(mods), out_channels=3, total_iterations=total,
                        iterations_per_epoch=2.0, device=torch.device("cpu"), regions=list(REGIONS),
                        new_network=lambda: UNet2D(1, 3, widths=(4, 8, 16), dropout=(0.05, 0.1, 0.2)))
    method = cls(ctx)
    method.train()
    return method


def region_batch(n_mods: int = 2, n_lab: int = 2, n_unl: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    label = torch.zeros(n_lab, 32, 32, dtype=torch.int64)
    label[:, 6:26, 6:26] = 0b001  # oedema: wt only
    label[:, 10:22, 10:22] = 0b111  # enhancing: wt, tc, et
    label[:, 14:18, 14:18] = 0b011  # necrosis: wt, tc
    return {"images_l": torch.randn(n_lab, n_mods, 32, 32, generator=g), "label_l": label,
            "images_u": torch.randn(n_unl, n_mods, 32, 32, generator=g)}


def test_target_decodes_one_channel_per_region_bit():
    m = make_regions(get_method("supervised"))
    label = torch.tensor([[[0, 1, 3, 7]]])
    y = m.target(label)
    assert y.shape == (1, 3, 1, 4) and y.dtype == torch.float32
    assert y[0, :, 0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]


def test_asc_joint_is_one_map_of_all_channels_and_per_channel_is_the_mean():
    g = torch.Generator().manual_seed(3)
    scale = torch.tensor([1.0, 0.3, 0.02]).view(1, 3, 1, 1)  # a large wt, a small et: the modes differ
    a, b = torch.rand(4, 3, 8, 8, generator=g) * scale, torch.rand(4, 3, 8, 8, generator=g) * scale
    # joint: the channels of a map are one long map (reference: the channels laid side by side)
    side = asc_loss(a.permute(0, 2, 1, 3).reshape(4, 1, 8, 24), b.permute(0, 2, 1, 3).reshape(4, 1, 8, 24))
    assert asc_loss(a, b).item() == pytest.approx(side.item(), rel=1e-6)
    per = [asc_loss(a[:, c : c + 1], b[:, c : c + 1]).item() for c in range(3)]
    assert asc_loss(a, b, channels="per-channel").item() == pytest.approx(sum(per) / 3, rel=1e-6)
    one = a[:, :1], b[:, :1]
    assert asc_loss(*one, channels="per-channel").item() == asc_loss(*one).item()
    with pytest.raises(ValueError, match="channels must be one of"):
        asc_loss(a, b, channels="mean")


@pytest.mark.parametrize("mode", ["joint", "per-channel"])
def test_semicml_uses_the_configured_asc_channels(mode):
    m = make_regions(get_method("semicml"), semicml={"asc_channels": mode, "mse_weight": 0.0})
    batch = region_batch()
    losses = m.train_step(batch, 0)
    x = torch.cat([batch["images_l"], batch["images_u"]])  # one pass, as the method (BatchNorm)
    with torch.no_grad():
        p = [torch.sigmoid(m.students[str(i)](x[:, i : i + 1]))[2:] for i in range(2)]
    assert losses["asc"].item() == pytest.approx(asc_loss(*p, channels=mode).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["supervised", "mean-teacher", "uamt", "cps", "semicml", "semicml-prel"])
def test_every_method_trains_every_region_channel(name):
    """Every loss sees all three channels: gradient reaches each region's output filter."""
    m = make_regions(get_method(name), total=4, prel={"start_fraction": 0.5, "mc_samples": 1,
                                                           "refine_teacher_from": 0.0})
    if name == "semicml-prel":
        m.best_val = {"T2": 0.5, "T1ce": 0.4}
    losses = m.train_step(region_batch(), 3 if name == "semicml-prel" else 0)
    losses["loss"].backward()
    for key, net in m.students.items():
        head = [mod for mod in net.modules() if isinstance(mod, nn.Conv2d)][-1]
        assert head.out_channels == 3
        per_channel = head.weight.grad.abs().flatten(1).sum(1)
        assert (per_channel > 0).all(), (name, key, per_channel)


class Channels(nn.Module):
    """Region stub: channel c = w_c x + b_c; remembers its inputs."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(b))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.w.view(1, -1, 1, 1) * x + self.b.view(1, -1, 1, 1)


def stub(semicml: dict | None = None, **prel):
    m = make_regions(SemiCMLPReL, prel={"noise_std": 0.0, "mc_samples": 2, "teacher_per_region": True, **prel},
                     semicml=semicml or {})
    m.students = nn.ModuleDict({"0": Channels([1.0, 2.0, 3.0], [0.0, 0.1, 0.2]),
                                "1": Channels([-1.0, 0.5, 2.0], [0.3, 0.0, -0.1])})
    m.teachers = nn.ModuleDict({"0": Channels([3.0, 1.0, -1.0], [0.0, 0.5, 0.0]),
                                "1": Channels([0.5, -2.0, 1.5], [-1.0, 0.2, 0.4])})
    return m


def test_per_region_teacher_is_the_best_modality_of_each_region_and_recorded():
    m = stub()
    m.best_val = {"T2": 0.6, "T1ce": 0.5}
    m.best_val_regions = {"T2": {"wt": 0.9, "tc": 0.4, "et": 0.3}, "T1ce": {"wt": 0.7, "tc": 0.5, "et": 0.6}}
    assert m.choose_teacher() == 0 and m.region_teachers == [0, 1, 1]
    info = m.ctx.info["teacher"]
    assert info["per_region"] == {"wt": "T2", "tc": "T1ce", "et": "T1ce"}
    assert info["per_region_chosen_by"] == "validation, per region"
    assert info["val_dice_per_region_after_stage1"] == m.best_val_regions
    # the option off and a named teacher keep one teacher for all regions
    for cfg in ({"teacher_per_region": False}, {"teacher": "T1ce"}):
        one = stub(**cfg)
        one.best_val, one.best_val_regions = dict(m.best_val), dict(m.best_val_regions)
        index = one.choose_teacher()
        assert one.region_teachers is None and one.ctx.info["teacher"]["per_region"] == {r: MODS2[index]
                                                                                         for r in REGIONS}
        assert one.ctx.info["teacher"]["per_region_chosen_by"] == "one teacher"


MODS2 = ["T2", "T1ce"]


def test_per_region_soft_labels_come_from_each_regions_teacher():
    """Each channel's soft label is its own teacher's; a network re-learns only the channels
    another modality teaches until refine_teacher_from."""
    m = stub(refine_teacher_from=0.5)
    m.teacher_index, m.region_teachers = 0, [0, 1, 1]
    batch = region_batch()
    x = torch.cat([batch["images_l"], batch["images_u"]])
    losses = m.prel_losses(batch, 0)
    t0, t1 = m.teachers["0"], m.teachers["1"]
    assert len(t0.seen) == 2 and all(torch.equal(s, x[:, 0:1]) for s in t0.seen)
    assert len(t1.seen) == 2 and all(torch.equal(s, x[:, 1:2]) for s in t1.seen)
    soft0 = torch.sigmoid(t0.w.detach().view(1, -1, 1, 1) * x[:, 0:1] + t0.b.detach().view(1, -1, 1, 1))
    soft1 = torch.sigmoid(t1.w.detach().view(1, -1, 1, 1) * x[:, 1:2] + t1.b.detach().view(1, -1, 1, 1))
    soft = torch.cat([soft0[:, :1], soft1[:, 1:]], dim=1)

    def logits(i):
        s = m.students[str(i)]
        return s.w.detach().view(1, -1, 1, 1) * x[:, i : i + 1] + s.b.detach().view(1, -1, 1, 1)

    # T2 teaches wt: T2's network learns tc and et; T1ce teaches tc, et: T1ce's network learns wt
    assert losses["prel/T2"].item() == pytest.approx(prel_loss(logits(0)[:, 1:], soft[:, 1:], asc_channels=PC).item(), rel=1e-5)
    assert losses["prel/T1ce"].item() == pytest.approx(prel_loss(logits(1)[:, :1], soft[:, :1], asc_channels=PC).item(), rel=1e-5)
    late = m.prel_losses(batch, 5)  # from refine_teacher_from: every channel
    assert late["prel/T2"].item() == pytest.approx(prel_loss(logits(0), soft, asc_channels=PC).item(), rel=1e-5)
    # one teacher for all regions: the teacher's network rests until refine_teacher_from (as binary)
    m.region_teachers = None
    assert set(m.prel_losses(batch, 0)) == {"prel/T1ce", "loss"}


def test_mc_soft_labels_keep_every_channel():
    net = Channels([1.0, -1.0, 0.0], [0.0, 0.0, 5.0])
    x = torch.randn(2, 1, 4, 4)
    soft = mc_soft_labels(net, x, samples=3, noise_std=0.0, noise_clip=0.2)
    assert soft.shape == (2, 3, 4, 4)
    torch.testing.assert_close(soft[:, 1:2], torch.sigmoid(-x))


def test_region_defaults_are_the_ones_chosen_on_validation():
    """docs/method-notes.md, "Region targets": joint ASC and a teacher per region."""
    cfg = TrainConfig()
    assert cfg.semicml.asc_channels == "joint" and cfg.prel.teacher_per_region is True


def test_per_region_teachers_and_validation_survive_a_checkpoint():
    """A resumed run must keep the per-region teachers and the per-region validation they were
    chosen from (extra_state -> checkpoint -> load_extra_state of a fresh method)."""
    m = stub()
    m.best_val = {"T2": 0.6, "T1ce": 0.5}
    m.best_val_regions = {"T2": {"wt": 0.9, "tc": 0.4, "et": 0.3}, "T1ce": {"wt": 0.7, "tc": 0.5, "et": 0.6}}
    m.teacher_index = m.choose_teacher()
    state = m.extra_state()
    assert state["region_teachers"] == [0, 1, 1] and state["best_val_regions"] == m.best_val_regions
    fresh = stub()
    assert fresh.region_teachers is None and fresh.best_val_regions == {}
    fresh.load_extra_state(state)
    assert fresh.teacher_index == 0 and fresh.region_teachers == [0, 1, 1]
    assert fresh.best_val_regions == m.best_val_regions
    fresh.best_val_regions["T2"]["wt"] = 0.0  # a copy, not the saved dictionaries themselves
    assert state["best_val_regions"]["T2"]["wt"] == 0.9


def test_prel_uses_the_configured_asc_channels():
    """PReL's ASC term follows semicml.asc_channels like stage 1 (per-channel differs from joint here)."""
    m = stub(semicml={"asc_channels": "per-channel"})
    m.teacher_index, m.region_teachers = 0, [0, 0, 0]
    batch = region_batch()
    x = torch.cat([batch["images_l"], batch["images_u"]])
    loss = m.prel_losses(batch, 0)["prel/T1ce"].item()
    t0, s1 = m.teachers["0"], m.students["1"]
    soft = torch.sigmoid(t0.w.detach().view(1, -1, 1, 1) * x[:, 0:1] + t0.b.detach().view(1, -1, 1, 1))
    logits = s1.w.detach().view(1, -1, 1, 1) * x[:, 1:2] + s1.b.detach().view(1, -1, 1, 1)
    per = prel_loss(logits, soft, asc_channels="per-channel").item()
    joint = prel_loss(logits, soft, asc_channels="joint").item()
    assert abs(per - joint) > 1e-5 * abs(per)  # the ASC term is a small part of the loss here
    assert abs(loss - per) < 0.05 * abs(per - joint)


def test_stage1_validation_keeps_the_best_dice_of_each_region_per_modality():
    m = make_regions(get_method("semicml"))
    m.on_validation(0, {"T2": 0.5, "T1ce": 0.4}, {"T2": {"wt": 0.6, "tc": 0.2}, "T1ce": {"wt": 0.3}})
    m.on_validation(1, {"T2": 0.4, "T1ce": 0.6}, {"T2": {"wt": 0.5, "tc": 0.3}, "T1ce": {"wt": 0.1, "et": 0.2}})
    assert m.best_val == {"T2": 0.5, "T1ce": 0.6}
    assert m.best_val_regions == {"T2": {"wt": 0.6, "tc": 0.3}, "T1ce": {"wt": 0.3, "et": 0.2}}
    binary = make_regions(get_method("semicml"))
    binary.on_validation(0, {"T2": 0.5, "T1ce": 0.4})  # no region Dice: nothing recorded per region
    assert binary.best_val_regions == {}


@pytest.mark.parametrize("shape", [(4, 2, 8, 8), (4, 3, 1, 8)])  # two channels; maps one row high
def test_per_channel_asc_passes_its_similarity_and_temperature_to_every_channel(shape):
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)
    for similarity, tau in (("dice", 1.0), ("cosine", 0.3)):
        kw = dict(similarity=similarity, temperature=tau)
        per = [asc_loss(a[:, c : c + 1], b[:, c : c + 1], **kw).item() for c in range(shape[1])]
        got = asc_loss(a, b, channels="per-channel", **kw).item()
        assert got == pytest.approx(sum(per) / len(per), rel=1e-6)
        assert abs(got - asc_loss(a, b, **kw).item()) > 1e-4  # not the joint loss
