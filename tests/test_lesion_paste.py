"""Lesion copy-paste (data/lesion_paste.py): the region, the clip to the body, the skip rule, and
the dataset's seeded, labelled-only use of it."""

from __future__ import annotations

import numpy as np
import pytest

from semicml.data.lesion_paste import PasteOptions, body_mask, paste_lesion
from semicml.data.sampler import AugmentOptions, PairedSliceDataset
from semicml.data.store import PrepareOptions, SliceStore, prepare_store


class Draws:
    """A generator stand-in: ``random()`` answers ``flip`` (>= 0.5: no mirroring), ``integers`` the rim."""

    def __init__(self, flip: float = 0.9, rim: int = 0):
        self.flip, self.rim = flip, rim

    def random(self) -> float:
        return self.flip

    def integers(self, low, high=None) -> int:
        assert self.rim < (high if high is not None else low)
        return self.rim


def pair(body_value: float = 0.0):
    """A recipient with a body (value 1 in T2, 2 in T1ce) on a background of ``body_value``, and
    a donor whose 3x3 lesion (label 2) sits at rows 4-6, columns 5-7 (images 7 and 8 there, 5 and
    6 in its other tissue)."""
    images = np.full((2, 12, 12), body_value, np.float32)
    images[0, 1:11, 1:11], images[1, 1:11, 1:11] = 1.0, 2.0
    label = np.zeros((12, 12), np.uint8)
    label[8, 2] = 1  # a recipient lesion far from the paste
    donor = np.full((2, 12, 12), body_value, np.float32)
    donor[0, 1:11, 1:11], donor[1, 1:11, 1:11] = 5.0, 6.0
    donor[0, 4:7, 5:8], donor[1, 4:7, 5:8] = 7.0, 8.0
    donor_label = np.zeros((12, 12), np.uint8)
    donor_label[4:7, 5:8] = 2
    return images, label, donor, donor_label


def test_paste_without_rim_takes_exactly_the_lesion_in_every_modality_and_the_label():
    images, label, donor, donor_label = pair()
    before = images.copy(), label.copy()
    out, out_label, pasted = paste_lesion(images, label, donor, donor_label, Draws(rim=0), PasteOptions(margin=4))
    assert pasted
    lesion = donor_label > 0
    assert np.array_equal(out_label, np.where(lesion, 2, label))  # the recipient's own lesion is kept
    assert np.all(out[0][lesion] == 7) and np.all(out[1][lesion] == 8)
    assert np.array_equal(out[:, ~lesion], images[:, ~lesion])
    assert np.array_equal(images, before[0]) and np.array_equal(label, before[1])  # inputs untouched
    assert out.dtype == np.float32 and out_label.dtype == np.uint8


def test_a_region_label_is_pasted_bit_for_bit_with_its_nested_regions():
    """Region targets store bit masks (data/targets.py: bit k = region k). The paste must carry
    the donor's values whole: a core (wt+tc+et = 7) inside oedema (wt = 1) stays nested; a paste
    that binarised the label (label > 0) would turn every region into the first."""
    from semicml.data.targets import region_masks

    images, label, donor, _ = pair()
    donor_label = np.zeros((12, 12), np.uint8)
    donor_label[4:7, 5:8] = 1  # oedema: whole tumour only
    donor_label[5, 6] = 7  # enhancing core: all three regions
    donor_label[4, 5] = 3  # non-enhancing core: wt and tc
    _, out_label, pasted = paste_lesion(images, label, donor, donor_label, Draws(rim=0), PasteOptions(margin=4))
    assert pasted
    lesion = donor_label > 0
    assert np.array_equal(out_label[lesion], donor_label[lesion])
    masks = region_masks(out_label[None], 3)  # (3 regions, 1, H, W)
    assert [int(m.sum()) for m in masks] == [9 + 1, 2, 1]  # the recipient's own lesion (label 1) adds to wt


def test_the_rim_is_the_donors_tissue_within_that_many_pixels_of_its_lesion():
    images, label, donor, donor_label = pair()
    out, out_label, _ = paste_lesion(images, label, donor, donor_label, Draws(rim=2), PasteOptions(margin=4))
    # row 5 runs through the lesion (columns 5-7): columns 3 and 9 are 2 pixels away, 2 and 10 are 3
    assert out[0, 5, 3] == 5 and out[0, 5, 9] == 5 and out[1, 5, 3] == 6
    assert out[0, 5, 2] == 1 and out[0, 5, 10] == 1
    assert out[0, 2, 4] == 1  # (2, 4): distance sqrt(5) > 2 from (4, 5)
    assert out[0, 2, 5] == 5  # (2, 5): distance 2 from (4, 5)
    assert out_label[5, 3] == 0 and out_label[5, 5] == 2  # the rim is labelled as the donor labels it


