"""Hostile inputs beyond NIfTI corruption: each is refused with a one-line error naming the file
and the problem, nothing is written (neither under --out nor beside it), memory stays bounded.

Plus property-based tests (hypothesis) over NIfTI header fields: the reader either returns a
volume whose data matches its header, with a finite affine and positive voxel sizes, or raises
DataError; never another exception, never an allocation the file does not back."""

from __future__ import annotations

import gzip
import json
import io
import os
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import copy_phantom, make_msd_fixture
from faults import run_cli, tree
from semicml.data.readers.nifti import MAX_VOXELS, load_volume
from semicml.errors import DataError


def refused(args, monkeypatch, capsys, *fragments: str) -> str:
    rc, _, err = run_cli(args, monkeypatch, capsys)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error:")]  # (progress bars aside)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def prepare_refused(root: Path, tmp_path: Path, monkeypatch, capsys, *fragments: str) -> None:
    """`prepare` of ``root`` into tmp_path/work/store fails as one line and writes nothing at all."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    before_root, before_work = tree(root), tree(work)
    refused(["prepare", root, work / "store", "--modalities", "T2", "--size", "32", "--workers", "1"],
            monkeypatch, capsys, *fragments)
    assert tree(work) == before_work and tree(root) == before_root


@pytest.fixture
def msd(phantom_root, tmp_path):
    return make_msd_fixture(phantom_root, tmp_path / "msd", cases=2, test_cases=0)


@pytest.mark.parametrize("entry", ["../outside.nii.gz", "/etc/passwd", "./imagesTr/a\u0000b.nii.gz",
                                   "imagesTr/../../x.nii.gz", "./imagesTr/..nii.gz"])
def test_msd_paths_out_of_the_dataset_are_refused(entry, msd, tmp_path, monkeypatch, capsys):
    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"][0]["image"] = entry
    (msd / "dataset.json").write_text(json.dumps(meta))
    prepare_refused(msd, tmp_path, monkeypatch, capsys, "dataset.json" if ".." in entry[:-8].split("/") or
                    entry.startswith("/") or "\u0000" in entry else "case name")


def test_symlink_out_of_the_root_to_a_non_nifti_is_refused(phantom_root, tmp_path, monkeypatch, capsys):
    root = copy_phantom(phantom_root, tmp_path / "src", cases=2)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    victim = root / "imagesTr" / "phantom_000_0000.nii.gz"
    victim.unlink()
    victim.symlink_to(secret)
    prepare_refused(root, tmp_path, monkeypatch, capsys, "phantom_000_0000", "link out of the dataset root")


def test_symlink_to_a_device_is_refused(phantom_root, tmp_path, monkeypatch, capsys):
    root = copy_phantom(phantom_root, tmp_path / "src", cases=2)
    victim = root / "labelsTr" / "phantom_001.nii.gz"
    victim.unlink()
    victim.symlink_to("/dev/zero")
    prepare_refused(root, tmp_path, monkeypatch, capsys, "phantom_001.nii.gz", "not a regular file")


def test_huge_dataset_json_is_refused_unread(phantom_root, tmp_path, monkeypatch, capsys):
    root = copy_phantom(phantom_root, tmp_path / "src", cases=1)
    with open(root / "dataset.json", "r+b") as fh:  # 100 MB (sparse: cheap to make)
        fh.truncate(100 * 2**20)
    tracemalloc.start()
    refused(["prepare", root, tmp_path / "store", "--modalities", "T2", "--size", "32"], monkeypatch, capsys,
            "dataset.json", "100.0 MB")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20 and not (tmp_path / "store").exists()


def test_deeply_nested_dataset_json_is_refused(phantom_root, tmp_path, monkeypatch, capsys):
    root = copy_phantom(phantom_root, tmp_path / "src", cases=1)
    (root / "dataset.json").write_text('{"a": ' * 10_000 + "1" + "}" * 10_000)
    prepare_refused(root, tmp_path, monkeypatch, capsys, "dataset.json", "nested too deeply")


def test_float_label_with_half_values_is_refused(phantom_root, tmp_path, monkeypatch, capsys):
    root = copy_phantom(phantom_root, tmp_path / "src", cases=2)
    path = root / "labelsTr" / "phantom_001.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[data > 0] = 0.5
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    prepare_refused(root, tmp_path, monkeypatch, capsys, "phantom_001.nii.gz", "non-integer")


def _header(shape, dtype=np.float32) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr["dim"] = [len(shape), *shape, *[1] * (7 - len(shape))]
    hdr["vox_offset"] = 352
    hdr["pixdim"] = [1, 1, 1, 1, 1, 1, 1, 1]
    hdr.set_sform(np.eye(4), code=1)
    return hdr


def _raw(hdr: nib.Nifti1Header, payload: bytes, vox_offset: int = 352) -> bytes:
    block = hdr.binaryblock
    return block + b"\0" * max(0, vox_offset - len(block)) + payload


@pytest.mark.parametrize("gz", [True, False])
def test_header_claiming_2_31_voxels_is_refused_before_allocating(gz, tmp_path):
    path = tmp_path / ("huge.nii.gz" if gz else "huge.nii")
    raw = _raw(_header((2048, 1024, 1024)), b"\1" * 4096)  # 2^31 voxels claimed, 4 KB present
    path.write_bytes(gzip.compress(raw) if gz else raw)
    tracemalloc.start()
    with pytest.raises(DataError, match=r"claims 2147483648 voxels") as info:
        load_volume(path, "image")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.value.path == path and peak < 8 * 2**20


@pytest.mark.parametrize("gz", [True, False])
def test_header_claiming_more_than_the_file_holds_is_refused(gz, tmp_path):
    path = tmp_path / ("big.nii.gz" if gz else "big.nii")
    shape = (512, 512, 512)  # 2^27 voxels: under the limit, 512 MB as float32; the file holds 4 KB
    assert np.prod(shape) <= MAX_VOXELS
    raw = _raw(_header(shape), b"\1" * 4096)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    tracemalloc.start()
    with pytest.raises(DataError, match="truncated"):
        load_volume(path, "image")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20


DTYPE_CODES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 77]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ndim=st.integers(-1, 8), dims=st.lists(st.integers(-2, 70_000), min_size=7, max_size=7),
       datatype=st.sampled_from(DTYPE_CODES), vox_offset=st.sampled_from([0, 100, 352, 353, 400, 2**31]),
       pixdim=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1.0)), min_size=8,
                       max_size=8),
       slope=st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -2.0]),
       qform=st.integers(0, 4), sform=st.integers(0, 4), payload=st.integers(0, 5000), gz=st.booleans())
# found by a CI run: dim[0] = -1 gave a header shape () but voxels of shape (0,)
@example(ndim=-1, dims=[0] * 7, datatype=1, vox_offset=0, pixdim=[1.0] * 8, slope=0.0, qform=0, sform=0,
         payload=0, gz=True)
# found by the property test in a local run: dim = [2, 0, 0, ...] read as header shape (0, 0), voxels (0,)
@example(ndim=2, dims=[0] * 7, datatype=2, vox_offset=0, pixdim=[1.0] * 8, slope=0.0, qform=0, sform=0, payload=0,
         gz=True)
def test_reader_never_crashes_nor_overallocates_on_any_header(tmp_path_factory, ndim, dims, datatype, vox_offset,
                                                             pixdim, slope, qform, sform, payload, gz):
    hdr = nib.Nifti1Header()
    for field, value in (("dim", [ndim, *dims]), ("datatype", datatype), ("vox_offset", vox_offset),
                         ("pixdim", pixdim), ("scl_slope", slope), ("qform_code", qform), ("sform_code", sform)):
        try:
            hdr[field] = value
        except (ValueError, OverflowError, TypeError):
            return  # not representable in the header's binary fields at all
    path = tmp_path_factory.mktemp("h") / ("x.nii.gz" if gz else "x.nii")
    raw = _raw(hdr, bytes(range(256)) * (payload // 256) + b"\7" * (payload % 256), vox_offset=352)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    tracemalloc.start()
    try:
        vol = load_volume(path, "image")
    except DataError as err:
        assert err.path == path and "\n" not in str(err)
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 * 2**20 + 4 * len(raw), peak  # bounded by what the file holds
    shape = vol.header.get_data_shape()
    assert vol.data.shape == tuple(shape) and vol.data.size <= MAX_VOXELS
    assert np.isfinite(vol.affine).all()
    assert all(z > 0 and np.isfinite(z) for z in vol.header.get_zooms()[:3])


@pytest.mark.parametrize("gz", [False, True])
def test_zero_voxel_size_without_sform_is_refused_not_read_as_1mm(tmp_path, gz):
    """nibabel's header check turns pixdim 0 into 1 mm (a made-up scale); with an sform the
    voxels are placed without pixdim, so that file stands."""
    img = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([1.5, 1.5, 3.0, 1.0]))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][1:4] = 0
    path = tmp_path / ("x.nii.gz" if gz else "x.nii")
    raw = img.header.binaryblock + b"\0" * 4 + np.ones((4, 5, 6), np.float32).tobytes(order="F")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=r"voxel sizes \(pixdim\) \[0\.0, 0\.0, 0\.0\] mm and no sform") as err:
        load_volume(path, "image")
    assert err.value.path == path
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    hdr.set_sform(np.diag([1.5, 1.5, 3.0, 1.0]), code=1)
    raw = hdr.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw) if gz else raw)
    vol = load_volume(path, "image")
    np.testing.assert_allclose(np.diag(vol.affine)[:3], [1.5, 1.5, 3.0])


def test_property_test_would_see_a_crash(tmp_path):
    """The property above is not vacuous: a valid small file loads, so the 'return' path is not all
    it exercises."""
    path = tmp_path / "ok.nii"
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path.write_bytes(_raw(_header((2, 3, 4)), data.tobytes(order="F")))
    vol = load_volume(path, "image")
    assert np.array_equal(vol.data, data)
    assert os.path.getsize(path) == 352 + 96
