"""Boundary fit per region: does a slightly shifted, eroded or dilated copy fit the images better?

Fit of a mask = mean image (the region's model, robust z; :mod:`dqe.models.qc.regional`) in the two voxel
layers just inside its border minus the mean in the two layers just outside. On a step edge this contrast
is largest when the mask's border sits on the edge. Two searches:

* ``boundary_shift``: the mask moved by every integer offset of up to ``SHIFT`` voxels per axis (a header or
  resampling shift); score = contrast gained by the best offset, as a fraction of the best contrast.
* ``boundary_scale``: the border moved in or out by 1-2 voxels (erosion/dilation, city-block layers);
  score = fraction gained, signed offset reported (negative = the labels are too large).

A correct segmentation sits at (or within noise of) its own optimum; a shifted or systematically
under/over-segmented one gains. Neither check runs when no placement shows an edge of at least
``MIN_EDGE`` SD (a core without enhancement has no T1c border to fit: TCGA-DU-7294).

``border_normal``: the share of the region's outermost voxel layer that looks like the tissue around it (below
half the region's median on its image): partial volume keeps it well below 1 on a border drawn on the edge; a
mask grown by a voxel or two puts normal tissue there.
"""

from __future__ import annotations

import numpy as np

from dqe.models.qc.checks.common import NEIGHBOURS
from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.regional import Regional, shells

SHIFT = 3  # voxels per axis searched
SCALE = 2  # voxels of erosion/dilation searched
POINTS = 1500  # layer points sampled for the shift search
MIN_VOXELS = 60  # region voxels needed
CONTRAST_FLOOR = 0.5  # z: gains are relative to at least this much contrast
MIN_EDGE = 1.0  # z: the best placement must show at least this contrast, else there is no edge to fit


def _rel_gain(best: float, own: float) -> float:
    return float((best - own) / max(abs(best), CONTRAST_FLOOR))