def test_mirroring_moves_the_donor_lesion_to_the_other_side():
    images, label, donor, donor_label = pair()
    out, out_label, _ = paste_lesion(images, label, donor, donor_label, Draws(flip=0.1, rim=0), PasteOptions())
    # both axes mirrored: rows 4-6 -> 5-7, columns 5-7 -> 4-6
    expected = np.zeros((12, 12), bool)
    expected[5:8, 4:7] = True
    assert np.array_equal(out_label > 0, expected | (label > 0))
    assert np.all(out[0][expected] == 7)


def test_the_paste_is_clipped_to_the_recipients_body_and_skipped_when_most_of_the_lesion_would_be_outside():
    images, label, donor, donor_label = pair(body_value=-1.5)  # CT-like: the background is the normalised air
    images[:, :, 6:] = -1.5  # the recipient's body ends at column 6: the lesion's columns 5-7 -> only 5 inside
    out, out_label, pasted = paste_lesion(images, label, donor, donor_label, Draws(rim=0), PasteOptions(min_kept=0.3))
    assert pasted and np.array_equal(np.flatnonzero((out_label > 0).any(axis=0)), [2, 5])  # column 5 only (+ its own)
    assert np.all(out[:, :, 6:] == -1.5)  # nothing lands in the air
    same, same_label, pasted = paste_lesion(images, label, donor, donor_label, Draws(rim=0), PasteOptions(min_kept=0.5))
    assert not pasted and np.array_equal(same, images) and np.array_equal(same_label, label)


def test_body_mask_is_where_any_channel_leaves_its_border_value():
    images = np.full((2, 6, 6), 0.0, np.float32)
    images[0] = -2.0  # channel 0's background is -2 (air), channel 1's is 0
    images[0, 2, 2] = 0.5
    images[1, 3, 4] = 1.0
    expected = np.zeros((6, 6), bool)
    expected[2, 2] = expected[3, 4] = True
    assert np.array_equal(body_mask(images), expected)


def test_a_donor_without_lesion_or_of_another_shape_is_refused_or_skipped():
    images, label, donor, donor_label = pair()
    out, out_label, pasted = paste_lesion(images, label, donor, np.zeros_like(donor_label), Draws(), PasteOptions())
    assert not pasted and np.array_equal(out, images)
    with pytest.raises(ValueError, match="differ in shape"):
        paste_lesion(images, label, donor[:1], donor_label, Draws(), PasteOptions())


# --------------------------------------------------------------------------- in the dataset
@pytest.fixture(scope="module")
def store(phantom_root, tmp_path_factory) -> SliceStore:
    out = tmp_path_factory.mktemp("paste-store") / "s"
    prepare_store(phantom_root, out, PrepareOptions(modalities=("T2", "T1ce"), size=64, workers=1), progress=False)
    return SliceStore(out)


def _keys(store):
    labelled = [(c, z) for c, m in store.cases.items() if m.labeled for z in m.nonempty_slices]
    fg = {c: set(m.foreground_slices) for c, m in store.cases.items()}
    donors = [i for i, (c, z) in enumerate(labelled) if z in fg[c]]
    healthy = [i for i, (c, z) in enumerate(labelled) if z not in fg[c]]
    return labelled, donors, healthy


