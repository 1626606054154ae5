"""A built-in synthetic, HECKTOR-like head-and-neck dataset (CT + FDG-PET), nnU-Net raw layout.

Why: the paper's second setting is HECKTOR (oropharyngeal cancer, CT + PET, primary tumour
GTVt). Tests and demos need data that exercises what makes it different from BraTS: CT in
Hounsfield units with air at -1000 around the body (no "non-zero" brain), a PET image on a
coarser grid than its CT, and a target that is obvious on PET but barely visible on CT.

Per case (``np.random.default_rng([seed, case_index])`` for the anatomy; each modality's noise
from ``default_rng([seed, case_index, 1 + modality index])``, so case ``k`` is the same whatever
the number of cases written). Geometry in units of the half field of view (u: right-left, v:
posterior(-)-anterior(+)) and of the CT's height (w: 0 at the lowest slice, 1 at the top):

* body: an elliptic cylinder, wider towards the head (w > 0.5); a fat layer under the skin;
  muscle inside; a CT table (a bone-like slab) behind the patient, separated by air;
* spine (cortical bone ring, marrow, spinal cord) behind the airway, up to w = 0.85; skull base
  and a brain above it; a mandible arc in front (w 0.55-0.8); the airway (pharynx) in front of
  the spine, widening into the oral cavity (w 0.7-0.85); parotid glands and tonsils;
* GTVt (label 1): one irregular primary tumour beside the airway (w 0.4-0.7, radius 12-25% of
  the half field of view), invading the airway; CT: muscle + 12 HU (noise std 15 HU: barely
  visible, as on real CT without contrast), PET: SUV 5-14, lower in a necrotic centre;
* GTVn (label 2): a metastatic lymph node in ~60% of cases, lateral in the neck, PET SUV 3-8.

Image formation: CT = HU map, partial-volume blur (0.6 voxel), Gaussian noise (15 HU), stored
as int16 on the CT grid. PET = SUV map (air 0, fat 0.4, muscle 0.9, marrow 1.5, parotid 2,
tonsils 3, brain 6-10), blurred by the scanner's point spread (FWHM 6 mm), sampled on the PET
grid (``PET_SPACING_FACTOR`` x the CT spacing, with its own origin and a wider field of view),
multiplicative noise (12%), a per-case calibration factor (x0.9-1.1), float32. Labels are on the
CT grid, as HECKTOR's are.

On disk: ``dataset.json`` with ``channel_names`` {"0": "CT", "1": "PT"}, ``labels``
{"background": 0, "GTVt": 1, "GTVn": 2}; ``imagesTr/hn_XXX_0000.nii.gz`` (CT),
``imagesTr/hn_XXX_0001.nii.gz`` (PET, its own grid), ``labelsTr/hn_XXX.nii.gz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from semicml.data.geometry import resample_to_grid
from semicml.data.phantom import smooth_field
from semicml.data.raw_writer import save_nifti, write_raw_dataset
from semicml.errors import ConfigError

__all__ = ["HEADNECK_LABELS", "HeadNeckCase", "PET_SPACING_FACTOR", "headneck_case", "write_headneck_phantom"]

HEADNECK_LABELS: dict[str, int] = {"background": 0, "GTVt": 1, "GTVn": 2}
CHANNELS = ("CT", "PT")
#: PET voxels are this many times the CT's (in plane 2.6x, slices 1.1x): a coarser, unaligned grid.
PET_SPACING_FACTOR = (2.6, 2.6, 1.1)
PET_PSF_FWHM_MM = 6.0
CT_NOISE_HU = 15.0
PET_NOISE = 0.12

# Tissue classes of the internal map, with their CT number (HU) and FDG uptake (SUV).
TISSUES = ("air", "fat", "muscle", "bone", "marrow", "cord", "brain", "parotid", "tonsil", "gtvt", "gtvn", "table")
HU = {"air": -1000.0, "fat": -100.0, "muscle": 40.0, "bone": 900.0, "marrow": 250.0, "cord": 30.0, "brain": 35.0,
      "parotid": -10.0, "tonsil": 45.0, "gtvt": 52.0, "gtvn": 30.0, "table": 200.0}
SUV = {"air": 0.0, "fat": 0.4, "muscle": 0.9, "bone": 0.6, "marrow": 1.5, "cord": 1.2, "brain": 8.0,
       "parotid": 2.0, "tonsil": 3.0, "gtvt": 9.0, "gtvn": 5.0, "table": 0.0}


@dataclass
class HeadNeckCase:
    ct: np.ndarray  # int16 HU on the CT grid
    pet: np.ndarray  # float32 SUV on the PET grid
    label: np.ndarray  # uint8 on the CT grid
    ct_affine: np.ndarray
    pet_affine: np.ndarray
    tissue: np.ndarray  # uint8 indices into TISSUES, CT grid


def _affine(shape: Sequence[int], spacing: Sequence[float], centre: Sequence[float]) -> np.ndarray:
    """RAS affine whose voxel grid is centred on ``centre`` (mm)."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = np.asarray(centre) - (np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    return aff


