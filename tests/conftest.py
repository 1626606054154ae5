"""Shared test fixtures: a small phantom dataset, BraTS/MSD copies of it, and the real BraTS path.

Helpers meant for reuse by other test files:
    BRATS18, requires_brats         real data (skipped when absent)
    phantom_root (fixture)          6-case nnU-Net phantom, 64x64x24, session-scoped, read-only
    make_brats_fixture(root, tmp)   BraTS layout written from the phantom
    make_msd_fixture(root, tmp)     MSD layout (4D images) written from the phantom
    phantom_arrays(root, case)      the phantom's own arrays, to compare readers against
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semicml.data.phantom import write_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]
BRATS18 = Path(os.environ.get("SEMICML_BRATS18") or REPO_ROOT.parent / "shared" / "data" / "brats18")
HAVE_BRATS = BRATS18.is_dir() and any(BRATS18.iterdir())
requires_brats = pytest.mark.skipif(
    not HAVE_BRATS, reason=f"BraTS 2018 data not found at {BRATS18} (set SEMICML_BRATS18)"
)

PHANTOM_CASES = 6
PHANTOM_SHAPE = (64, 64, 24)
PHANTOM_SPACING = (1.5, 1.5, 3.0)

# Phantom label values -> BraTS values (enhancing is 4 in BraTS) and -> MSD BrainTumour values.
PHANTOM_TO_BRATS = {0: 0, 1: 1, 2: 2, 3: 4}
PHANTOM_TO_MSD = {0: 0, 1: 2, 2: 1, 3: 3}  # MSD: 1 edema, 2 non-enhancing tumour, 3 enhancing
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `realdata` are skipped when the data is absent, like `requires_brats`.
    if HAVE_BRATS:
        return
    skip = pytest.mark.skip(reason=f"BraTS 2018 data not found at {BRATS18}")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-case nnU-Net phantom (T2, T1ce), 64x64x24. Shared by the session: do not modify."""
    out = tmp_path_factory.mktemp("phantom") / "Dataset900_Phantom"
    return write_phantom(out, cases=PHANTOM_CASES, seed=0, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)


@pytest.fixture
def brats18_root() -> Path:
    if not HAVE_BRATS:
        pytest.skip(f"BraTS 2018 data not found at {BRATS18}")
    return BRATS18


def phantom_meta(phantom_root: Path) -> dict:
    return json.loads((Path(phantom_root) / "dataset.json").read_text())


def phantom_case_ids(phantom_root: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (Path(phantom_root) / "labelsTr").glob("*.nii.gz"))


def phantom_arrays(phantom_root: Path, case_id: str) -> dict[str, np.ndarray]:
    """{channel name: float32 image, "label": uint8 label, "affine": 4x4} read with nibabel."""
    root = Path(phantom_root)
    out: dict[str, np.ndarray] = {}
    for idx, name in phantom_meta(root)["channel_names"].items():
        img = nib.load(str(root / "imagesTr" / f"{case_id}_{int(idx):04d}.nii.gz"))
        out[name] = np.asarray(img.dataobj, dtype=np.float32)
        out["affine"] = img.affine
    out["label"] = np.asarray(nib.load(str(root / "labelsTr" / f"{case_id}.nii.gz")).dataobj)
    return out


def _remap(label: np.ndarray, table: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(table) + 1, np.uint8)
    for k, v in table.items():
        lut[k] = v
    return lut[label]


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def make_brats_fixture(phantom_root: Path, tmp: Path, cases: int | None = None, unlabeled: int = 0) -> Path:
    """Write ``tmp/brats/<case>/<case>_{t2,t1ce}.nii.gz`` (+ ``_seg`` with ET relabelled 3 -> 4).

    ``cases`` limits the number of cases; the last ``unlabeled`` cases get no ``_seg`` file.
    """
    root = Path(tmp) / "brats"
    root.mkdir(parents=True)
    ids = phantom_case_ids(phantom_root)[:cases]
    channels = phantom_meta(phantom_root)["channel_names"]
    for n, cid in enumerate(ids):
        folder = root / cid
        folder.mkdir()
        for idx, name in channels.items():
            shutil.copyfile(Path(phantom_root) / "imagesTr" / f"{cid}_{int(idx):04d}.nii.gz",
                            folder / f"{cid}_{name.lower()}.nii.gz")
        if n < len(ids) - unlabeled:
            img = nib.load(str(Path(phantom_root) / "labelsTr" / f"{cid}.nii.gz"))
            save_nifti(_remap(np.asarray(img.dataobj), PHANTOM_TO_BRATS), img.affine, folder / f"{cid}_seg.nii.gz")
    return root


def make_msd_fixture(phantom_root: Path, tmp: Path, cases: int | None = None, test_cases: int = 1) -> Path:
    """Write an MSD BrainTumour-like dataset: 4D images with channels in the order (T1ce, T2),
    spelled the MSD way ("t1gd", "T2w"), labels renumbered like MSD (1 edema, 2 non-enhancing,
    3 enhancing). The last ``test_cases`` cases go to the ``test`` list (no label)."""
    root = Path(tmp) / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    ids = phantom_case_ids(phantom_root)[:cases]
    training, test = [], []
    for n, cid in enumerate(ids):
        arrays = phantom_arrays(phantom_root, cid)
        stacked = np.stack([arrays["T1ce"], arrays["T2"]], axis=-1)  # MSD order differs on purpose
        if n < len(ids) - test_cases:
            save_nifti(stacked, arrays["affine"], root / "imagesTr" / f"{cid}.nii.gz")
            save_nifti(_remap(arrays["label"], PHANTOM_TO_MSD), arrays["affine"], root / "labelsTr" / f"{cid}.nii.gz")
            training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
        else:
            save_nifti(stacked, arrays["affine"], root / "imagesTs" / f"{cid}.nii.gz")
            test.append(f"./imagesTs/{cid}.nii.gz")
    meta = {
        "name": "BRATS-like phantom", "tensorImageSize": "4D",
        "modality": {"0": "t1gd", "1": "T2w"}, "labels": MSD_LABELS,
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def copy_phantom(phantom_root: Path, tmp: Path, cases: int | None = None) -> Path:
    """A writable copy of (the first ``cases`` cases of) the phantom, for tests that modify it."""
    root = Path(tmp) / "nnunet"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = phantom_meta(phantom_root)
    ids = phantom_case_ids(phantom_root)[:cases]
    for cid in ids:
        for idx in meta["channel_names"]:
            name = f"{cid}_{int(idx):04d}.nii.gz"
            shutil.copyfile(Path(phantom_root) / "imagesTr" / name, root / "imagesTr" / name)
        shutil.copyfile(Path(phantom_root) / "labelsTr" / f"{cid}.nii.gz", root / "labelsTr" / f"{cid}.nii.gz")
    meta["numTraining"] = len(ids)
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def train_phantom_run(phantom_root: Path, work: Path, overrides: dict) -> Path:
    """A tiny-profile run on a 32 x 32 T2 + T1ce store of the phantom (``work/store``) -> ``work/run``."""
    from semicml.config import build_config
    from semicml.data.store import PrepareOptions, prepare_store
    from semicml.engine.trainer import Trainer

    store = prepare_store(phantom_root, work / "store", PrepareOptions(modalities=("T2", "T1ce"), size=32, workers=1),
                          progress=False)
    Trainer(build_config(profile="tiny", overrides=overrides), store, work / "run", progress=False).fit()
    return work / "run"
