"""NIfTI decoding that reads each file once, in its stored dtype.

* ``.nii.gz`` (or gzip bytes): decompressed with ISA-L's igzip when the ``isal`` package is installed, else
  zlib, then viewed in place as an array (no copy, no float64 volume).
* ``.nii``: memory-mapped by nibabel, so only the pages of the slices we touch are read from disk.

The header is parsed by nibabel; scaling (``scl_slope``/``scl_inter``) is applied to the slices we use with
nibabel's own ``apply_read_scaling``, exactly as ``get_fdata`` would.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from models.errors import InvalidInput, NotFound, UnreadableFile

try:  # ISA-L igzip: 2-3x faster than zlib for the same bytes.
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - exercised only where isal is absent
    _igzip = None

GZIP_MAGIC = b"\x1f\x8b"


def gzip_backend() -> str:
    """Which gzip decoder is in use: ``"isal"`` or ``"zlib"``."""
    return "isal" if _igzip is not None and os.environ.get("DQE_GZIP", "") != "zlib" else "zlib"


def gunzip(raw: bytes | memoryview, name: str = "file", backend: str | None = None) -> bytes:
    """Decompress a (possibly multi-member) gzip stream.

    Raises:
        UnreadableFile: truncated or corrupt stream.
    """
    backend = backend or gzip_backend()
    try:
        if backend == "isal" and _igzip is not None:
            return _igzip.decompress(raw)
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise UnreadableFile(f"{name}: gzip stream is truncated or corrupt ({exc})", field=name) from exc


@dataclass(frozen=True, eq=False)
class Volume:
    """One decoded 3-D volume: stored voxels (unscaled), scaling and geometry.

    Indexing returns float64 voxel values with the NIfTI scaling applied, like ``get_fdata()[key]``, for
    just the voxels asked for.
    """

    name: str
    data: np.ndarray
    affine: np.ndarray
    slope: float = 1.0
    inter: float = 0.0
    zooms: tuple[float, ...] = (1.0, 1.0, 1.0)
    source: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def scaled(self) -> bool:
        return not (self.slope == 1.0 and self.inter == 0.0)

    def __getitem__(self, key: object) -> np.ndarray:
        raw = np.asarray(self.data[key])  # type: ignore[index]
        if self.scaled:
            raw = apply_read_scaling(raw, np.float64(self.slope), np.float64(self.inter))
        return raw.astype(np.float64, copy=False)

    def values(self) -> np.ndarray:
        """The whole volume as voxel values: the stored array itself when unscaled (no copy)."""
        if self.scaled:
            return np.asarray(apply_read_scaling(np.asarray(self.data), np.float64(self.slope), np.float64(self.inter)))
        return np.asarray(self.data)


def _squeeze_trailing(data: np.ndarray, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    notes: tuple[str, ...] = ()
    if data.ndim > 3 and all(s == 1 for s in data.shape[3:]):
        notes = (f"{name}: trailing singleton axes of shape {tuple(data.shape)} dropped",)
        data = data.reshape(data.shape[:3], order="A")
    if data.ndim != 3:
        raise InvalidInput(f"{name} has shape {tuple(data.shape)}; expected a 3-D volume", field=name)
    return data, notes


def _scaling(header: nib.Nifti1Header) -> tuple[float, float]:
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _parse_header(raw: bytes | memoryview, name: str) -> nib.Nifti1Header:
    if len(raw) < 348:
        raise UnreadableFile(f"{name}: {len(raw)} bytes is too short for a NIfTI header", field=name)
    sizeof = int.from_bytes(bytes(raw[:4]), "little")
    if sizeof not in (348, 540):
        sizeof = int.from_bytes(bytes(raw[:4]), "big")
    header_cls = nib.Nifti2Header if sizeof == 540 else nib.Nifti1Header
    try:
        return header_cls.from_fileobj(io.BytesIO(bytes(raw[: 540 if sizeof == 540 else 348])))
    except Exception as exc:  # nibabel raises HeaderDataError, ValueError, ...
        raise UnreadableFile(f"{name}: not a NIfTI-1/2 file ({exc})", field=name) from exc


def decode_nifti(raw: bytes | memoryview, name: str = "file", source: str = "") -> Volume:
    """A :class:`Volume` from the bytes of a ``.nii`` or ``.nii.gz`` file (gzip detected by magic).

    Raises:
        UnreadableFile: truncated gzip, not NIfTI, or fewer voxel bytes than the header promises.
        InvalidInput: not 3-D (trailing singleton axes are dropped with a note).
    """
    if bytes(raw[:2]) == GZIP_MAGIC:
        raw = gunzip(raw, name)
    header = _parse_header(raw, name)
    try:
        dtype = header.get_data_dtype()
        shape = tuple(int(s) for s in header.get_data_shape())
        offset = int(header.get_data_offset())
    except Exception as exc:
        raise UnreadableFile(f"{name}: invalid NIfTI header ({exc})", field=name) from exc
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise InvalidInput(f"{name} has voxel type {dtype}; expected integers or floats", field=name)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if len(raw) < offset + nbytes:
        raise UnreadableFile(
            f"{name}: file holds {max(len(raw) - offset, 0)} voxel bytes; the header promises {nbytes}", field=name
        )
    data = np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order="F")
    data, notes = _squeeze_trailing(data, name)
    slope, inter = _scaling(header)
    return Volume(
        name=name,
        data=data,
        affine=np.asarray(header.get_best_affine(), dtype=np.float64),
        slope=slope,
        inter=inter,
        zooms=tuple(float(z) for z in header.get_zooms()[:3]),
        source=source,
        notes=notes,
    )


def load_nifti(path: str | Path, name: str = "file") -> Volume:
    """A :class:`Volume` from a file: ``.nii`` memory-mapped, anything else read and decoded once.

    Raises:
        NotFound: the path does not exist.
        UnreadableFile: see :func:`decode_nifti`.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{name}: file {str(path)!r} does not exist", field=name)
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic != GZIP_MAGIC and path.suffix == ".nii":
        return _load_mmap(path, name)
    return decode_nifti(path.read_bytes(), name=name, source=str(path))


def _load_mmap(path: Path, name: str) -> Volume:
    try:
        img = nib.load(str(path), mmap="r")
        proxy = img.dataobj
        data = np.asanyarray(proxy.get_unscaled())  # a numpy memmap: pages are read on touch
        header = img.header
    except Exception as exc:
        raise UnreadableFile(f"{name}: not a readable NIfTI file ({exc})", field=name) from exc
    if data.dtype.fields is not None or data.dtype.kind not in "iuf":
        raise InvalidInput(f"{name} has voxel type {data.dtype}; expected integers or floats", field=name)
    data, notes = _squeeze_trailing(data, name)
    slope, inter = _scaling(header)
    return Volume(
        name=name,
        data=data,
        affine=np.asarray(img.affine, dtype=np.float64),
        slope=slope,
        inter=inter,
        zooms=tuple(float(z) for z in header.get_zooms()[:3]),
        source=str(path),
        notes=notes,
    )


def from_array(array: np.ndarray, name: str, affine: np.ndarray | None = None) -> Volume:
    """A :class:`Volume` wrapping an in-memory array of voxel values (no scaling)."""
    data = np.asarray(array)
    if data.dtype.kind not in "iufb":
        raise InvalidInput(f"{name} has dtype {data.dtype}; expected integers or floats", field=name)
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    data, notes = _squeeze_trailing(data, name)
    return Volume(name=name, data=data, affine=np.eye(4) if affine is None else np.asarray(affine, float), notes=notes)