def _check(shape: Sequence[int], spacing: Sequence[float], seed: int) -> tuple[tuple[int, int, int], tuple[float, ...]]:
    if len(shape) != 3 or any(int(s) != s or s < 16 for s in shape):
        raise ConfigError(f"phantom shape must be 3 integers >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ConfigError(f"phantom spacing must be 3 positive numbers, got {tuple(spacing)}")
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), tuple(float(s) for s in spacing)


def _blob(rng: np.random.Generator, u, v, w, centre, radii, roughness: float, wscale: float) -> tuple[np.ndarray, np.ndarray]:
    """An irregular ellipsoid (level set of distance + smooth noise) and its normalised distance."""
    du, dv, dw = (u - centre[0]) / radii[0], (v - centre[1]) / radii[1], (w - centre[2]) / (radii[2] * wscale)
    dist = np.sqrt(du * du + dv * dv + dw * dw)
    axes = [np.linspace(-1.5, 1.5, n) for n in (u.shape[0], v.shape[1], w.shape[2])]
    noise = smooth_field(rng, axes, 3, 1.0)
    return dist + roughness * noise < 1.0, dist


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, ...]):
    """Tissue map (CT grid), label, tumour parameters, and per-case uptake values."""
    nx, ny, nz = shape
    half = np.array([nx * spacing[0], ny * spacing[1]]) / 2  # mm
    u = ((np.arange(nx) - (nx - 1) / 2) * spacing[0] / half[0])[:, None, None]
    v = ((np.arange(ny) - (ny - 1) / 2) * spacing[1] / half[1])[None, :, None]
    w = (np.arange(nz) / max(nz - 1, 1))[None, None, :]
    ws = np.clip((w - 0.5) / 0.4, 0, 1)
    ws = ws * ws * (3 - 2 * ws)  # smoothstep: neck below, head above
    ax, bx = rng.uniform(0.5, 0.58) + 0.14 * ws, rng.uniform(0.45, 0.52) + 0.15 * ws
    shift_u, shift_v = rng.uniform(-0.05, 0.05, 2)
    uu, vv = u - shift_u, v - shift_v
    wiggle = 0.03 * np.sin(2 * np.pi * (w * rng.uniform(0.5, 1.5) + rng.uniform()))

    tissue = np.zeros(shape, np.uint8)
    T = {name: np.uint8(i) for i, name in enumerate(TISSUES)}
    body_r = np.sqrt((uu / ax) ** 2 + (vv / bx) ** 2)
    body = np.broadcast_to(body_r < 1.0, shape)
    tissue[body] = T["fat"]
    tissue[np.broadcast_to(body_r < 1.0 - rng.uniform(0.05, 0.1), shape)] = T["muscle"]
    table = (np.abs(u) < 0.85) & (v > -0.97) & (v < -0.9) & (w >= 0)
    tissue[np.broadcast_to(table, shape)] = T["table"]

    low = np.broadcast_to(w < 0.85, shape)
    spine_c = (wiggle, -0.28)
    spine_r = np.sqrt((uu - spine_c[0]) ** 2 + ((vv - spine_c[1]) / 1.1) ** 2)
    tissue[low & (spine_r < 0.14)] = T["bone"]
    tissue[low & (spine_r < 0.11)] = T["marrow"]
    tissue[low & (np.sqrt((uu - spine_c[0]) ** 2 + (vv - spine_c[1] - 0.07) ** 2) < 0.045)] = T["cord"]
    mand = np.sqrt((uu / 0.42) ** 2 + ((vv - 0.12) / 0.4) ** 2)
    tissue[np.broadcast_to((np.abs(mand - 1) < 0.1) & (vv > 0.22) & (w > 0.55) & (w < 0.8), shape)] = T["bone"]
    for side in (-1, 1):
        par = np.sqrt(((uu - side * 0.46) / 0.1) ** 2 + ((vv + 0.05) / 0.13) ** 2)
        tissue[np.broadcast_to((par < 1) & (w > 0.6) & (w < 0.85), shape)] = T["parotid"]
        ton = np.sqrt(((uu - side * 0.12) / 0.06) ** 2 + ((vv - 0.2) / 0.06) ** 2)
        tissue[np.broadcast_to((ton < 1) & (w > 0.6) & (w < 0.75), shape)] = T["tonsil"]
    head = np.broadcast_to(w >= 0.85, shape)
    skull_r = np.sqrt((uu / (0.55 * ax / 0.7)) ** 2 + ((vv + 0.05) / (0.6 * bx / 0.65)) ** 2)
    tissue[head & (skull_r < 1.0)] = T["bone"]
    tissue[head & (skull_r < 0.88)] = T["brain"]
    airway_r = np.where(w < 0.7, 0.07, np.where(w < 0.85, 0.12, 0.05))
    airway = np.sqrt(((uu - wiggle) / airway_r) ** 2 + ((vv - 0.13) / (0.8 * airway_r)) ** 2) < 1.0
    airway = np.broadcast_to(airway, shape) & ~head
    tissue[airway] = T["air"]

    # Primary tumour beside the airway, invading it; a lymph node in most cases.
    label = np.zeros(shape, np.uint8)
    side = rng.choice([-1.0, 1.0])
    r = rng.uniform(0.12, 0.25)
    centre = (side * rng.uniform(0.08, 0.2) + shift_u, rng.uniform(0.12, 0.3) + shift_v, rng.uniform(0.4, 0.7))
    radii = (r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), r * rng.uniform(0.9, 1.4))
    wscale = half[0] / (nz * spacing[2])  # w is in units of the CT height, u and v of the half FOV
    gtvt, dist = _blob(rng, u, v, w, centre, radii, 0.2, wscale)
    gtvt &= body & ~np.isin(tissue, [T["bone"], T["marrow"], T["cord"], T["table"]])
    tissue[gtvt] = T["gtvt"]
    label[gtvt] = HEADNECK_LABELS["GTVt"]
    necrosis = gtvt & (dist < 0.4) if r > 0.19 else np.zeros(shape, bool)
    if rng.random() < 0.6:
        nside = side if rng.random() < 0.7 else -side
        ncentre = (nside * rng.uniform(0.3, 0.42) + shift_u, rng.uniform(0.0, 0.2) + shift_v, rng.uniform(0.25, 0.55))
        rn = rng.uniform(0.05, 0.09)
        gtvn, _ = _blob(rng, u, v, w, ncentre, (rn, rn, rn), 0.1, wscale)
        gtvn &= (tissue == T["muscle"]) | (tissue == T["fat"])
        tissue[gtvn] = T["gtvn"]
        label[gtvn] = HEADNECK_LABELS["GTVn"]
    uptake = {"gtvt": rng.uniform(5, 14), "gtvn": rng.uniform(3, 8), "brain": rng.uniform(6, 10)}
    return tissue, label, necrosis, uptake


