"""Geometry checks: boundary alignment with the images, left-right orientation, grid, header affines."""

from __future__ import annotations

import logging

import numpy as np

from dqe.models.nifti import affine_usable
from dqe.models.qc.checks.common import ALIGNMENT_POINTS, NEIGHBOURS, REVIEW, graded
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)


def _contrasts(h_flat: np.ndarray, inner: np.ndarray, outer: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Mean of ``h`` at ``inner + o`` minus at ``outer + o`` for every flat offset ``o``."""
    return h_flat[inner[None, :] + offsets[:, None]].mean(axis=1) - h_flat[
        outer[None, :] + offsets[:, None]
    ].mean(axis=1)


def boundary_alignment(ctx: Context, cfg: GateConfig) -> Check | None:
    """Does the tumour border sit on the FLAIR/T2 border? Contrast across it vs the best nearby placement.

    The mask is moved (not resampled) by up to ``alignment_search_mm`` on the lattice: a coarse grid of
    offsets, then hill climbing over the 26 neighbours at halving steps. Contrast is the mean
    hyperintensity inside minus in the ring just outside. A correct segmentation is (near) the best
    placement of itself; a shifted or shrunken one is not.
    """
    if ctx.stats is None or ctx.wt_count == 0:
        return None
    if ctx.brain_ml > 0 and ctx.counts_ml["wt"] / ctx.brain_ml > cfg.brain_fraction_review:
        return None  # labels cover too much of the brain for a local search to mean anything
    inside = ctx.wt_crop & ctx.brain_crop
    ring = ctx.ring_crop
    if np.count_nonzero(inside) < 8 or np.count_nonzero(ring) < 8:
        return None
    r = max(1, int(round(cfg.alignment_search_mm / float(ctx.spacing_mm.min()))))
    # The crop grown by r on every side, read from the images where it exists, 0 (= normal brain) beyond.
    lo = [int(sl.start) for sl in ctx.crop]
    hi = [int(sl.stop) for sl in ctx.crop]
    shape = ctx.wt.shape
    big_lo = [max(0, a - r) for a in lo]
    big_hi = [min(n, b + r) for b, n in zip(hi, shape, strict=True)]
    big = (slice(big_lo[0], big_hi[0]), slice(big_lo[1], big_hi[1]), slice(big_lo[2], big_hi[2]))
    widths = [(bl - (a - r), (b + r) - bh) for a, b, bl, bh in zip(lo, hi, big_lo, big_hi, strict=True)]
    padded = np.pad(ctx.hyper(big), widths, mode="constant", constant_values=0.0)
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    rng = np.random.default_rng(0)

    def flat(mask: np.ndarray) -> np.ndarray:
        idx = np.argwhere(mask)
        if len(idx) > ALIGNMENT_POINTS:
            idx = idx[rng.choice(len(idx), ALIGNMENT_POINTS, replace=False)]
        return (idx + r) @ strides

    inner, outer, hf = flat(inside), flat(ring), padded.ravel()
    c0 = float(_contrasts(hf, inner, outer, np.zeros(1, dtype=np.int64))[0])
    coarse = max(1, r // 2)
    axis = np.arange(-r, r + 1, coarse)
    grid_offsets = np.array(np.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1).T
    c = _contrasts(hf, inner, outer, grid_offsets @ strides)
    best, best_off = float(c.max()), grid_offsets[int(np.argmax(c))]
    if c0 >= best:
        best, best_off = c0, np.zeros(3, dtype=int)
    step = max(1, coarse // 2)
    while True:
        cands = best_off + NEIGHBOURS * step
        cands = cands[np.abs(cands).max(axis=1) <= r]
        c = _contrasts(hf, inner, outer, cands @ strides)
        if c.size and float(c.max()) > best + 1e-9:
            best, best_off = float(c.max()), cands[int(np.argmax(c))]
            continue
        if step == 1:
            break
        step //= 2
    if best < cfg.alignment_min_contrast:
        return None  # no FLAIR/T2 border anywhere near: the hyperintensity check speaks for this case
    ratio = max(c0, 0.0) / best
    dist = float(np.linalg.norm(best_off * ctx.spacing_mm))
    return graded(
        "boundary_alignment",
        ratio,
        cfg.alignment_review,
        cfg.alignment_fail,
        "ratio",
        lambda v: (
            f"the tumour border captures {100 * v:.0f}% of the FLAIR/T2 contrast it would have if moved "
            f"{dist:.0f} mm"
        ),
        "the labels are misplaced or do not follow the lesion",
        higher_is_worse=False,
    )


def orientation(ctx: Context, cfg: GateConfig) -> Check | None:
    """Left-right flip: is the mirror image of the tumour (about the brain midline) more hyperintense than
    the tumour itself? Axis 0 of the stored array is left-right in BraTS files."""
    if ctx.stats is None or ctx.wt_count == 0 or not ctx.brain.any():
        return None
    xs = np.flatnonzero(ctx.brain.any(axis=(1, 2)))
    mirror = int(xs[0] + xs[-1])
    idx = np.nonzero(ctx.wt_crop)
    offs = [sl.start or 0 for sl in ctx.crop]
    x, y, z = idx[0] + offs[0], idx[1] + offs[1], idx[2] + offs[2]
    mx = mirror - x
    ok = (mx >= 0) & (mx < ctx.wt.shape[0])
    x, y, z, mx = x[ok], y[ok], z[ok], mx[ok]
    own_only = ~ctx.wt[mx, y, z] & ctx.brain[x, y, z] & ctx.brain[mx, y, z]
    if np.count_nonzero(own_only) < 8:
        return None  # the tumour is (nearly) symmetric about the midline: a flip cannot be told
    sel_own = (x[own_only], y[own_only], z[own_only])
    sel_mir = (mx[own_only], y[own_only], z[own_only])

    def hyper(sel: tuple[np.ndarray, ...]) -> float:
        return float(np.median(np.minimum(ctx.z("flair", sel), ctx.z("t2", sel))))

    own, mir = hyper(sel_own), hyper(sel_mir)
    diff = mir - own
    return graded(
        "orientation",
        diff,
        cfg.orientation_fail,
        cfg.orientation_fail,
        "z",
        lambda v: (
            f"the mirror image of the tumour across the midline is {mir:+.1f} SD on FLAIR/T2, the "
            f"labelled side {own:+.1f} SD"
        ),
        "the segmentation looks flipped left-right",
    )


def grid(ctx: Context, cfg: GateConfig) -> Check:
    """Grid and voxel size the model was trained on (240 x 240 x 155 at 1 mm)."""
    shape = ctx.case.shape
    zooms = ctx.zooms
    bad_grid = tuple(shape) != tuple(cfg.expected_grid)
    bad_zoom = not np.allclose(zooms, 1.0, atol=0.05)
    passed = not (bad_grid or bad_zoom)
    text = f"grid {shape} at {'x'.join(f'{z:g}' for z in zooms)} mm" + (
        "" if passed else f"; the model expects the BraTS/SRI-24 grid {tuple(cfg.expected_grid)} at 1 mm"
    )
    return Check(
        "grid", float(np.prod(shape)), float(np.prod(cfg.expected_grid)), passed, REVIEW, text, "voxels"
    )


def affines(ctx: Context, cfg: GateConfig) -> Check:
    """Do the five headers agree? Voxels are used as stored, but a header that is unusable (NaN/Inf or
    singular), the identity (lost geometry, e.g. ``seg-BraTS23_1_mapped``) or different from the images'
    (orientation, origin or spacing) is never passed silently: review (the image-based checks say whether
    the voxels line up anyway)."""
    import nibabel as nib

    skipped = [vol.name for vol in ctx.case.volumes if not affine_usable(vol.affine)]
    if ctx.case.t1c.name in skipped:
        text = (
            "t1c header affine has NaN/Inf values or is singular: the headers cannot confirm that the "
            "segmentation belongs to these images; check the files"
        )
        return Check("affines", 2.0, 1.0, False, REVIEW, text, "level", family="geometry")
    ref = ctx.case.t1c.affine
    codes_ref = nib.aff2axcodes(ref)
    worst, notes = 0, [f"{name} header affine is unusable (NaN/Inf or singular); skipped" for name in skipped]
    for vol in (*ctx.case.images[1:], ctx.case.segmentation):
        if vol.name in skipped:
            continue
        if np.allclose(vol.affine, ref, atol=1e-3):
            continue
        if np.allclose(vol.affine, np.eye(4)):
            worst = 2
            notes.append(f"{vol.name} header has an identity affine (geometry lost when saved)")
            continue
        codes = nib.aff2axcodes(vol.affine)
        if codes != codes_ref:
            worst = 2
            notes.append(
                f"{vol.name} header says {''.join(str(c) for c in codes)} but t1c says "
                f"{''.join(str(c) for c in codes_ref)}"
            )
        else:
            worst = 2
            notes.append(f"{vol.name} affine differs from t1c in origin/spacing")
    if skipped:
        worst = 2
    passed = worst < 2
    if not notes:
        text = "all five headers share one affine"
    else:
        text = "; ".join(notes) + "; voxels are used as stored (the image-based checks judge alignment)"
    return Check("affines", float(worst), 1.0, passed, REVIEW, text, "level", family="geometry")
