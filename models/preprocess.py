"""Numpy preprocessing with the reference package's semantics, bit for bit.

Everything here works on any object that slices like a 3-D array (a numpy array, a memory map, a nibabel
``ArrayProxy`` or :class:`dqe.models.nifti.Volume`): only the three centre-of-mass slices of each image are
converted to float64, never a whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from dqe.models.contract import CONTRACT_V1, PreprocessingContract
from dqe.models.errors import EmptySegmentation

VIEW_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}


class Sliceable(Protocol):
    """Anything with a 3-D ``shape`` that returns voxel values (scaling applied) when indexed."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any, /) -> Any: ...


def _label_mask(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    mask = seg == labels[0]
    for label in labels[1:]:
        mask |= seg == label
    return mask


def center_of_mass(seg: np.ndarray, contract: PreprocessingContract = CONTRACT_V1) -> tuple[int, int, int]:
    """Centre of mass of the tumour core in voxel indices, each truncated towards zero.

    Identical to ``scipy.ndimage.center_of_mass`` on the float64 core mask followed by ``int()``: the
    numerator and denominator are integers below 2**53, so summing per-axis counts gives the same float64
    quotient without building a float64 volume.

    Raises:
        EmptySegmentation: no voxel carries a tumour label.
    """
    mask = _label_mask(seg, contract.com_labels)
    total = int(np.count_nonzero(mask))
    if total == 0 and contract.com_fallback == "any_label":
        mask = seg > 0
        total = int(np.count_nonzero(mask))
    if total == 0:
        raise EmptySegmentation(
            "segmentation has no tumour voxel (no label > 0); the centre of mass is undefined",
            field="segmentation",
        )
    # Per-axis voxel counts: one full pass for the (x, y) projection, one for z; uint8 with int32
    # accumulators is several times faster than summing a bool array into int64.
    m8 = mask.view(np.uint8)
    proj_xy = m8.sum(axis=2, dtype=np.int32)
    counts = (
        proj_xy.sum(axis=1, dtype=np.int64),
        proj_xy.sum(axis=0, dtype=np.int64),
        m8.sum(axis=(0, 1), dtype=np.int64),
    )
    com = []
    for axis_counts in counts:
        numerator = int(np.dot(np.arange(axis_counts.size, dtype=np.int64), axis_counts))
        com.append(int(float(numerator) / float(total)))
    return com[0], com[1], com[2]


def take_slice(volume: Sliceable, view: str, com: Sequence[int]) -> np.ndarray:
    """The 2-D slice of ``view`` through ``com`` in raw voxel order (the affine is ignored)."""
    x, y, z = com
    if view == "axial":
        return np.asarray(volume[:, :, z])
    if view == "coronal":
        return np.asarray(volume[:, y, :])
    if view == "sagittal":
        return np.asarray(volume[x, :, :])
    raise ValueError(f"view {view!r} is not one of {tuple(VIEW_AXES)}")


def torch_quantile(values: np.ndarray, q: float) -> float:
    """One quantile with ``torch.quantile``'s linear interpolation, on float64 values.

    ``q`` is a fraction in [0, 1]. ``np.percentile`` computes the index slightly differently and can differ
    in the last bit; this follows torch's arithmetic so the scaling limits are the reference's.
    """
    flat = values.ravel()
    rank = q * (flat.size - 1)
    below = int(rank)
    above = math.ceil(rank)
    part = np.partition(flat, (below, above)) if above != below else np.partition(flat, below)
    lo = float(part[below])
    hi = float(part[above])
    weight = rank - below
    if abs(weight) < 0.5:
        return lo + weight * (hi - lo)
    return hi - (hi - lo) * (1.0 - weight)


def scale_percentiles(images: np.ndarray, contract: PreprocessingContract = CONTRACT_V1) -> np.ndarray:
    """Scale float64 images jointly to [0, 1] by their percentiles and round once to float32.

    Follows MONAI ``ScaleIntensityRangePercentiles(channel_wise=False, clip=True)``: when both limits are
    equal MONAI only subtracts the lower limit, and so do we.
    """
    a_min = torch_quantile(images, contract.lower_percentile / 100.0)
    a_max = torch_quantile(images, contract.upper_percentile / 100.0)
    b_min, b_max = 0.0, 1.0
    if a_max - a_min == 0.0:
        scaled = images - a_min
    else:
        scaled = (images - a_min) / (a_max - a_min)
        scaled = scaled * (b_max - b_min) + b_min
        if contract.clip:
            scaled = np.clip(scaled, b_min, b_max)
    return scaled.astype(np.float32)


def scale_minmax(images: np.ndarray, contract: PreprocessingContract = CONTRACT_V1) -> np.ndarray:
    """Channel-wise min/max scaling to [0, 1] (the paper's alternative normalisation; not the default)."""
    lo = images.min(axis=(1, 2), keepdims=True)
    hi = images.max(axis=(1, 2), keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((images - lo) / span).astype(np.float32)


def label_channels(seg_slice: np.ndarray, contract: PreprocessingContract = CONTRACT_V1) -> np.ndarray:
    """The binary label channels (TC, WT, ET by default) of one segmentation slice, as float32 0/1."""
    return np.stack(
        [_label_mask(seg_slice, contract.label_map[name]) for name in contract.label_channels]
    ).astype(np.float32)


def pad_to_size(view: np.ndarray, contract: PreprocessingContract = CONTRACT_V1) -> np.ndarray:
    """Pad ``(C, H, W)`` symmetrically up to ``spatial_size`` (MONAI ``SpatialPad``); never crops."""
    pads = [(0, 0)]
    for size, target in zip(view.shape[1:], contract.spatial_size, strict=True):
        width = max(target - size, 0)
        pads.append((width // 2, width - width // 2))
    if all(p == (0, 0) for p in pads):
        return view
    return np.pad(view, pads, mode=contract.pad_mode)  # type: ignore[call-overload]


def preprocess_view(
    image_slices: Sequence[np.ndarray],
    seg_slice: np.ndarray,
    contract: PreprocessingContract = CONTRACT_V1,
) -> np.ndarray:
    """One view's ``(C, H, W)`` float32 network input from its 2-D image slices and segmentation slice."""
    images = np.stack([np.asarray(s, dtype=np.float64) for s in image_slices])
    seg = np.asarray(seg_slice)
    if contract.nan_to_num:
        images = np.nan_to_num(images)
        if seg.dtype.kind == "f":
            seg = np.nan_to_num(seg)
    if contract.normalization == "percentile":
        scaled = scale_percentiles(images, contract)
    elif contract.normalization == "minmax":
        scaled = scale_minmax(images, contract)
    else:
        raise ValueError(f"normalization {contract.normalization!r} is not 'percentile' or 'minmax'")
    stacked = np.concatenate([scaled, label_channels(seg, contract)], axis=0)
    return pad_to_size(stacked, contract)


def build_views(
    images: Sequence[Sliceable],
    segmentation: Sliceable,
    contract: PreprocessingContract = CONTRACT_V1,
    com: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], tuple[int, int, int]]:
    """All views of one case: a list of ``(C, H, W)`` float32 arrays in ``contract.views`` order.

    ``images`` are the four volumes in ``contract.image_channels`` order. On a 240x240x155 grid every view
    is ``(7, 240, 240)`` and the list stacks into the ``(3, 7, 240, 240)`` batch the network reads.
    """
    if com is None:
        com = center_of_mass(np.asarray(segmentation), contract)
    com3 = (int(com[0]), int(com[1]), int(com[2]))
    views = []
    for view in contract.views:
        image_slices = [take_slice(img, view, com3) for img in images]
        views.append(preprocess_view(image_slices, take_slice(segmentation, view, com3), contract))
    return views, com3
