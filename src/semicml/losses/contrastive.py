"""ASC: the area-similarity contrastive loss of Semi-CML (docs/method-notes.md, "Networks and losses").

An "area" is a whole predicted probability map of one slice. The same slice predicted by two
modalities' networks is a positive pair; every other map in the batch (other slices, both
modalities) is a negative. NT-Xent form with the (soft Dice or cosine) similarity as logit.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semicml.losses.segmentation import fp32_region
from semicml.losses.validation import check_pair, zero_with_graph
from semicml.parallel import gather_rows

__all__ = ["ASC_CHANNELS", "ASCLoss", "asc_loss", "multi_asc_loss", "similarity_matrix"]

_SIMILARITIES = ("dice", "cosine")
ASC_CHANNELS = ("joint", "per-channel")


def similarity_matrix(z: Tensor, similarity: str = "dice", eps: float = 1e-5) -> Tensor:
    """Pairwise similarity of ``N`` maps.

    Shape contract: ``z``: ``(N, C, H, W)`` probability maps. Returns ``(N, N)`` float32.

    - ``"dice"``: ``S_ij = (2 sum(z_i z_j) + eps) / (sum(z_i^2) + sum(z_j^2) + eps)``
      (two all-zero maps have similarity 1).
    - ``"cosine"``: cosine similarity of the flattened maps; an all-zero map has similarity 0 to
      everything (its norm is clamped to ``eps``).
    """
    if z.ndim != 4:
        raise ValueError(f"similarity_matrix: z must be 4D (N, C, H, W), got shape {tuple(z.shape)}")
    if similarity not in _SIMILARITIES:
        raise ValueError(f"similarity must be one of {_SIMILARITIES}, got {similarity!r}")
    with fp32_region(z):  # a bf16 matmul over whole maps would be far too coarse
        flat = z.float().flatten(1)
        if similarity == "dice":
            gram = flat @ flat.T
            sq = gram.diagonal()
            return (2.0 * gram + eps) / (sq[:, None] + sq[None, :] + eps)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)
        return unit @ unit.T


def asc_loss(p_a: Tensor, p_b: Tensor, *, similarity: str = "dice", temperature: float = 1.0,
             channels: str = "joint") -> Tensor:
    """Area-similarity contrastive loss between two modalities' predictions of the same slices.

    Shape contract: ``p_a``, ``p_b``: ``(U, C, H, W)`` probability maps (after sigmoid), same
    shape; slice ``i`` of ``p_a`` and of ``p_b`` show the same anatomy. Returns a float32 scalar.

    With ``z = cat[p_a, p_b]`` (2U maps) and ``S = similarity_matrix(z)``::

        ASC = 1/(2U) sum_k -log( exp(S[k, pos(k)] / tau) / sum_{l != k} exp(S[k, l] / tau) ),
        pos(k) = (k + U) mod 2U

    i.e. cross-entropy over the rows of ``S / tau`` with the diagonal masked out. Any batch size
    works. Edge cases: ``U == 1`` has no negatives, the positive is the only term, so the loss is
    exactly 0 with zero gradient; ``U == 0`` returns a zero that is still attached to the graph.
    Symmetric: ``asc_loss(a, b) == asc_loss(b, a)``. Under DDP (``semicml.parallel.sharded_batch``)
    ``U`` counts the slices of the global batch: every rank's maps are gathered and contrasted.

    ``channels`` (several output channels, e.g. nested regions): ``"joint"`` takes a map's
    similarity over all its channels at once; ``"per-channel"`` is the mean over channels ``c`` of
    ``asc_loss(p_a[:, c], p_b[:, c])``. Both are the same loss when ``C == 1``.
    """
    check_pair("asc_loss", p_a, p_b, "p_a", "p_b")
    if similarity not in _SIMILARITIES:
        raise ValueError(f"asc_loss: similarity must be one of {_SIMILARITIES}, got {similarity!r}")
    if not temperature > 0:
        raise ValueError(f"asc_loss: temperature must be > 0, got {temperature}")
    if channels not in ASC_CHANNELS:
        raise ValueError(f"asc_loss: channels must be one of {ASC_CHANNELS}, got {channels!r}")
    if channels == "per-channel" and p_a.shape[1] > 1:
        return torch.stack([asc_loss(p_a[:, c : c + 1], p_b[:, c : c + 1], similarity=similarity,
                                     temperature=temperature) for c in range(p_a.shape[1])]).mean()
    # Under DDP the maps of every rank (the global batch) are contrasted; identity on one process.
    p_a, p_b = gather_rows(p_a), gather_rows(p_b)
    u = p_a.shape[0]
    if u == 0:
        return zero_with_graph(p_a, p_b)
    with fp32_region(p_a):
        sim = similarity_matrix(torch.cat([p_a, p_b], dim=0), similarity)
        n = 2 * u
        self_mask = torch.eye(n, dtype=torch.bool, device=sim.device)
        logits = (sim / temperature).masked_fill(self_mask, float("-inf"))
        positives = (torch.arange(n, device=sim.device) + u) % n
        return F.cross_entropy(logits, positives)


def multi_asc_loss(probs: Sequence[Tensor], **kw) -> Tensor:
    """Mean of :func:`asc_loss` over every unordered pair of modalities.

    Shape contract: ``probs`` is a sequence of ``N >= 2`` tensors ``(U, C, H, W)`` of the same
    shape, one per modality, slice-aligned. ``kw`` is passed to :func:`asc_loss`.
    """
    probs = list(probs)
    if len(probs) < 2:
        raise ValueError(f"multi_asc_loss needs at least 2 modalities, got {len(probs)}")
    losses = [asc_loss(a, b, **kw) for a, b in itertools.combinations(probs, 2)]
    return torch.stack(losses).mean()


class ASCLoss(nn.Module):
    """Module wrapper of :func:`asc_loss` (``forward(p_a, p_b)``)."""

    def __init__(self, similarity: str = "dice", temperature: float = 1.0):
        super().__init__()
        if similarity not in _SIMILARITIES:
            raise ValueError(f"ASCLoss: similarity must be one of {_SIMILARITIES}, got {similarity!r}")
        if not temperature > 0:
            raise ValueError(f"ASCLoss: temperature must be > 0, got {temperature}")
        self.similarity = similarity
        self.temperature = temperature

    def forward(self, p_a: Tensor, p_b: Tensor) -> Tensor:
        return asc_loss(p_a, p_b, similarity=self.similarity, temperature=self.temperature)