def test_dataset_pastes_seeded_labelled_slices_only_and_is_off_by_default(store):
    labelled, donors, healthy = _keys(store)
    assert donors and healthy
    unlabelled = labelled[:3]
    plain = PairedSliceDataset(store, labelled, unlabelled, ["T2", "T1ce"], seed=3, paste_donors=donors)
    pasting = PairedSliceDataset(store, labelled, unlabelled, ["T2", "T1ce"], seed=3, paste_donors=donors,
                                 augment=AugmentOptions(paste=PasteOptions(probability=1.0)))
    gained = 0
    for position, index in enumerate(healthy[:12]):
        ref, a, b = plain[(index, 4, position)], pasting[(index, 4, position)], pasting[(index, 4, position)]
        assert int(ref["label"].sum()) == 0
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["label"], b["label"])  # seeded
        if a["label"].sum() > 0:  # a healthy slice that received a lesion changed its images where the label is
            gained += 1
            lesion = a["label"].numpy() > 0
            assert not np.array_equal(a["images"].numpy()[:, lesion], ref["images"].numpy()[:, lesion])
        else:
            assert np.array_equal(a["images"], ref["images"])
    assert gained >= 6  # most healthy phantom slices have room for a lesion
    n = len(labelled)
    for position in range(3):  # the unlabelled stream is never touched (it has no labels to paste)
        assert np.array_equal(plain[(n + position, 4, position)]["images"], pasting[(n + position, 4, position)]["images"])
    with pytest.raises(ValueError, match="labelled pool"):
        PairedSliceDataset(store, labelled, unlabelled, ["T2", "T1ce"], paste_donors=[n])


def test_the_paste_comes_before_the_other_augmentation_whose_draws_it_leaves_unchanged(store):
    from semicml.data.sampler import augment_pair

    labelled, donors, _ = _keys(store)
    paste = PasteOptions(probability=1.0)
    opts = AugmentOptions(enabled=True)
    only_paste = PairedSliceDataset(store, labelled, [], ["T2", "T1ce"], augment=AugmentOptions(paste=paste), seed=1,
                                    paste_donors=donors)
    both = PairedSliceDataset(store, labelled, [], ["T2", "T1ce"], augment=AugmentOptions(enabled=True, paste=paste),
                              seed=1, paste_donors=donors)
    changed = 0
    for position, index in enumerate(donors[:8]):
        pasted = only_paste[(index, 2, position)]
        changed += int(not np.array_equal(pasted["label"], PairedSliceDataset(store, labelled, [], ["T2", "T1ce"])[index]["label"]))
        # the augmentation of the pasted slice draws from the stream it draws from without the paste
        images, label = augment_pair(pasted["images"].numpy(), pasted["label"].numpy().astype(np.uint8),
                                     np.random.default_rng([1, 7, 2, position]), opts)
        out = both[(index, 2, position)]
        assert np.array_equal(out["images"].numpy(), images) and np.array_equal(out["label"].numpy(), label)
    assert changed >= 4


def test_training_config_passes_the_paste_probability_and_refuses_out_of_range():
    from semicml.config import TrainConfig, build_config, with_absent_settings
    from semicml.engine.augmentation import augment_options
    from semicml.errors import ConfigError

    assert augment_options(build_config()).paste.probability == 0.5  # on by default (issue 9, screen 7)
    assert augment_options(build_config(overrides={"lesion_paste": 0})).paste.probability == 0.0
    assert augment_options(build_config(overrides={"lesion_paste": 0.25})).paste.probability == 0.25
    # a run recorded before the default changed trained without the paste, and is read so
    recorded = build_config().model_dump(mode="json")
    del recorded["lesion_paste"]
    assert TrainConfig.model_validate(with_absent_settings(recorded)).lesion_paste == 0.0
    with pytest.raises(ConfigError, match="lesion_paste"):
        build_config(overrides={"lesion_paste": 1.5})


def test_cli_option_reaches_the_config_and_a_bad_value_is_one_line(tmp_path, monkeypatch, capsys):
    from test_cli import run_cli

    code, out, err = run_cli(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
                              "--lesion-paste", "1.5"], monkeypatch, capsys)
    assert code == 2 and "lesion_paste" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_trainer_gives_the_dataset_every_labelled_tumour_slice_as_donor(phantom_root, tmp_path, monkeypatch):
    import semicml.engine.trainer as trainer_module
    from conftest import train_phantom_run

    seen = {}

    class Recording(PairedSliceDataset):
        def __init__(self, store, labeled, unlabeled, *args, **kwargs):
            super().__init__(store, labeled, unlabeled, *args, **kwargs)
            seen.update(store=store, labeled=list(labeled), donors=list(self.paste_donors), paste=self.augment.paste)

    monkeypatch.setattr(trainer_module, "PairedSliceDataset", Recording)
    train_phantom_run(phantom_root, tmp_path, {"method": "supervised", "iterations": 1, "lesion_paste": 0.5})
    fg = {c: set(m.foreground_slices) for c, m in seen["store"].cases.items()}
    expected = [i for i, (c, z) in enumerate(seen["labeled"]) if z in fg[c]]
    assert seen["paste"].probability == 0.5 and expected and seen["donors"] == expected
