"""NIfTI decoding that reads each file once, in its stored dtype.

* ``.nii.gz`` (or gzip bytes): decompressed with ISA-L (igzip's inflate) when the ``isal`` package is
  installed, else zlib, then viewed in place as an array (no copy, no float64 volume).
* ``.nii``: memory-mapped (``np.memmap`` at the header's voxel offset), so only the pages of the slices
  we touch are read from disk; the segmentation is read whole because the centre of mass needs it.

The header is parsed by nibabel; scaling (``scl_slope``/``scl_inter``) is applied to the slices we use with
nibabel's own ``apply_read_scaling``, exactly as ``get_fdata`` would.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from dqe.models.buffers import DEFAULT_POOL, BufferPool
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


# Inflation reads the input in slices that grow from _IN_FIRST to _IN_MAX bytes within a member, so the copy
# zlib makes of the data after a member's end (``unused_data``) costs at most about twice the member's own size
# plus _IN_FIRST: the whole stream inflates in time linear in its size, whatever the member count.
_IN_FIRST = 512
_IN_MAX = 1024 * 1024
_OUT_CHUNK = 4 * 1024 * 1024  # bytes of output per inflate call (and between deadline checks)
_CHECK_EVERY_MEMBERS = 1024  # deadline/cancel checks while skipping through many tiny members
# No writer makes tiny members (bgzip: one per 64 KiB of output; pigz, concatenated files: a few), so a
# stream may have at most 64 members plus one per 4 KiB of output; beyond that it is refused at once.
_FREE_MEMBERS = 64
_BYTES_PER_MEMBER = 4096
_SLACK = 64 * 1024  # bytes a file may inflate to beyond what its header declares (padding) before refusal
MAX_VOXEL_OFFSET = 16 * 1024 * 1024  # header + extensions; beyond this the file is refused
DEFAULT_MAX_VOXELS = 32 * 1024 * 1024
"""Default voxel limit per volume: 33.5 M voxels, 3.8x a BraTS volume (240 x 240 x 155 = 8.9 M); 256^3 and
512 x 512 x 128 fit."""


@dataclass(frozen=True)
class DecodeLimits:
    """Budgets for decoding one volume; every check runs on the header, before any voxel is inflated.

    Attributes:
        max_voxels: most voxels in one volume (product of all dimensions); 0 = no limit.
        max_side: longest axis in voxels; 0 = no limit.
        max_file_bytes: largest compressed or uncompressed file read from disk; 0 = no limit.
        reserve: called with the number of bytes about to be allocated for an inflated file, before the
            allocation; raises (e.g. :class:`dqe.models.errors.Overloaded`) to refuse.
        check: called between inflation chunks (at most every 4 MiB of output or 1024 gzip members); raises
            (e.g. a deadline or cancellation error) to stop decoding.
        pool: where the buffers of read and inflated files come from (reused across calls, see
            :mod:`dqe.models.buffers`); ``None`` = the process-wide :data:`dqe.models.buffers.DEFAULT_POOL`.
    """

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_side: int = 0
    max_file_bytes: int = 0
    reserve: Callable[[int], None] | None = None
    check: Callable[[], None] | None = None
    pool: BufferPool | None = None

    def buffer(self, nbytes: int) -> np.ndarray:
        """A ``uint8`` buffer of ``nbytes`` from :attr:`pool` (contents undefined)."""
        return (self.pool or DEFAULT_POOL).take(nbytes)


def _inflate_chunks(
    raw: bytes | memoryview, name: str, backend: str, check: Callable[[], None] | None
) -> Iterator[bytes]:
    """The output of every gzip member of ``raw`` in chunks of at most 4 MiB (linear time, see above).

    Raises:
        UnreadableFile: truncated or corrupt stream, or trailing garbage.
    """
    make = _decompressobj(backend)
    view = memoryview(raw).cast("B") if not isinstance(raw, memoryview) else raw.cast("B")
    size = len(view)
    pos = 0
    members = 0
    produced = 0
    while True:
        inflater = make()
        members += 1
        if members > _FREE_MEMBERS + produced // _BYTES_PER_MEMBER:
            raise UnreadableFile(
                f"{name}: gzip stream has more than {members - 1} members for {produced} bytes of output "
                f"(at most {_FREE_MEMBERS} plus one per {_BYTES_PER_MEMBER} bytes); refused",
                field=name,
            )
        if check is not None and members % _CHECK_EVERY_MEMBERS == 0:
            check()
        step = _IN_FIRST
        while not inflater.eof:
            if pos >= size:
                raise UnreadableFile(f"{name}: gzip stream is truncated", field=name)
            end = min(size, pos + step)
            out = inflater.decompress(view[pos:end], _OUT_CHUNK)
            pos = end
            step = min(step * 2, _IN_MAX)
            while True:
                if out:
                    produced += len(out)
                    yield out
                    if check is not None:
                        check()
                tail = inflater.unconsumed_tail
                if inflater.eof or not tail:
                    break
                out = inflater.decompress(tail, _OUT_CHUNK)
        pos -= len(inflater.unused_data)
        # Another member follows (concatenated gzip files, pigz); trailing zero padding is ignored as gzip(1)
        # does.
        if pos >= size or bytes(view[pos : pos + 2]) != GZIP_MAGIC:
            if pos < size and bytes(view[pos:]).strip(b"\x00"):
                raise UnreadableFile(
                    f"{name}: {size - pos} bytes of trailing garbage after the gzip stream", field=name
                )
            return


@contextlib.contextmanager
def _gzip_errors(name: str) -> Iterator[None]:
    """Maps zlib/isal errors to :class:`UnreadableFile` (without chaining: no traceback keeps buffers alive)."""
    try:
        yield
    except (zlib.error, ValueError, OSError, EOFError) as exc:
        raise UnreadableFile(f"{name}: gzip stream is truncated or corrupt ({exc})", field=name) from None
    except Exception as exc:  # isal raises isal_zlib.error, which is not zlib.error
        if _isal_zlib is not None and isinstance(exc, _isal_zlib.error):
            raise UnreadableFile(f"{name}: gzip stream is truncated or corrupt ({exc})", field=name) from None
        raise


def gunzip(raw: bytes | memoryview, name: str = "file", backend: str | None = None) -> bytes:
    """Decompress a (possibly multi-member) gzip stream, in time linear in its size whatever the member count.

    No size limit: servers decode through :func:`decode_nifti`, which caps the output by the NIfTI header.

    Raises:
        UnreadableFile: truncated or corrupt stream.
    """
    with _gzip_errors(name):
        return b"".join(_inflate_chunks(raw, name, backend or gzip_backend(), None))


def _inflate_nifti(raw: bytes | memoryview, name: str, limits: DecodeLimits) -> np.ndarray:
    """Inflate a gzipped NIfTI file into one buffer of exactly the size its header declares.

    The first chunk is inflated, the header parsed and checked against ``limits``, the output reserved with
    ``limits.reserve``; only then is the rest inflated, at most the declared size plus 64 KiB.

    Raises:
        UnreadableFile: corrupt stream, not NIfTI, fewer voxel bytes than declared.
        InvalidInput: over a limit, or more bytes than the header declares.
    """
    with _gzip_errors(name):
        chunks = _inflate_chunks(raw, name, gzip_backend(), limits.check)
        head = bytearray()
        for chunk in chunks:
            head += chunk
            if len(head) >= 540:
                break
        header = _parse_header(head, name)
        dtype, shape, offset = _header_layout(header, name, limits)
        total = offset + math.prod(shape) * dtype.itemsize
        if limits.reserve is not None:
            limits.reserve(total)
        out = limits.buffer(total)
        filled = min(len(head), total)
        out[:filled] = np.frombuffer(head, dtype=np.uint8, count=filled)
        extra = len(head) - filled
        del head
        for chunk in chunks:
            take = min(len(chunk), total - filled)
            if take:
                out[filled : filled + take] = np.frombuffer(chunk, dtype=np.uint8, count=take)
                filled += take
            extra += len(chunk) - take
            if extra > _SLACK:
                raise InvalidInput(
                    f"{name} inflates to more than the {total} bytes its header declares; refused",
                    field=name,
                )
    if filled < total:
        raise UnreadableFile(
            f"{name}: file holds {max(filled - offset, 0)} voxel bytes; the header promises {total - offset}",
            field=name,
        )
    return out


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


def _parse_header(raw: bytes | bytearray | memoryview | np.ndarray, name: str) -> nib.Nifti1Header:
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


def _header_layout(
    header: nib.Nifti1Header, name: str, limits: DecodeLimits | None = None
) -> tuple[np.dtype, tuple[int, ...], int]:
    """Voxel dtype, shape and byte offset from a header, checked against ``limits``.

    Raises:
        UnreadableFile: the header cannot be interpreted.
        InvalidInput: negative dimensions, voxel type not integer/float, a volume over the voxel or side
            limits, a voxel offset beyond 16 MiB.
    """
    limits = limits or DecodeLimits()
    try:
        dtype = header.get_data_dtype()
        dims = [int(d) for d in header["dim"]]
        offset = int(header.get_data_offset())
    except Exception as exc:
        raise UnreadableFile(f"{name}: invalid NIfTI header ({str(exc)[:200]})", field=name) from None
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise InvalidInput(f"{name} header has dim[0] = {ndim}; expected 1-7 dimensions", field=name)
    shape = tuple(dims[1 : ndim + 1])
    if any(s < 0 for s in shape):
        raise InvalidInput(f"{name} header has negative dimensions {list(shape)}", field=name)
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise InvalidInput(f"{name} has voxel type {dtype}; expected integers or floats", field=name)
    voxels = math.prod(shape)
    if limits.max_voxels and voxels > limits.max_voxels:
        raise InvalidInput(
            f"{name} declares {list(shape)} = {voxels} voxels; this server accepts at most "
            f"{limits.max_voxels} per volume",
            field=name,
        )
    if limits.max_side and shape and max(shape) > limits.max_side:
        raise InvalidInput(
            f"{name} declares shape {list(shape)}; this server accepts at most {limits.max_side} voxels "
            "along an axis",
            field=name,
        )
    if not 0 <= offset <= MAX_VOXEL_OFFSET:
        raise InvalidInput(
            f"{name} header has voxel offset {offset}; expected 0-{MAX_VOXEL_OFFSET}", field=name
        )
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


def decode_nifti(
    raw: bytes | memoryview, name: str = "file", source: str = "", limits: DecodeLimits | None = None
) -> Volume:
    """A :class:`Volume` from the bytes of a ``.nii`` or ``.nii.gz`` file (gzip detected by magic).

    Gzip input is inflated only after its header passed ``limits`` (default :class:`DecodeLimits`: at most
    32 Mi voxels per volume), and never beyond the size the header declares.

    Raises:
        UnreadableFile: truncated gzip, not NIfTI, or fewer voxel bytes than the header promises.
        InvalidInput: not 3-D (trailing singleton axes are dropped with a note), over a limit.
        whatever ``limits.reserve`` / ``limits.check`` raise.
    """
    limits = limits or DecodeLimits()
    buffer: bytes | memoryview | np.ndarray = raw
    if bytes(raw[:2]) == GZIP_MAGIC:
        buffer = _inflate_nifti(raw, name, limits)
    header = _parse_header(buffer, name)
    dtype, shape, offset = _header_layout(header, name, limits)
    nbytes = math.prod(shape) * dtype.itemsize
    if len(buffer) < offset + nbytes:
        raise UnreadableFile(
            f"{name}: file holds {max(len(buffer) - offset, 0)} voxel bytes; the header promises {nbytes}",
            field=name,
        )
    data = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, order="F")
    return _volume(header, data, name, source)


def load_nifti(path: str | Path, name: str = "file", limits: DecodeLimits | None = None) -> Volume:
    """A :class:`Volume` from a file: ``.nii`` memory-mapped, anything else read and decoded once.

    Raises:
        NotFound: the path does not exist.
        UnreadableFile, InvalidInput: see :func:`decode_nifti`.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{name}: file {str(path)!r} does not exist", field=name)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return load_nifti_fd(fd, name, str(path), limits, mmap_ok=path.suffix == ".nii")
    finally:
        os.close(fd)


