"""A built-in synthetic, BraTS-like brain-tumour dataset written in nnU-Net v2 raw layout.

Why: tests, demos and CI need paired multi-modal MRI with tumour labels that exercise the same
code paths and the same difficulties as BraTS, without shipping patient data. The phantom is a
*fair* stand-in: the T2 network should find the whole tumour easily and the T1ce network only
with difficulty (as on real data), while T1ce shows the enhancing rim best.

What is simulated, per case (geometry from ``np.random.default_rng([seed, case_index])``, each
modality's bias/noise/scale from ``default_rng([seed, case_index, modality_id])``, so case ``k``
is byte-identical whatever the number of cases written, and a modality's image does not depend
on which other modalities are requested or their order):

Geometry and anatomy (array axes = x left-right, y anterior-posterior, z inferior-superior;
the third axis is axial, as in BraTS)
    * A skull-stripped brain: an ellipsoid whose semi-axes are fixed fractions of the field of
      view (about 0.34, 0.42, 0.40, each jittered +-6%), flattened at its base, rotated by a few
      degrees (yaw and pitch) and shifted slightly, then warped by a smooth random displacement
      field (random low-frequency cosine series, ~3% of the brain size). Outside the brain the
      images are exactly zero, as in BraTS; inside they are strictly positive.
    * White matter (WM) inside a grey-matter (GM) cortex ribbon whose inner boundary is folded
      by a band-limited random field (gyri); CSF in the deepest sulci, in a thin layer at the
      brain surface, in the interhemispheric fissure (upper brain), in two crescent-shaped lateral
      ventricles of random size and in the third ventricle; deep GM nuclei beside the ventricles.
    * Mass effect: anatomy near each tumour is pushed outwards (the coordinates at which the
      anatomy is evaluated are pulled towards the tumour centre), so ventricles and cortex deform.

Tumours (labels follow the BraTS sub-regions, values as in nnU-Net's BraTS conversion)
    * One tumour in ~75% of cases, two in the rest; every case has one. Centres lie inside the
      brain, off the midline. In-plane radius uniform in 4-20 voxels at 128 voxels in-plane
      (scaled with the in-plane size, at least 3 voxels); random anisotropy (0.75-1.3) and
      rotation; the surface is a perturbed ellipsoid (level set of distance + smooth noise),
      so shapes are lobulated and irregular.
    * Sub-regions: necrotic core (label 1: inner level set, irregular boundary) surrounded by an
      enhancing rim (label 3) of irregular thickness (at least one voxel, so necrosis never
      touches normal tissue), surrounded by a larger, irregular oedema
      (label 2, 0.3-1.3 tumour radii beyond the rim) confined to white matter (vasogenic oedema
      spreads along WM and spares the cortex), connected to its tumour, reaching at most ~60%
      of the brain's smallest semi-axis. Every case contains all three labels (a tumour is
      redrawn until it does). At the default size the whole tumour covers ~0.5-25% of the
      brain (median ~6%; the BraTS 2018 sample here: 2-16%, median 7%) and the brain ~1.26 L.

Image formation, per modality (contrast table :data:`CONTRASTS`)
    1. piecewise-constant tissue intensities from the table (background 0);
    2. partial-volume blur: Gaussian, sigma 0.7 voxel;
    3. smooth tissue texture (x(1 +- ~2%)) shared by all modalities;
    4. multiplicative bias field: random 2nd-order polynomial scaled to a maximum deviation of
       8-15% inside the brain, independent per modality;
    5. Rician noise: magnitude of (signal + N(0, s^2)) + i N(0, s^2), s = the table's ``noise``;
    6. global scale (x0.85-1.15) and offset (+-3% of WM) per case and modality;
    7. skull stripping: zero outside the brain mask, a floor of 0.5 inside.

Contrasts (see :data:`CONTRASTS`): T2 shows the whole lesion (oedema and necrosis bright, rim a
little less) and bright CSF; T1ce shows the enhancing rim brightly while oedema and necrosis
differ from WM by only 2.5-3 noise std (faint voxel by voxel,
learnable from texture and context, but harder); FLAIR: oedema bright, CSF dark;
T1: lesion slightly hypointense.

On disk: ``dataset.json`` (``channel_names``, ``labels`` {background 0, necrosis 1, edema 2,
enhancing 3}, ``numTraining``, ``file_ending``), ``imagesTr/phantom_XXX_000C.nii.gz`` (float32)
and ``labelsTr/phantom_XXX.nii.gz`` (uint8), affine ``diag(-sx, -sy, sz)`` with origin
``(0, (Y-1) sy, 0)`` like BraTS' ``diag(-1, -1, 1)`` with origin ``(0, 239, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from semicml.data.raw_writer import save_nifti, write_raw_dataset
from semicml.errors import ConfigError

__all__ = ["CONTRASTS", "PHANTOM_LABELS", "PhantomCase", "phantom_case", "smooth_field", "write_phantom"]

# Tissue classes of the internal class map (PhantomCase.tissue).
BG, WM, GM, CSF, EDEMA, ENHANCING, NECROSIS = range(7)
TISSUES = ("background", "wm", "gm", "csf", "edema", "enhancing", "necrosis")

PHANTOM_LABELS: dict[str, int] = {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}

#: Mean intensity per tissue and the noise std (of each Gaussian component of the Rician noise),
#: per modality, in arbitrary scanner-like units. T1ce oedema/necrosis are written as WM minus a
#: couple of noise std on purpose: that faint shift is what makes T1ce hard for the
#: whole tumour, as on real BraTS data.
CONTRASTS: dict[str, dict[str, float]] = {
    "T2": {"wm": 100.0, "gm": 130.0, "csf": 250.0,
           "edema": 165.0, "enhancing": 150.0, "necrosis": 210.0, "noise": 12.0},
    "T1ce": {"wm": 130.0, "gm": 100.0, "csf": 45.0,
             "edema": 130.0 - 2.5 * 10.0, "enhancing": 200.0, "necrosis": 130.0 - 3.0 * 10.0,
             "noise": 10.0},
    "FLAIR": {"wm": 100.0, "gm": 120.0, "csf": 30.0,
              "edema": 190.0, "enhancing": 170.0, "necrosis": 140.0, "noise": 12.0},
    "T1": {"wm": 130.0, "gm": 100.0, "csf": 40.0,
           "edema": 115.0, "enhancing": 112.0, "necrosis": 85.0, "noise": 10.0},
}

# Geometry knobs (fractions of the field of view / of the brain semi-axes).
BRAIN_SEMI_AXES = (0.34, 0.42, 0.40)  # of the FOV along x, y, z
TUMOUR_RADIUS_VOX = (4.0, 20.0)  # in-plane, at 128 voxels in-plane; scaled with the in-plane size
TWO_TUMOUR_PROB = 0.25
PV_SIGMA_VOX = 0.7
BIAS_MAX = (0.08, 0.15)
MIN_LABEL_VOXELS = 4  # each sub-label must have at least this many voxels


@dataclass
class PhantomCase:
    """One generated case, in memory."""

    images: dict[str, np.ndarray]  # modality -> float32 (X, Y, Z)
    label: np.ndarray  # uint8, values of PHANTOM_LABELS
    affine: np.ndarray
    brain: np.ndarray  # bool brain mask (images are zero outside)
    tissue: np.ndarray  # uint8 class map, indices into TISSUES
    tumours: list[dict[str, float]] = field(default_factory=list)  # centre_mm, radius_vox, ...


# --------------------------------------------------------------------------------------------
# random fields
# --------------------------------------------------------------------------------------------


def smooth_field(rng: np.random.Generator, coords: Sequence[np.ndarray], kmax: int,
                  decay: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std random field: a separable low-frequency cosine series.

    ``coords`` are three 1D coordinate arrays in units where frequency k has wavelength 1/k;
    k runs 1..kmax with amplitude ~ |k|^-decay and random phases. Evaluated as three small
    tensor contractions, so the cost is ~ voxels * kmax (much cheaper than filtering noise).
    """
    k = np.arange(1, kmax + 1, dtype=np.float64)
    bases = [np.cos(2 * np.pi * np.outer(np.asarray(c, np.float64), k) + rng.uniform(0, 2 * np.pi, kmax))
             for c in coords]
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    coef = rng.standard_normal((kmax, kmax, kmax)) / kk**decay
    bx, by, bz = bases
    t = np.tensordot(coef, bz, axes=(2, 1))  # (i, j, Z)
    t = np.tensordot(by, t, axes=(1, 1))  # (Y, i, Z)
    t = np.ascontiguousarray(t.transpose(1, 0, 2), dtype=np.float32)  # (i, Y, Z), small
    nx, ny, nz = bx.shape[0], by.shape[0], bz.shape[0]
    f = (bx.astype(np.float32) @ t.reshape(kmax, ny * nz)).reshape(nx, ny, nz)  # one float32 GEMM
    # Normalise with statistics of a regular subsample: the field is smooth, so this is exact
    # enough and saves full-volume passes.
    sub = f[::2, ::2, ::2].astype(np.float64)
    mean, std = float(sub.mean()), float(sub.std())
    f -= np.float32(mean)
    if std > 0:
        f *= np.float32(1.0 / std)
    return f


