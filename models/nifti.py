"""NIfTI decoding that reads each file once, in its stored dtype.

* ``.nii.gz`` (or gzip bytes): decompressed with ISA-L (igzip's inflate) when the ``isal`` package is
  installed, else zlib, then viewed in place as an array (no copy, no float64 volume).
* ``.nii``: memory-mapped (``np.memmap`` at the header's voxel offset), so only the pages of the slices
  we touch are read from disk; the segmentation is read whole because the centre of mass needs it.

The header is parsed by nibabel; scaling (``scl_slope``/``scl_inter``) is applied to the slices we use with
nibabel's own ``apply_read_scaling``, exactly as ``get_fdata`` would.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from dqe.models.errors import InvalidInput, NotFound, UnreadableFile

_isal_zlib: Any
try:  # ISA-L: 2-3x faster than zlib on the same bytes, and its inflate runs without the GIL.
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - exercised only where isal is absent
    _isal_zlib = None

GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 31  # zlib's "gzip container" mode: header, CRC32 and ISIZE checked by the library


def gzip_backend() -> str:
    """Which gzip decoder is in use: ``"isal"`` (ISA-L igzip, when installed) or ``"zlib"``.

    ``DQE_GZIP=zlib`` forces zlib (for comparisons).
    """
    return "isal" if _isal_zlib is not None and os.environ.get("DQE_GZIP", "") != "zlib" else "zlib"


def _decompressobj(backend: str) -> Callable[[], Any]:
    if backend == "isal" and _isal_zlib is not None:
        return lambda: _isal_zlib.decompressobj(GZIP_WBITS)
    return lambda: zlib.decompressobj(GZIP_WBITS)


def gunzip(raw: bytes | memoryview, name: str = "file", backend: str | None = None) -> bytes:
    """Decompress a (possibly multi-member) gzip stream.

    Each member is inflated by one C call on the whole input. With ISA-L that call releases the GIL for
    its whole duration, so the four modalities of a case decode in parallel threads. (``isal.igzip.decompress``
    does not: its Python-level reader loop holds the GIL between small chunks, measured no faster in 4
    threads than sequentially; CPython's zlib behaves the same way.)

    Raises:
        UnreadableFile: truncated or corrupt stream.
    """
    make = _decompressobj(backend or gzip_backend())
    parts: list[bytes] = []
    data: bytes | memoryview = raw
    try:
        while True:
            inflater = make()
            parts.append(inflater.decompress(data))
            if not inflater.eof:
                raise UnreadableFile(f"{name}: gzip stream is truncated", field=name)
            data = inflater.unused_data
            # Another member follows (concatenated gzip files, pigz); trailing zero padding is ignored
            # as gzip(1) does.
            if not data or bytes(data[:2]) != GZIP_MAGIC:
                if data and bytes(data).strip(b"\x00"):
                    raise UnreadableFile(
                        f"{name}: {len(data)} bytes of trailing garbage after the gzip stream", field=name
                    )
                break
    except (zlib.error, ValueError, OSError, EOFError) as exc:
        raise UnreadableFile(f"{name}: gzip stream is truncated or corrupt ({exc})", field=name) from exc
    except Exception as exc:  # isal raises isal_zlib.error, which is not zlib.error
        if _isal_zlib is not None and isinstance(exc, _isal_zlib.error):
            raise UnreadableFile(f"{name}: gzip stream is truncated or corrupt ({exc})", field=name) from exc
        raise
    return parts[0] if len(parts) == 1 else b"".join(parts)


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

    def __getitem__(self, key: Any) -> np.ndarray:
        raw = np.asarray(self.data[key])
        if self.scaled:
            raw = apply_read_scaling(raw, np.float64(self.slope), np.float64(self.inter))
        return raw.astype(np.float64, copy=False)

    def values(self) -> np.ndarray:
        """The whole volume as voxel values: the stored array itself when unscaled (no copy)."""
        if self.scaled:
            return np.asarray(
                apply_read_scaling(np.asarray(self.data), np.float64(self.slope), np.float64(self.inter))
            )
        return np.asarray(self.data)


def affine_usable(affine: np.ndarray) -> bool:
    """Whether a header affine can describe geometry: finite and not singular (NaN ``srow_*`` or a zero
    ``pixdim`` give neither orientation nor spacing; voxels are still used as stored)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        return False
    return bool(abs(np.linalg.det(a[:3, :3])) > 1e-12)


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


def _header_layout(header: nib.Nifti1Header, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    try:
        dtype = header.get_data_dtype()
        shape = tuple(int(s) for s in header.get_data_shape())
        offset = int(header.get_data_offset())
    except Exception as exc:
        raise UnreadableFile(f"{name}: invalid NIfTI header ({exc})", field=name) from exc
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise InvalidInput(f"{name} has voxel type {dtype}; expected integers or floats", field=name)
    return dtype, shape, offset


def _volume(header: nib.Nifti1Header, data: np.ndarray, name: str, source: str) -> Volume:
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


def decode_nifti(raw: bytes | memoryview, name: str = "file", source: str = "") -> Volume:
    """A :class:`Volume` from the bytes of a ``.nii`` or ``.nii.gz`` file (gzip detected by magic).

    Raises:
        UnreadableFile: truncated gzip, not NIfTI, or fewer voxel bytes than the header promises.
        InvalidInput: not 3-D (trailing singleton axes are dropped with a note).
    """
    if bytes(raw[:2]) == GZIP_MAGIC:
        raw = gunzip(raw, name)
    header = _parse_header(raw, name)
    dtype, shape, offset = _header_layout(header, name)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if len(raw) < offset + nbytes:
        raise UnreadableFile(
            f"{name}: file holds {max(len(raw) - offset, 0)} voxel bytes; the header promises {nbytes}",
            field=name,
        )
    data = np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order="F")
    return _volume(header, data, name, source)


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
        head = fh.read(540)
    if head[:2] != GZIP_MAGIC and path.suffix == ".nii":
        return _load_mmap(path, head, name)
    return decode_nifti(path.read_bytes(), name=name, source=str(path))


def _load_mmap(path: Path, head: bytes, name: str) -> Volume:
    """Map the voxels of an uncompressed file read-only: only the pages a slice touches are read."""
    header = _parse_header(head, name)
    dtype, shape, offset = _header_layout(header, name)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < offset + nbytes:
        raise UnreadableFile(
            f"{name}: file holds {max(size - offset, 0)} voxel bytes; the header promises {nbytes}",
            field=name,
        )
    if nbytes == 0:
        data = np.zeros(shape, dtype=dtype, order="F")
    else:
        data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
    return _volume(header, data, name, str(path))


def from_array(array: np.ndarray, name: str, affine: np.ndarray | None = None) -> Volume:
    """A :class:`Volume` wrapping an in-memory array of voxel values (no scaling)."""
    data = np.asarray(array)
    if data.dtype.kind not in "iufb":
        raise InvalidInput(f"{name} has dtype {data.dtype}; expected integers or floats", field=name)
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    data, notes = _squeeze_trailing(data, name)
    return Volume(
        name=name, data=data, affine=np.eye(4) if affine is None else np.asarray(affine, float), notes=notes
    )
