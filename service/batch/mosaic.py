"""What the model saw, as a PNG: the centre-of-mass slices of the four images and the label overlay.

Rows are the contract's views (axial, coronal, sagittal) through the centre of mass; columns are t1c, t1,
t2, flair, the segmentation over FLAIR and, when ground truth exists, the reference over FLAIR. Label colours
follow the DQE paper (Fig. 1): necrosis (1) red, enhancing tumour (3, legacy 4) yellow, edema (2) green.

Slices are taken in raw voxel order (as the model reads them) and rotated 90 degrees for display; each panel
is padded to the largest slice so the grid is regular. Images are windowed per panel at the 0.5/99.5
percentiles into 64 grey levels; with 4 colour classes that is exactly one 256-entry PNG palette, so the image
is built as indices with NumPy and written by Pillow (a matplotlib dependency) without quantising.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from dqe.models.preprocess import take_slice

LABEL_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (255, 0, 0),  # necrosis: red
    2: (0, 200, 0),  # edema: green
    3: (255, 230, 0),  # enhancing tumour: yellow
    4: (255, 230, 0),  # legacy enhancing label
}
ALPHA = 0.55
GAP = 2
HEADER = 14
LEVELS = 64  # grey levels per colour class: 4 classes x 64 levels = one 256-entry PNG palette
_CLASS_OF_LABEL = np.zeros(256, dtype=np.uint8)
_CLASS_OF_LABEL[[1, 2, 3, 4]] = [1, 2, 3, 3]
_CLASS_COLOURS = ((0, 0, 0), LABEL_COLOURS[1], LABEL_COLOURS[2], LABEL_COLOURS[3])


def _palette() -> np.ndarray:
    """``(256, 3)`` uint8: entry ``c * 64 + g`` is grey level ``g`` blended with colour class ``c``."""
    grey = (np.arange(LEVELS, dtype=np.float32) * (255.0 / (LEVELS - 1)))[:, None].repeat(3, axis=1)
    blocks = [grey]
    for colour in _CLASS_COLOURS[1:]:
        blocks.append((1 - ALPHA) * grey + ALPHA * np.asarray(colour, dtype=np.float32))
    return np.round(np.concatenate(blocks)).astype(np.uint8)


PALETTE = _palette()


def _window(slice_: np.ndarray) -> np.ndarray:
    """Grey level 0..63 of each voxel, windowed at the slice's 0.5/99.5 percentiles."""
    values = np.nan_to_num(np.asarray(slice_, dtype=np.float64))
    lo, hi = np.percentile(values, (0.5, 99.5))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round(np.clip((values - lo) / (hi - lo), 0, 1) * (LEVELS - 1)).astype(np.uint8)