def _rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, y, z by uniform angles within +-max_deg."""
    ax, ay, az = (np.deg2rad(rng.uniform(-m, m)) for m in max_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# --------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------


def _canonical_modalities(modalities: Sequence[str]) -> list[str]:
    if isinstance(modalities, str):
        modalities = [modalities]
    from semicml.data.readers.common import match_modality  # same name/alias rules as the readers

    names: list[str] = []
    for m in modalities:
        hit = match_modality(str(m), list(CONTRASTS))
        if hit is None:
            raise ConfigError(f"phantom modality '{m}' is not supported; choose from {', '.join(CONTRASTS)}")
        if hit in names:
            raise ConfigError(f"phantom modality '{hit}' given twice")
        names.append(hit)
    if len(names) < 2:
        raise ConfigError("the phantom needs at least 2 modalities")
    return names


def _check_args(shape: Sequence[int], spacing: Sequence[float], seed: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if len(shape) != 3 or any(int(s) != s or s < 16 for s in shape):
        raise ConfigError(f"phantom shape must be 3 integers >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ConfigError(f"phantom spacing must be 3 positive numbers, got {tuple(spacing)}")
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    shp = (int(shape[0]), int(shape[1]), int(shape[2]))
    return shp, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """BraTS-like voxel-to-world matrix: diag(-sx, -sy, sz), origin (0, (Y-1) sy, 0)."""
    sx, sy, sz = spacing
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[1, 3] = (shape[1] - 1) * sy
    return aff


def _draw_tumours(rng: np.random.Generator, semi: np.ndarray, scale: float, inplane_mm: float) -> list[dict]:
    """Tumour parameters in the head frame (mm): centre, radius, shape."""
    n = 2 if rng.random() < TWO_TUMOUR_PROB else 1
    lo, hi = TUMOUR_RADIUS_VOX
    tumours: list[dict] = []
    for j in range(n):
        centre = np.array([0.4 * semi[0], 0.0, 0.0])  # fallback; the loop below nearly always succeeds
        r_vox = float(rng.uniform(lo, hi)) * scale * (0.7 if j else 1.0)
        r_vox = max(r_vox, 3.0)
        radius = min(r_vox * inplane_mm, 0.45 * float(semi.min()))
        for _ in range(100):  # centre: inside the brain with room for the core, off the midline
            u = rng.uniform(-1, 1, 3)
            if np.linalg.norm(u) > 1 or abs(u[0]) < 0.2:
                continue
            room = semi.copy()
            if u[2] < 0:
                room[2] /= 1.15  # the base of the brain is flattened (see _anatomy)
            centre = u * np.maximum(room - 1.5 * radius, 0.05 * room) * 0.85
            if all(np.linalg.norm(centre - t["centre"]) > 1.2 * (radius + t["radius"]) for t in tumours):
                break
        # Keep the oedema within ~60% of the brain so even big tumours leave normal brain around.
        extent = float(min(rng.uniform(0.3, 1.3), max(0.3, 0.6 * float(semi.min()) / radius - 1.0)))
        tumours.append({
            "centre": centre, "radius": radius, "radius_vox": radius / inplane_mm,
            "ratios": rng.uniform(0.75, 1.3, 3), "rotation": _rotation(rng, (180, 180, 180)),
            "necrosis_level": rng.uniform(0.35, 0.65), "edema_extent": extent,
            "push": rng.uniform(0.15, 0.35),
        })
    return tumours


def phantom_case(index: int, seed: int = 0, shape: Sequence[int] = (128, 128, 48),
                 modalities: Sequence[str] = ("T2", "T1ce"),
                 spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> PhantomCase:
    """Generate case ``index`` of the phantom for ``seed`` (deterministic), in memory."""
    shp, sp = _check_args(shape, spacing, seed)
    names = _canonical_modalities(modalities)
    rng = np.random.default_rng([int(seed), int(index)])
    nx, ny, nz = shp
    spacing_arr = np.asarray(sp)
    fov = np.asarray(shp) * spacing_arr

    # Voxel centres in mm, centred on the volume (1D axes; full arrays only where needed).
    axes_mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shp, sp)]
    axes_fov = [a / f for a, f in zip(axes_mm, fov)]  # in FOV units, for the random fields

    # Head pose: small rotation and shift; head frame = rotation @ (voxel mm - shift).
    rot = _rotation(rng, (4.0, 3.0, 6.0))
    shift = rng.uniform(-0.03, 0.03, 3) * fov
    semi = np.asarray(BRAIN_SEMI_AXES) * fov * rng.uniform(0.94, 1.06, 3)
    gx, gy, gz = np.meshgrid(*[(a - s).astype(np.float32) for a, s in zip(axes_mm, shift)],
                             indexing="ij", sparse=True)
    r = [[float(v) for v in row] for row in rot]  # Python floats keep the arrays float32
    hx = r[0][0] * gx + r[0][1] * gy + r[0][2] * gz
    hy = r[1][0] * gx + r[1][1] * gy + r[1][2] * gz
    hz = r[2][0] * gx + r[2][1] * gy + r[2][2] * gz

    # Smooth random warp of the anatomy (same for all tumour attempts).
    warp = [float(0.03 * s) * smooth_field(rng, axes_fov, 2, 1.5) for s in semi]
    fold = smooth_field(rng, axes_fov, 14, 0.6)  # gyral folding, ~10 gyri across the brain
    texture = smooth_field(rng, axes_fov, 10, 0.8)
    anatomy_rng = rng.uniform(size=8)  # cortex thickness, ventricle size, ...

    scale = min(nx, ny) / 128.0
    inplane_mm = float(np.mean(sp[:2]))
    for _attempt in range(30):
        tumours = _draw_tumours(rng, semi, scale, inplane_mm)
        # Mass effect: evaluate the anatomy at points pulled towards each tumour centre.
        px, py, pz = hx + warp[0], hy + warp[1], hz + warp[2]
        for t in tumours:
            # Only within a box where the pull is not negligible (exp(-9) beyond 3 widths).
            width = 1.8 * t["radius"]
            bb, _, _ = _box(t["centre"], 3 * width + 0.1 * float(semi.max()), rot, shift, spacing_arr, shp)
            cx, cy, cz = (float(v) for v in t["centre"])
            bx_, by_, bz_ = px[bb], py[bb], pz[bb]
            d2 = (bx_ - cx) ** 2 + (by_ - cy) ** 2 + (bz_ - cz) ** 2
            pull = 1.0 - float(t["push"]) * np.exp(-d2 / float(width) ** 2)
            px[bb], py[bb], pz[bb] = cx + (bx_ - cx) * pull, cy + (by_ - cy) * pull, cz + (bz_ - cz) * pull
        sa = [float(v) for v in semi]
        tissue, brain = _anatomy(px / sa[0], py / sa[1], pz / sa[2], fold, anatomy_rng, semi)
        label = np.zeros(shp, np.uint8)
        _paint_tumours(rng, tumours, label, tissue, brain, (hx, hy, hz), rot, shift, spacing_arr, shp)
        counts = np.bincount(label.ravel(), minlength=4)
        if (counts[1:4] >= MIN_LABEL_VOXELS).all():
            break
    else:  # pragma: no cover - the parameter ranges make this practically impossible
        raise RuntimeError(f"phantom case {index}: could not place a tumour with all sub-regions")

    tissue[label == PHANTOM_LABELS["edema"]] = EDEMA
    tissue[label == PHANTOM_LABELS["enhancing"]] = ENHANCING
    tissue[label == PHANTOM_LABELS["necrosis"]] = NECROSIS

    images = {}
    tex = 1.0 + 0.02 * texture
    poly_terms = _poly_terms(axes_fov)
    for name in names:
        c = CONTRASTS[name]
        # Own stream per modality: a modality's image does not depend on which others are made.
        mrng = np.random.default_rng([int(seed), int(index), 1 + list(CONTRASTS).index(name)])
        lut = np.array([0.0] + [c[t] for t in TISSUES[1:]], np.float32)
        img = ndimage.gaussian_filter(lut[tissue], PV_SIGMA_VOX, mode="nearest")
        img *= tex
        img *= _bias_field(mrng, poly_terms, brain)
        sigma = np.float32(c["noise"])
        real = img + sigma * mrng.standard_normal(shp, dtype=np.float32)
        imag = sigma * mrng.standard_normal(shp, dtype=np.float32)
        img = np.sqrt(real * real + imag * imag)
        img = img * np.float32(mrng.uniform(0.85, 1.15)) + np.float32(mrng.uniform(-0.03, 0.03) * c["wm"])
        images[name] = np.where(brain, np.maximum(img, np.float32(0.5)), np.float32(0)).astype(np.float32)

    info = [{"centre_mm": [float(v) for v in t["centre"]], "radius_vox": float(t["radius_vox"]),
             "edema_extent": float(t["edema_extent"])} for t in tumours]
    return PhantomCase(images=images, label=label, affine=phantom_affine(shp, sp), brain=brain,
                       tissue=tissue, tumours=info)


def _anatomy(u: np.ndarray, v: np.ndarray, w: np.ndarray, fold: np.ndarray,
             r: np.ndarray, semi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue class map and brain mask from normalised head coordinates (brain = unit ball)."""
    r = [float(x) for x in r]  # Python floats keep the arrays float32
    w_eff = np.where(w < 0, w * 1.15, w)  # flatter base of the brain
    rho = np.sqrt(u * u + v * v + w_eff * w_eff)
    brain = rho < 1.0
    cortex = 0.15 + 0.05 * r[0]
    wm = rho < (1.0 - cortex + 0.05 * fold)
    tissue = np.where(brain, np.uint8(GM), np.uint8(BG)).astype(np.uint8)
    tissue[brain & wm] = WM

    # Deep grey nuclei beside the ventricles.
    for sx in (-1.0, 1.0):
        deep = ((u - sx * 0.26) / 0.13) ** 2 + ((v - 0.05) / 0.22) ** 2 + ((w + 0.05) / 0.15) ** 2 < 1.0
        tissue[deep & brain] = GM

    csf = np.zeros(brain.shape, bool)
    csf |= (fold > 1.1) & ~wm & (rho > 1.0 - 0.8 * cortex)  # deep sulci
    csf |= rho > 0.975  # thin CSF layer at the surface
    fissure_half_width = 1.0 / float(semi[0])  # ~1 mm
    csf |= (np.abs(u) < fissure_half_width) & ((w > -0.05) | (np.abs(v) > 0.55))
    vent = 0.7 + 0.7 * r[1]  # ventricle size varies (age, atrophy)
    # Two crescent-shaped lateral ventricles, mirror images about the midline (hence |u|).
    du = (np.abs(u) - 0.12 - 0.08 * v * v) / (0.075 * vent)
    dv = (v + 0.02) / 0.36
    dw = (w - 0.12 + 0.35 * v * v) / (0.13 * vent)
    csf |= du * du + dv * dv + dw * dw < 1.0
    csf |= (np.abs(u) < 0.022 * vent) & (np.abs(v) < 0.16) & (np.abs(w + 0.02) < 0.14)  # 3rd
    tissue[csf & brain] = CSF
    return tissue, brain