def boundary_fit(reg: Regional, region: str) -> list[Evidence]:
    """``boundary_shift`` and ``boundary_scale`` of one region (none when it is too small)."""
    m = reg.mask(region)
    if np.count_nonzero(m) < MIN_VOXELS:
        return []
    box = reg.sub(region, SHIFT + SCALE + 3)
    m, h, brain = m[box], reg.model(region)[box], reg.brain[box]
    inside, outside = shells(m, SCALE + 2)
    out: list[Evidence] = []
    # ---- border layer that looks like normal tissue: labels grown past the lesion (dilation)
    med = float(np.median(h[m]))
    border = inside[0] & brain
    if med >= MIN_EDGE and np.count_nonzero(border) >= MIN_VOXELS:
        share = float(np.mean(h[border] < 0.5 * med))
        out.append(
            Evidence(
                "border_normal",
                region,
                "boundary_fit",
                share,
                "fraction",
                f"{100 * share:.0f}% of the {region.upper()}'s outermost voxel layer looks like the tissue "
                f"around it (below half the region's median, {0.5 * med:.1f} SD)",
                "the labels extend past the lesion (over-segmented by a voxel or more)",
                floor=0.02,
            )
        )
    # ---- scale: layer means, border moved by k in -SCALE..SCALE (k > 0 = outwards = dilation)
    layers = [*inside[::-1], *outside]  # deepest inside ... farthest outside; border between idx d-1, d
    d = len(inside)
    sums = np.array([float(h[lay & brain].sum()) for lay in layers])
    counts = np.array([float(np.count_nonzero(lay & brain)) for lay in layers])
    contrast: dict[int, float] = {}
    if np.all(counts > 0):
        for k in range(-SCALE, SCALE + 1):
            a, b = d + k - 2, d + k  # inner layers a, a+1; outer b, b+1
            inner = sums[a : a + 2].sum() / counts[a : a + 2].sum()
            outer = sums[b : b + 2].sum() / counts[b : b + 2].sum()
            contrast[k] = float(inner - outer)
    k_best = max(contrast, key=contrast.__getitem__) if contrast else 0
    if contrast and contrast[k_best] >= MIN_EDGE:
        gain = _rel_gain(contrast[k_best], contrast[0])
        mm = k_best * float(np.mean(reg.zooms))
        way = "dilated" if k_best > 0 else "eroded"
        out.append(
            Evidence(
                "boundary_scale",
                region,
                "boundary_fit",
                gain,
                "fraction",
                (
                    f"{region.upper()} border contrast {contrast[0]:+.2f} SD; "
                    + (
                        f"the labels {way} by {abs(mm):.0f} mm fit the images better by {100 * gain:.0f}%"
                        if k_best
                        else "no erosion or dilation fits the images better"
                    )
                ),
                "the border is systematically "
                + ("inside (under-segmented)" if k_best > 0 else "outside (over-segmented)")
                + " the image edge",
                floor=0.02,
            )
        )
    # ---- shift: sampled points of the two layers on either side, moved as a rigid set
    inner_pts = np.argwhere(inside[0] | inside[1])
    outer_pts = np.argwhere((outside[0] | outside[1]) & brain)
    if len(inner_pts) >= 8 and len(outer_pts) >= 8:
        rng = np.random.default_rng(0)
        if len(inner_pts) > POINTS:
            inner_pts = inner_pts[rng.choice(len(inner_pts), POINTS, replace=False)]
        if len(outer_pts) > POINTS:
            outer_pts = outer_pts[rng.choice(len(outer_pts), POINTS, replace=False)]
        pad = np.pad(h, SHIFT, mode="edge")
        strides = np.array([pad.shape[1] * pad.shape[2], pad.shape[2], 1])
        fi = (inner_pts + SHIFT) @ strides
        fo = (outer_pts + SHIFT) @ strides
        flat = pad.ravel()

        def fit(offs: np.ndarray) -> np.ndarray:
            o = offs @ strides
            return flat[fi[None, :] + o[:, None]].mean(axis=1) - flat[fo[None, :] + o[:, None]].mean(axis=1)

        # Search: each axis alone (-SHIFT..SHIFT), then the per-axis bests combined, then hill climbing over
        # the 26 neighbours (inside the +-SHIFT cube): ~50 placements instead of 7^3 = 343.
        steps = np.arange(-SHIFT, SHIFT + 1)
        axis_offs = np.zeros((3 * steps.size, 3), dtype=np.int64)
        for a in range(3):
            axis_offs[a * steps.size : (a + 1) * steps.size, a] = steps
        ca = fit(axis_offs)
        own = float(ca[steps.size // 2])  # offset (0, 0, 0)
        combo = np.array([steps[int(np.argmax(ca[a * steps.size : (a + 1) * steps.size]))] for a in range(3)])
        cands = np.vstack([axis_offs, combo[None, :]])
        c = np.concatenate([ca, fit(combo[None, :])])
        best_i = int(np.argmax(c))
        best_off, best_c = cands[best_i], float(c[best_i])
        nbrs = NEIGHBOURS
        for _ in range(2 * SHIFT):
            near = best_off + nbrs
            near = near[np.abs(near).max(axis=1) <= SHIFT]
            cn = fit(near)
            k = int(np.argmax(cn))
            if float(cn[k]) <= best_c + 1e-9:
                break
            best_off, best_c = near[k], float(cn[k])
        offs, c, i_best = best_off[None, :], np.array([best_c]), 0
        if float(c[i_best]) < MIN_EDGE:
            return out  # the region has no edge on its image near its border (e.g. a non-enhancing core)
        gain = _rel_gain(float(c[i_best]), own)
        vec = -offs[i_best] * np.asarray(reg.zooms)  # image read at p + o = labels moved by -o
        mm = float(np.linalg.norm(vec))
        out.append(
            Evidence(
                "boundary_shift",
                region,
                "boundary_fit",
                gain,
                "fraction",
                (
                    f"{region.upper()} moved by ({', '.join(f'{v:+.0f}' for v in vec)}) mm "
                    f"({mm:.1f} mm) fits the images {100 * gain:.0f}% better"
                    if mm > 0
                    else f"{region.upper()} fits the images best where it is"
                ),
                "the labels are displaced from the lesion (a header or resampling shift)",
                floor=0.02,
            )
        )
    return out