def headneck_case(index: int, seed: int = 0, shape: Sequence[int] = (128, 128, 48),
                  spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> HeadNeckCase:
    """Generate case ``index`` for ``seed`` (deterministic), in memory."""
    shp, sp = _check(shape, spacing, seed)
    rng = np.random.default_rng([int(seed), int(index)])
    tissue, label, necrosis, uptake = _anatomy(rng, shp, sp)
    ct_affine = _affine(shp, sp, (0.0, 0.0, 0.0))
    # PET: coarser grid, its own origin (not aligned with the CT's voxels), a wider field of view.
    pet_sp = tuple(s * f for s, f in zip(sp, PET_SPACING_FACTOR))
    pet_shape = tuple(int(np.ceil(n * s / p * 1.15)) for n, s, p in zip(shp, sp, pet_sp))
    pet_affine = _affine(pet_shape, pet_sp, rng.uniform(-0.5, 0.5, 3) * np.asarray(pet_sp))

    hu = np.array([HU[t] for t in TISSUES], np.float32)[tissue]
    crng = np.random.default_rng([int(seed), int(index), 1])
    ct = ndimage.gaussian_filter(hu, 0.6) + crng.normal(0, CT_NOISE_HU, shp).astype(np.float32)
    ct = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)

    suv_table = dict(SUV, **uptake)
    suv = np.array([suv_table[t] for t in TISSUES], np.float32)[tissue]
    suv[necrosis] *= 0.4
    sigma_vox = [PET_PSF_FWHM_MM / 2.3548 / s for s in sp]
    suv = ndimage.gaussian_filter(suv, sigma_vox)
    prng = np.random.default_rng([int(seed), int(index), 2])
    pet = resample_to_grid(suv, ct_affine, pet_shape, pet_affine, order=1, cval=0.0)
    pet = pet * (1 + PET_NOISE * prng.standard_normal(pet_shape).astype(np.float32))
    pet = np.abs(pet + prng.normal(0, 0.02, pet_shape).astype(np.float32)) * np.float32(prng.uniform(0.9, 1.1))
    return HeadNeckCase(ct=ct, pet=pet.astype(np.float32), label=label, ct_affine=ct_affine, pet_affine=pet_affine,
                        tissue=tissue)