def _box(centre: np.ndarray, extent_mm: float, rot: np.ndarray, shift: np.ndarray,
         spacing: np.ndarray, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Voxel box holding the ball of radius ``extent_mm`` around a head-frame point.

    Returns the slices, their lower corner and the point in (fractional) voxel indices.
    """
    centre_vox = (rot.T @ np.asarray(centre) + shift) / spacing + (np.asarray(shape) - 1) / 2
    half = np.ceil(extent_mm / spacing).astype(int)
    lo = np.clip(np.floor(centre_vox).astype(int) - half, 0, np.asarray(shape))
    hi = np.clip(np.floor(centre_vox).astype(int) + half + 1, 0, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), lo, centre_vox


def _paint_tumours(rng: np.random.Generator, tumours: list[dict], label: np.ndarray,
                   tissue: np.ndarray, brain: np.ndarray, head: tuple[np.ndarray, ...],
                   rot: np.ndarray, shift: np.ndarray, spacing: np.ndarray, shape: tuple[int, int, int]) -> None:
    """Paint oedema, enhancing rim and necrosis (in that order) into ``label``, in place."""
    regions = []
    for t in tumours:
        radius = t["radius"]
        extent = radius * (1.0 + t["edema_extent"]) * 1.45 * float(t["ratios"].max()) + 2 * spacing.max()
        bb, lo, centre_vox = _box(t["centre"], extent, rot, shift, spacing, shape)
        hi = [s.stop for s in bb]
        # Head-frame coordinates of the box (broadcast views of the sparse grids).
        hx, hy, hz = (np.broadcast_to(h, shape)[bb] for h in head)
        d = np.stack([hx - t["centre"][0], hy - t["centre"][1], hz - t["centre"][2]], axis=-1)
        q = (d @ t["rotation"].T) / (radius * t["ratios"])
        dist = np.sqrt((q * q).sum(-1))
        box_axes = [(np.arange(a, b) - c) * s / (4.0 * radius)
                    for a, b, c, s in zip(lo, hi, centre_vox, spacing)]
        lobes = smooth_field(rng, box_axes, 3, 1.0)
        rim = smooth_field(rng, box_axes, 4, 1.0)
        edema_axes = [a / (1.0 + t["edema_extent"]) for a in box_axes]
        fingers = smooth_field(rng, [a * 2.0 for a in edema_axes], 3, 0.8)
        g = dist + 0.22 * lobes
        active = g < 1.0
        # Necrosis is always wrapped in at least one voxel of enhancing rim (also along the
        # coarser z axis and at the brain surface), so it never touches normal tissue.
        necrosis = ((g + 0.08 * rim) < t["necrosis_level"]) & ndimage.binary_erosion(active & brain[bb])
        edema = (dist / (1.0 + t["edema_extent"]) + 0.2 * fingers) < 1.0
        # Keep only oedema connected to the tumour (no isolated specks far away).
        parts, _ = ndimage.label(edema | active)
        edema &= np.isin(parts, np.unique(parts[active]))
        regions.append((bb, active, necrosis, edema))
    in_brain = [brain[bb] for bb, *_ in regions]
    for (bb, _, _, edema), b in zip(regions, in_brain):
        sub = label[bb]
        sub[edema & b & (tissue[bb] == WM)] = PHANTOM_LABELS["edema"]  # oedema spares cortex/CSF
    for (bb, active, _, _), b in zip(regions, in_brain):
        label[bb][active & b] = PHANTOM_LABELS["enhancing"]
    for (bb, _, necrosis, _), b in zip(regions, in_brain):
        label[bb][necrosis & b] = PHANTOM_LABELS["necrosis"]


def _poly_terms(axes_fov: Sequence[np.ndarray]) -> list[np.ndarray]:
    x, y, z = np.meshgrid(*[a.astype(np.float32) * 2 for a in axes_fov], indexing="ij", sparse=True)
    return [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]


def _bias_field(rng: np.random.Generator, terms: list[np.ndarray], brain: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field 1 + p(x, y, z), p a random 2nd-order polynomial."""
    coef = rng.standard_normal(len(terms)).astype(np.float32)
    p = sum(c * t for c, t in zip(coef, terms))
    p = np.broadcast_to(p, brain.shape)
    inside = p[brain] if brain.any() else p.ravel()
    p = p - inside.mean()
    peak = float(np.abs(p[brain]).max()) if brain.any() else 1.0
    return (1.0 + p * np.float32(rng.uniform(*BIAS_MAX) / max(peak, 1e-6))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write_phantom(out: Path, cases: int = 12, seed: int = 0, shape: Sequence[int] = (128, 128, 48),
                  modalities: Sequence[str] = ("T2", "T1ce"),
                  spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> Path:
    """Write ``cases`` phantom cases as an nnU-Net v2 raw dataset at ``out``; return ``out``.

    Atomic: built in a temporary folder beside ``out`` and renamed into place, so ``out`` is
    either complete or absent. Refuses (DataError) when ``out`` exists and is not empty.
    """
    out = Path(out).expanduser()
    if int(cases) != cases or cases < 1:
        raise ConfigError(f"phantom cases must be a positive integer, got {cases!r}")
    shp, sp = _check_args(shape, spacing, seed)
    names = _canonical_modalities(modalities)

    def write_case(k: int, images: Path, labels: Path) -> None:
        case = phantom_case(k, seed, shp, names, sp)
        cid = f"phantom_{k:03d}"
        for ch, name in enumerate(names):
            save_nifti(case.images[name], case.affine, images / f"{cid}_{ch:04d}.nii.gz")
        save_nifti(case.label, case.affine, labels / f"{cid}.nii.gz")

    meta = {
        "name": "semicml_phantom",
        "description": (
            f"Synthetic BraTS-like brain tumour phantom from semicml.data.phantom "
            f"(seed={int(seed)}, shape={list(shp)}, spacing={list(sp)}); not patient data."
        ),
        "channel_names": {str(i): n for i, n in enumerate(names)},
        "labels": dict(PHANTOM_LABELS),
        "phantom": {"seed": int(seed), "shape": list(shp), "spacing": list(sp), "version": 1},
    }
    return write_raw_dataset(out, int(cases), write_case, meta)
