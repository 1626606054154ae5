"""Ensembles: one modality segmented by the networks of SEVERAL runs at once (``predict --run A --run B``).

nnU-Net predicts unseen cases with the mean of its five cross-validation fold networks; here the
same for any set of runs of one modality (the folds of ``semicml benchmark``, several seeds, or
different recipes): the voxel-wise **mean of the members' sigmoid probabilities** is what gets
thresholded, flipped for ``--tta`` and post-processed, exactly like a single network's. The
measured reason is run-to-run variance: on the BraTS 2 mm cross-validation two trainings of one
fold that differ only in the seed moved T1ce Dice by up to 0.15
(``benchmarks/results/brats18-cv-2mm/README.md``).

:class:`EnsembleEngine` is an :class:`~semicml.inference.engines.Engine` like the others: it
returns ``logit(mean probability)``, so the predictor's sigmoid gives the mean back and the flips,
windows and uncertainty maps need no change. Members may differ in through-plane context (a 2D
and a 2.5D network): the ensemble takes the widest stack and gives each member its central
``2k + 1`` slices. They must agree on everything that decides what the network sees and means:
the preprocessing (normalisation, spacing, crop) and the target; a mismatch is a one-line error
naming the run.

Post-processing: the choice each member recorded on ITS validation cases; when they differ, the
one most members chose (region by region for region networks; a tie: the earliest listed run's),
said on stderr. ``--postprocess`` overrides it, as for one network.

``--uncertainty`` with an ensemble: the members are every (run, flip) pair, so the map shows where
the runs disagree as well as where a flip changes the answer (as fusion does for modalities).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ConfigError
from .engines import Engine

__all__ = ["EnsembleEngine", "ensemble_info", "postprocess_of_members"]

#: Probabilities are clamped to [EPS, 1 - EPS] before the logit, so the mean of saturated members
#: stays finite (the sigmoid of the result gives the mean back to ~1e-7).
EPS = 1e-7
#: What a member must share with the first one (keys of the weights' / export's info).
MUST_MATCH = ("preprocessing", "target")


class EnsembleEngine(Engine):
    """The mean probability of ``members`` (engines of one modality), as logits."""

    name = "ensemble"

    def __init__(self, members: Sequence[Engine]):
        if len(members) < 2:
            raise ValueError("an ensemble needs two or more networks")
        self.members = list(members)
        self.context = max(int(m.context) for m in self.members)
        # U-Net down-sampling factors are powers of two: the largest is a multiple of every other
        self.multiple = max(int(m.multiple) for m in self.members)
        self.name = "ensemble(" + ",".join(sorted({m.name for m in self.members})) + ")"

    @contextlib.contextmanager
    def session(self):
        with contextlib.ExitStack() as stack:
            for m in self.members:
                stack.enter_context(m.session())
            yield

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 2 * self.context + 1:
            raise ValueError(f"the ensemble takes {2 * self.context + 1} input channels, got {x.shape[1]}")
        total = None
        for m in self.members:
            lo = self.context - int(m.context)
            probs = torch.sigmoid(m(x[:, lo : x.shape[1] - lo]).double())
            if total is not None and probs.shape != total.shape:
                raise ValueError(f"ensemble members disagree on the output shape: {tuple(probs.shape)} "
                                 f"vs {tuple(total.shape)}")
            total = probs if total is None else total + probs
        mean = (total / len(self.members)).clamp(EPS, 1 - EPS)
        return torch.logit(mean).float()


def ensemble_info(runs: Sequence[str | Path], infos: Sequence[dict], modality: str) -> dict:
    """The first member's info after checking every other member against it (:data:`MUST_MATCH`,
    as far as ``modality``'s network is concerned); ``ConfigError`` naming the run and the
    differing key otherwise."""
    first = infos[0]
    for run, info in zip(runs[1:], infos[1:]):
        for key in MUST_MATCH:
            a, b = _comparable(first.get(key), modality), _comparable(info.get(key), modality)
            if isinstance(a, dict) and isinstance(b, dict):
                # an export's sidecar records more (e.g. the code's clip percentiles) than a weights
                # file of the same network: compare what both record
                shared = a.keys() & b.keys()
                a, b = {k: a[k] for k in shared}, {k: b[k] for k in shared}
            if a != b:
                raise ConfigError(f"{run}: its {key} differs from that of {runs[0]}; an ensemble's networks "
                                  "must see the same input (train them on stores prepared alike)")
    return first


#: Text that explains, not decides (how a value was chosen; an export's prose): ignored when members
#: are compared.
PROVENANCE_KEYS = ("rule", "chosen_by", "normalisation_rule", "orientation_rule", "window")


def _comparable(value, modality: str | None = None):
    """What decides the network's input: lists and tuples alike (JSON sidecars hold lists where
    weights hold tuples), provenance text dropped, and only ``modality``'s normalisation (stores
    prepared with other modality sets record theirs too)."""
    if isinstance(value, dict):
        out = {k: _comparable(v) for k, v in value.items() if k not in PROVENANCE_KEYS}
        norm = out.get("normalisation")
        if modality is not None and isinstance(norm, dict):
            # modality names match case-insensitively everywhere (weights/<modality>.pt lookup)
            out["normalisation"] = {k.lower(): v for k, v in norm.items() if k.lower() == modality.lower()}
        return out
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def postprocess_of_members(choices: Sequence) -> tuple[object, bool]:
    """(the post-processing most members recorded, ties to the earliest; whether they all agreed).
    ``choices``: each member's stored choice: a spec string, or a dict region -> spec, decided
    region by region (every member of one ensemble has the same regions)."""
    agreed = len({_key(c) for c in choices}) == 1
    if choices and all(isinstance(c, dict) for c in choices):
        return {region: _majority([c.get(region) for c in choices]) for region in choices[0]}, agreed
    return _majority(list(choices)), agreed


def _key(choice) -> str:
    return json.dumps(_comparable(choice), sort_keys=True)


def _majority(choices: list):
    keys = [_key(c) for c in choices]
    counts = Counter(keys)
    top = max(counts.values())
    return choices[next(i for i, k in enumerate(keys) if counts[k] == top)]  # earliest among the most chosen