def write_headneck_phantom(out: Path, cases: int = 12, seed: int = 0, shape: Sequence[int] = (128, 128, 48),
                           spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> Path:
    """Write ``cases`` head-and-neck phantom cases (nnU-Net raw layout) at ``out``; atomic, and
    refuses an ``out`` that exists and is not empty."""
    out = Path(out).expanduser()
    if int(cases) != cases or cases < 1:
        raise ConfigError(f"phantom cases must be a positive integer, got {cases!r}")
    shp, sp = _check(shape, spacing, seed)

    def write_case(k: int, images: Path, labels: Path) -> None:
        case = headneck_case(k, seed, shp, sp)
        cid = f"hn_{k:03d}"
        save_nifti(case.ct, case.ct_affine, images / f"{cid}_0000.nii.gz")
        save_nifti(case.pet, case.pet_affine, images / f"{cid}_0001.nii.gz")
        save_nifti(case.label, case.ct_affine, labels / f"{cid}.nii.gz")

    meta = {
        "name": "semicml_headneck_phantom",
        "description": (f"Synthetic HECKTOR-like head-and-neck CT + PET phantom from "
                        f"semicml.data.phantom_headneck (seed={int(seed)}, CT shape={list(shp)}, "
                        f"CT spacing={list(sp)}, PET on a {PET_SPACING_FACTOR}x coarser grid); not patient data."),
        "channel_names": {str(i): n for i, n in enumerate(CHANNELS)},
        "labels": dict(HEADNECK_LABELS),
        "phantom": {"kind": "headneck", "seed": int(seed), "shape": list(shp), "spacing": list(sp), "version": 1},
    }
    return write_raw_dataset(out, int(cases), write_case, meta)
