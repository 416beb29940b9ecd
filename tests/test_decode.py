"""Decoding: ISA-L and zlib give identical arrays, .nii and .nii.gz identical scores, no float64 volumes."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.errors import UnreadableFile
from dqe.models.nifti import decode_nifti, gunzip, gzip_backend, load_nifti
from dqe.models.phantom import make_phantom, write_case
from tests.conftest import real_cases

BACKENDS = ("isal", "zlib")


def _have_isal() -> bool:
    try:
        import isal  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Two phantoms (int16 images + uint8 labels; float32 images + legacy int16 labels) written both ways."""
    root = tmp_path_factory.mktemp("decode")
    out: dict[str, dict[str, Path]] = {}
    variants = {
        "int16": make_phantom(seed=3),
        "float32": make_phantom(
            seed=4, lesion="lobulated", legacy_labels=True, image_dtype="float32", seg_dtype="int16"
        ),
    }
    for name, ph in variants.items():
        out[f"{name}.nii.gz"] = write_case(ph, root / f"{name}-gz", case_id=f"P-{name}", compressed=True)
        out[f"{name}.nii"] = write_case(ph, root / f"{name}-raw", case_id=f"P-{name}", compressed=False)
    return out


def test_backend_selection_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQE_GZIP", "zlib")
    assert gzip_backend() == "zlib"
    monkeypatch.delenv("DQE_GZIP")
    assert gzip_backend() == ("isal" if _have_isal() else "zlib")


@pytest.mark.skipif(not _have_isal(), reason="isal is not installed")
def test_isal_and_zlib_decode_identical_arrays(phantom_files: dict[str, dict[str, Path]]) -> None:
    for variant in ("int16.nii.gz", "float32.nii.gz"):
        for field, path in phantom_files[variant].items():
            raw = path.read_bytes()
            a = decode_nifti(gunzip(raw, field, "isal"), field)
            b = decode_nifti(gunzip(raw, field, "zlib"), field)
            expected = np.asanyarray(nib.load(str(path)).dataobj.get_unscaled())
            assert a.data.dtype == b.data.dtype == expected.dtype
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.data, expected)


@pytest.mark.real_data
@pytest.mark.skipif(not _have_isal(), reason="isal is not installed")
def test_isal_and_zlib_agree_on_every_real_file() -> None:
    paths = sorted({str(p) for _, files in real_cases() for p in files.values()})
    for path in paths:
        raw = Path(path).read_bytes()
        assert gunzip(raw, path, "isal") == gunzip(raw, path, "zlib"), path


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_member_gzip_is_read_whole(backend: str) -> None:
    if backend == "isal" and not _have_isal():
        pytest.skip("isal is not installed")
    payload = np.arange(100_000, dtype=np.int32).tobytes()
    split = gzip.compress(payload[:123_457]) + gzip.compress(payload[123_457:]) + b"\x00" * 8
    assert gunzip(split, "seg", backend) == payload


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_streams_are_unreadable_files(backend: str) -> None:
    if backend == "isal" and not _have_isal():
        pytest.skip("isal is not installed")
    good = gzip.compress(np.random.default_rng(0).integers(0, 9, 50_000, dtype=np.uint8).tobytes())
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    crc = bytearray(good)
    crc[-6] ^= 0x01  # CRC32 of the member
    for bad in (good[: len(good) // 2], good[:-3], bytes(flipped), bytes(crc), good + b"garbage!"):
        with pytest.raises(UnreadableFile) as err:
            gunzip(bad, "t1c", backend)
        assert err.value.field == "t1c"


def test_nii_is_memory_mapped_and_nii_gz_is_viewed_in_place(
    phantom_files: dict[str, dict[str, Path]],
) -> None:
    raw = load_nifti(phantom_files["int16.nii"]["t1c"], "t1c")
    assert isinstance(raw.data, np.memmap) and raw.data.mode == "r"
    assert raw.data.dtype == np.int16 and raw.data.flags.f_contiguous
    packed = load_nifti(phantom_files["int16.nii.gz"]["t1c"], "t1c")
    assert packed.data.dtype == np.int16 and not packed.data.flags.owndata  # a view on the inflated bytes
    np.testing.assert_array_equal(raw.data, packed.data)
    np.testing.assert_array_equal(raw.affine, packed.affine)


def test_truncated_nii_is_an_unreadable_file(
    phantom_files: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    src = phantom_files["int16.nii"]["t2"]
    cut = tmp_path / "cut-t2.nii"
    cut.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(UnreadableFile):
        load_nifti(cut, "t2")


@pytest.mark.parametrize("variant", ["int16", "float32"])
def test_nii_and_nii_gz_give_identical_scores(engine, phantom_files, variant: str) -> None:
    results = []
    for ext in (".nii.gz", ".nii"):
        files = phantom_files[variant + ext]
        case = Case.from_files(**files)  # type: ignore[arg-type]
        results.append(engine.score_case(case))
    gz, raw = results
    assert gz.views == raw.views
    assert gz.center_of_mass == raw.center_of_mass
    assert gz.mean_stars == raw.mean_stars


def test_images_are_decoded_once_and_reused(phantom_files: dict[str, dict[str, Path]]) -> None:
    files = phantom_files["int16.nii.gz"]
    first = Case.from_files(**files)  # type: ignore[arg-type]
    images = {k: getattr(first, k) for k in ("t1c", "t1", "t2", "flair")}
    second = Case.from_files(**files, images=images)  # type: ignore[arg-type]
    assert all(getattr(second, k) is v for k, v in images.items())


def test_no_float64_volume_is_built(engine, phantom_files: dict[str, dict[str, Path]]) -> None:
    """Decoding keeps the stored dtype; preprocessing converts only the three slices to float64.

    The inflater over-allocates its output buffer while it grows (up to ~2x the int16 bytes), still well
    below one float64 volume (4x).
    """
    vol_f64 = 240 * 240 * 155 * 8
    raw = phantom_files["int16.nii.gz"]["t1c"].read_bytes()
    files = phantom_files["float32.nii.gz"]
    tracemalloc.start()
    try:
        vol = decode_nifti(raw, "t1c")
        _, decode_peak = tracemalloc.get_traced_memory()
        assert vol.data.dtype == np.int16
        assert decode_peak < vol.data.nbytes * 2.5 < vol_f64
        case = Case.from_files(**files)  # type: ignore[arg-type]
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        views, _ = engine.preprocess(case)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(v.dtype == np.float32 for v in views)
    assert peak - base < vol_f64 / 2, f"preprocessing allocated {(peak - base) / 1e6:.0f} MB"
