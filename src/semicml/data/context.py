"""Through-plane context (2.5D): a network may see each axial slice with its neighbours.

With ``context = k`` a modality's network takes ``2k + 1`` input channels: the slices
``z - k, ..., z, ..., z + k`` of that modality, in that order, and predicts slice ``z`` only.
Neighbours beyond the volume are zeros, the value of the background after normalisation, so
training (the store) and ``predict`` (the whole volume) build the same input at a volume's ends.

Several modalities (training batches) are laid out modality-major: ``(M * (2k + 1), H, W)``,
modality ``i`` in channels ``i * (2k + 1) ... (i + 1) * (2k + 1) - 1``. ``k = 0`` is the 2D
network of the paper, bit for bit.

The neighbours are the file's slices, whatever their thickness: a network trained on 1 mm slices
sees other neighbours on a 5 mm scan (documented; one reason the option is off by default).
"""

from __future__ import annotations

import numpy as np

__all__ = ["context_of_channels", "context_of_network", "context_stack", "group_size"]


def group_size(context: int) -> int:
    """Input channels of one modality's network."""
    return 2 * int(context) + 1


def context_of_channels(in_channels: int) -> int:
    """The context of a single-modality network with ``in_channels`` inputs (1 -> 0, 3 -> 1, ...)."""
    if in_channels < 1 or in_channels % 2 == 0:
        raise ValueError(f"a single-modality network has an odd number of input channels, not {in_channels}")
    return (int(in_channels) - 1) // 2


def context_of_network(net) -> int:
    """The context of a network that records ``in_channels`` (a U-Net); 0 for one that does not
    (a TorchScript export: its loader sets the context from the export's metadata)."""
    return context_of_channels(int(getattr(net, "in_channels", 1)))


def context_stack(volume: np.ndarray, z: int, context: int) -> np.ndarray:
    """``volume`` (Z, ...) -> (2k + 1, ...): slices ``z - k .. z + k``, zeros outside ``[0, Z)``."""
    if context == 0:
        return np.asarray(volume[z])[None]
    depth = volume.shape[0]
    lo, hi = z - context, z + context + 1
    inside = np.asarray(volume[max(lo, 0) : min(hi, depth)])
    if lo >= 0 and hi <= depth:
        return inside
    out = np.zeros((hi - lo, *volume.shape[1:]), dtype=inside.dtype)
    out[max(lo, 0) - lo : min(hi, depth) - lo] = inside
    return out