def _indices(grey: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    if labels is None:
        return grey
    return (_CLASS_OF_LABEL[np.asarray(labels, dtype=np.uint8)] * LEVELS + grey).astype(np.uint8)


def overlay(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 image of 0..255 ``grey`` with label colours alpha-blended where ``labels`` > 0."""
    levels = np.round(np.asarray(grey, dtype=np.float32) * (LEVELS - 1) / 255.0).astype(np.uint8)
    return PALETTE[_indices(levels, labels)]


def _pad(panel: np.ndarray, size: tuple[int, int], fill: int) -> np.ndarray:
    out = np.full(size, fill, dtype=np.uint8)
    h, w = panel.shape
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    out[top : top + h, left : left + w] = panel
    return out


def render_mosaic(
    images: Sequence[object],
    labels: np.ndarray,
    com: Sequence[int],
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    reference: np.ndarray | None = None,
    image_names: Sequence[str] = ("t1c", "t1", "t2", "flair"),
) -> bytes:
    """PNG bytes of the views x (images + overlays) grid through ``com`` (voxel indices x, y, z).

    ``images`` are sliceable volumes (:class:`dqe.models.nifti.Volume` or arrays) in ``image_names`` order;
    the overlays are drawn over the last one (FLAIR). The PNG is palette-coded (:data:`PALETTE`).
    """
    from PIL import Image, ImageDraw

    columns = [*image_names, "segmentation"] + (["reference"] if reference is not None else [])
    rows: list[list[np.ndarray]] = []
    for view in views:
        greys = [np.rot90(_window(take_slice(img, view, com))) for img in images]  # type: ignore[arg-type]
        row = [*greys, _indices(greys[-1], np.rot90(take_slice(labels, view, com)))]
        if reference is not None:
            row.append(_indices(greys[-1], np.rot90(take_slice(reference, view, com))))
        rows.append(row)
    ph = max(p.shape[0] for r in rows for p in r)
    pw = max(p.shape[1] for r in rows for p in r)
    background = 6  # dark grey
    canvas = np.full((HEADER + len(rows) * (ph + GAP), len(columns) * (pw + GAP)), background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            y, x = HEADER + i * (ph + GAP), j * (pw + GAP)
            canvas[y : y + ph, x : x + pw] = _pad(panel, (ph, pw), 0)
    img = Image.fromarray(canvas, mode="P")
    img.putpalette(PALETTE.ravel().tolist())
    draw = ImageDraw.Draw(img)
    white = LEVELS - 1
    for j, name in enumerate(columns):
        draw.text((j * (pw + GAP) + 4, 1), name, fill=white)
    for i, view in enumerate(views):
        draw.text((4, HEADER + i * (ph + GAP) + 3), view, fill=white)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


EVIDENCE_IMAGE = {"wt": "flair", "tc": "t1c", "et": "t1c"}  # where each region's protocol evidence is seen


def render_evidence(
    images: Mapping[str, object],
    labels: np.ndarray,
    regions: Sequence[object],
    image_names: Sequence[str] = ("t1c", "t1", "t2", "flair"),
) -> bytes | None:
    """PNG bytes of the slices where the gate's evidence against each region is strongest, or ``None``.

    One row per region with evidence slices (:class:`dqe.models.qc.types.RegionResult`), one panel per
    slice (its view through its index), the label overlay drawn over the image the region is judged on
    (FLAIR for the whole tumour, T1c for core and enhancing tumour). ``images`` maps names to sliceable
    volumes.
    """
    from PIL import Image, ImageDraw

    rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    for reg in regions:
        slices = list(getattr(reg, "evidence_slices", []))
        name = str(getattr(reg, "region", ""))
        image = images.get(EVIDENCE_IMAGE.get(name, "flair"), images.get(image_names[-1]))
        if not slices or image is None:
            continue
        panels = []
        for s in slices:
            com = [0, 0, 0]
            com[{"sagittal": 0, "coronal": 1, "axial": 2}[s.axis]] = int(s.index)
            grey = np.rot90(_window(take_slice(image, s.axis, com)))  # type: ignore[arg-type]
            lab = np.rot90(take_slice(labels, s.axis, com))
            panels.append((f"{s.axis} {s.index}", _indices(grey, lab)))
        rows.append((f"{name} ({EVIDENCE_IMAGE.get(name, 'flair')})", panels))
    if not rows:
        return None
    ph = max(p.shape[0] for _, r in rows for _, p in r)
    pw = max(p.shape[1] for _, r in rows for _, p in r)
    ncol = max(len(r) for _, r in rows)
    canvas = np.full((len(rows) * (HEADER + ph + GAP), ncol * (pw + GAP)), 6, dtype=np.uint8)
    img = Image.fromarray(canvas, mode="P")
    img.putpalette(PALETTE.ravel().tolist())
    draw = ImageDraw.Draw(img)
    for i, (title, panels) in enumerate(rows):
        y = i * (HEADER + ph + GAP)
        for j, (caption, panel) in enumerate(panels):
            img.paste(Image.fromarray(_pad(panel, (ph, pw), 0), mode="P"), (j * (pw + GAP), y + HEADER))
            draw.text(
                (j * (pw + GAP) + 4, y + 1), f"{title}: {caption}" if j == 0 else caption, fill=LEVELS - 1
            )
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