def load_nifti_fd(
    fd: int,
    name: str = "file",
    source: str = "",
    limits: DecodeLimits | None = None,
    mmap_ok: bool = True,
) -> Volume:
    """A :class:`Volume` from an open regular file: uncompressed files are memory-mapped (only the pages a
    slice touches are read), gzip files read once (at most ``limits.max_file_bytes``) and decoded.

    The descriptor is only read (the caller keeps and closes it); the mapping stays valid after it closes.

    Raises:
        InvalidInput: not a regular file, larger than ``limits.max_file_bytes``, over a decode limit.
        UnreadableFile: see :func:`decode_nifti`.
    """
    limits = limits or DecodeLimits()
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"{name}: {source[:200]!r} is not a regular file", field=name)
    if limits.max_file_bytes and info.st_size > limits.max_file_bytes:
        raise InvalidInput(
            f"{name}: file is {info.st_size} bytes; this server reads at most {limits.max_file_bytes}",
            field=name,
        )
    head = os.pread(fd, 540, 0)
    if head[:2] != GZIP_MAGIC and mmap_ok:
        return _load_mmap(fd, info.st_size, head, name, source, limits)
    raw = limits.buffer(info.st_size)
    view = raw.data
    got = 0
    while got < len(raw):
        n = os.preadv(fd, [view[got:]], got)
        if n <= 0:
            break
        got += n
    del view
    return decode_nifti(raw.data[:got], name=name, source=source, limits=limits)


def _load_mmap(fd: int, size: int, head: bytes, name: str, source: str, limits: DecodeLimits) -> Volume:
    """Map the voxels of an uncompressed file read-only: only the pages a slice touches are read."""
    header = _parse_header(head, name)
    dtype, shape, offset = _header_layout(header, name, limits)
    nbytes = math.prod(shape) * dtype.itemsize
    if size < offset + nbytes:
        raise UnreadableFile(
            f"{name}: file holds {max(size - offset, 0)} voxel bytes; the header promises {nbytes}",
            field=name,
        )
    if nbytes == 0:
        data = np.zeros(shape, dtype=dtype, order="F")
    else:
        # np.memmap maps the file through its own duplicate of the descriptor: the very file opened.
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
    return _volume(header, data, name, source)


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
