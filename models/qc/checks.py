"""The plausibility checks: each a small function of the shared :class:`~dqe.models.qc.context.Context`.

Every check returns a :class:`~dqe.models.qc.types.Check` (value, threshold, pass/fail, the severity a
failure implies, one sentence for a radiologist) or ``None`` when it cannot be evaluated on this case
(e.g. enhancement checks without enhancing tumour). Thresholds and the data behind them are in
:mod:`dqe.models.qc.config`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import ENHANCING, NAB_MARGIN, NECROSIS, Context
from dqe.models.qc.morphology import box_dilate, box_erode, fill_holes
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)

REVIEW, FAIL = "review", "fail"
ALIGNMENT_POINTS = 1000  # lattice points sampled inside and outside the border for the alignment search
NEIGHBOURS = np.array(
    [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]
)


def graded(
    name: str,
    value: float,
    review: float,
    fail: float | None,
    unit: str,
    describe: Callable[[float], str],
    problem: str = "",
    higher_is_worse: bool = True,
) -> Check:
    """A check with a review and (optionally) a fail threshold on one value.

    The reported threshold is the one that was crossed (fail before review), or the review threshold
    when the check passed; ``severity`` says what failing implies. The message is ``describe(value)``,
    followed by ``problem`` (what it means) when the check failed.
    """
    worse = (lambda v, t: v > t) if higher_is_worse else (lambda v, t: v < t)
    text = describe(value)
    bad_text = f"{text}; {problem}" if problem else text
    if fail is not None and worse(value, fail):
        return Check(name, float(value), float(fail), False, FAIL, bad_text, unit)
    if worse(value, review):
        return Check(name, float(value), float(review), False, REVIEW, bad_text, unit)
    return Check(name, float(value), float(review), True, FAIL if fail is not None else REVIEW, text, unit)


# ----------------------------------------------------------------------------------------- extent
def tumour_outside_brain(ctx: Context, cfg: GateConfig) -> Check | None:
    """Fraction of whole-tumour voxels more than one lattice voxel outside the brain mask."""
    if ctx.wt_count == 0:
        return None
    near_brain = box_dilate(ctx.brain_crop, 1)
    outside = int(np.count_nonzero(ctx.wt_crop & ~near_brain))
    frac = outside / ctx.wt_count
    ml = outside * ctx.sample_ml
    return graded(
        "tumour_outside_brain",
        frac,
        cfg.outside_brain_review,
        cfg.outside_brain_fail,
        "fraction",
        lambda v: (
            f"{100 * v:.1f}% of the whole tumour ({ml:.1f} ml) lies outside the brain "
            "(beyond the skull-stripped brain surface)"
        ),
        "gliomas are intra-axial: the labels spill out of the brain",
    )


def tumour_brain_fraction(ctx: Context, cfg: GateConfig) -> Check | None:
    """Whole-tumour volume as a fraction of the brain volume."""
    if ctx.brain_ml <= 0:
        return None
    frac = ctx.counts_ml["wt"] / ctx.brain_ml
    return graded(
        "tumour_brain_fraction",
        frac,
        cfg.brain_fraction_review,
        cfg.brain_fraction_fail,
        "fraction",
        lambda v: (
            f"the whole tumour ({ctx.counts_ml['wt']:.0f} ml) is {100 * v:.0f}% of the brain volume "
            f"({ctx.brain_ml:.0f} ml)"
        ),
        "implausibly large for a glioma",
    )


def tumour_volume(ctx: Context, cfg: GateConfig) -> Check:
    """Absolute whole-tumour volume in ml (too large, or implausibly small)."""
    ml = ctx.counts_ml["wt"]
    if ml < cfg.volume_min_ml:
        return Check(
            "tumour_volume",
            ml,
            cfg.volume_min_ml,
            False,
            REVIEW,
            f"the whole tumour is only {ml:.2f} ml; a glioma segmentation this small is unusual",
            "ml",
        )
    return graded(
        "tumour_volume",
        ml,
        cfg.volume_review_ml,
        cfg.volume_fail_ml,
        "ml",
        lambda v: f"the whole tumour measures {v:.1f} ml",
        "implausibly large for a glioma",
    )


# ----------------------------------------------------------------------------------------- fragments
def _distant_components(ctx: Context, cfg: GateConfig) -> tuple[np.ndarray, int, float]:
    """Mask (crop) of components farther than ``fragment_distance_mm`` from the main lesion, their count
    (those of at least ``fragment_min_ml``) and their total volume in ml. Distances are Euclidean, in mm,
    from each island's voxels to the main lesion's surface (a k-d tree query with an upper bound)."""
    from scipy.spatial import cKDTree

    cc, n, sizes, main = ctx.components
    far = np.zeros_like(ctx.wt_crop)
    if n <= 1:
        return far, 0, 0.0
    main_mask = cc == main
    surface = main_mask & ~box_erode(main_mask, 1)
    tree = cKDTree(np.argwhere(surface) * ctx.spacing_mm)
    others = np.argwhere((cc > 0) & ~main_mask)
    owner = cc[tuple(others.T)]
    dist, _ = tree.query(others * ctx.spacing_mm, k=1, distance_upper_bound=cfg.fragment_distance_mm)
    nearest = np.full(n + 1, np.inf)
    np.minimum.at(nearest, owner, dist)
    is_far = nearest > cfg.fragment_distance_mm
    is_far[0] = is_far[main] = False
    far = is_far[cc]
    min_samples = cfg.fragment_min_ml / ctx.sample_ml
    count = int(np.count_nonzero(is_far & (sizes >= min_samples)))
    return far, count, float(sizes[is_far].sum()) * ctx.sample_ml


def fragmentation(ctx: Context, cfg: GateConfig) -> list[Check]:
    """Number and volume share of tumour islands away from the main lesion, and whether they look like
    normal brain on FLAIR."""
    if ctx.wt_count == 0:
        return []
    far, count, far_ml = _distant_components(ctx, cfg)
    wt_ml = ctx.wt_count * ctx.sample_ml
    share = far_ml / wt_ml
    d = cfg.fragment_distance_mm
    checks = [
        graded(
            "distant_fragments",
            count,
            cfg.fragment_count_review - 0.5,
            None,
            "count",
            lambda v: f"{int(v)} separate tumour islands lie more than {d:.0f} mm from the main lesion",
            "false-positive islands, or an unusually multifocal tumour",
        ),
        graded(
            "distant_fragment_share",
            share,
            cfg.fragment_share_review,
            None,
            "fraction",
            lambda v: (
                f"{100 * v:.1f}% of the tumour volume ({far_ml:.1f} ml) lies more than {d:.0f} mm "
                "from the main lesion"
            ),
            "false-positive islands, or an unusually multifocal tumour",
        ),
    ]
    if ctx.stats is not None and share >= cfg.fragment_flair_min_share:
        sel = far & ctx.brain_crop
        if np.count_nonzero(sel) >= 3:
            flair = float(np.median(ctx.z_crop("flair", sel)))
            checks.append(
                graded(
                    "distant_fragments_flair",
                    flair,
                    cfg.fragment_flair_fail,
                    cfg.fragment_flair_fail,
                    "z",
                    lambda v: (
                        f"the tumour islands away from the main lesion ({far_ml:.1f} ml) are {v:+.1f} SD "
                        "from normal brain on FLAIR (median)"
                    ),
                    "they look like normal brain: false positives",
                    higher_is_worse=False,
                )
            )
    return checks


# ----------------------------------------------------------------------------------------- label logic
def label_convention(ctx: Context, cfg: GateConfig) -> Check:
    """Label set and convention: BraTS 2023 (1/2/3) or legacy (1/2/4), never both."""
    c = ctx.case.counts
    has3 = c.size > 3 and c[3] > 0
    has4 = c.size > 4 and c[4] > 0
    present = [int(i) for i in np.nonzero(c)[0] if i > 0]
    if has3 and has4:
        return Check(
            "label_convention",
            1.0,
            0.0,
            False,
            REVIEW,
            f"labels {present} mix the BraTS 2023 (3) and legacy (4) codes for enhancing tumour",
            "flag",
        )
    convention = "legacy BraTS (<= 2022, ET = 4)" if has4 else "BraTS 2023 (ET = 3)"
    return Check(
        "label_convention", 0.0, 0.0, True, REVIEW, f"labels {present}, {convention} convention", "flag"
    )


def missing_compartments(ctx: Context, cfg: GateConfig) -> Check:
    """Which of necrosis, edema and enhancing tumour are absent; a glioma without edema/FLAIR abnormality
    (label 2) needs a look, a missing core or ET alone does not (low-grade gliomas)."""
    ml = ctx.counts_ml
    missing = [
        name
        for name, key in (("necrosis", "ncr"), ("edema", "ed"), ("enhancing tumour", "et"))
        if ml[key] <= 0
    ]
    if "edema" in missing and ml["ncr"] + ml["et"] > 0:
        return Check(
            "missing_compartments",
            float(len(missing)),
            0.0,
            False,
            REVIEW,
            f"no edema / FLAIR abnormality (label 2) is labelled around the tumour core; missing: {', '.join(missing)}",
            "count",
        )
    text = f"missing: {', '.join(missing)}" if missing else "necrosis, edema and enhancing tumour all present"
    return Check("missing_compartments", float(len(missing)), 0.0, True, REVIEW, text, "count")


def enclosed_holes(ctx: Context, cfg: GateConfig) -> Check | None:
    """Unlabelled voxels completely enclosed by tumour, as a fraction of the whole tumour."""
    if ctx.wt_count == 0:
        return None
    filled = fill_holes(ctx.wt_crop)
    frac = np.count_nonzero(filled & ~ctx.wt_crop) / ctx.wt_count
    return graded(
        "enclosed_holes",
        frac,
        cfg.holes_review,
        None,
        "fraction",
        lambda v: f"unlabelled holes inside the tumour amount to {100 * v:.1f}% of its volume",
        "tumour tissue is missing from the inside of the lesion",
    )


def core_outside_lesion(ctx: Context, cfg: GateConfig) -> Check | None:
    """Fraction of tumour core (necrosis + enhancing) that is not part of the main lesion."""
    lab = ctx.labels[ctx.crop]
    core = (lab == NECROSIS) | (lab == ENHANCING)
    n_core = int(np.count_nonzero(core))
    if n_core == 0:
        return None
    frac = np.count_nonzero(core & ~ctx.main_lesion) / n_core
    return graded(
        "core_outside_lesion",
        frac,
        cfg.core_outside_review,
        None,
        "fraction",
        lambda v: f"{100 * v:.1f}% of the necrosis/enhancing tumour lies outside the main lesion",
        "tumour core labelled away from the lesion",
    )


# ----------------------------------------------------------------------------------------- intensity
def flair_hyperintensity(ctx: Context, cfg: GateConfig) -> Check | None:
    """Median FLAIR of the whole tumour vs normal-appearing brain (robust z)."""
    sel = ctx.wt_crop & ctx.brain_crop
    if ctx.stats is None or np.count_nonzero(sel) < 3:
        return None
    flair = float(np.median(ctx.z_crop("flair", sel)))
    t2 = float(np.median(ctx.z_crop("t2", sel)))
    return graded(
        "flair_hyperintensity",
        flair,
        cfg.flair_review,
        cfg.flair_fail,
        "z",
        lambda v: (
            f"the whole tumour is {v:+.1f} SD (FLAIR) and {t2:+.1f} SD (T2) from normal-appearing brain "
            "(median)"
        ),
        "edema and tumour are FLAIR-hyperintense, so the labels cover normal brain (misplaced or over-segmented)",
        higher_is_worse=False,
    )


def undersegmentation(ctx: Context, cfg: GateConfig) -> Check | None:
    """Fraction of the band just outside the tumour border that is FLAIR-hyperintense like the lesion
    (above half the lesion's median FLAIR excess over normal brain): the abnormality goes on."""
    inside = ctx.wt_crop & ctx.brain_crop
    ring = ctx.ring_crop
    if ctx.stats is None or np.count_nonzero(inside) < 3 or np.count_nonzero(ring) < 3:
        return None
    lesion = float(np.median(ctx.z_crop("flair", inside)))
    if lesion < cfg.flair_review:
        return None  # the labels are not FLAIR-hyperintense: the FLAIR check speaks for this case
    frac = float(np.mean(ctx.z_crop("flair", ring) > 0.5 * lesion))
    mm = NAB_MARGIN * float(ctx.spacing_mm.min())
    return graded(
        "undersegmentation",
        frac,
        cfg.undersegmentation_review,
        cfg.undersegmentation_fail,
        "fraction",
        lambda v: (
            f"{100 * v:.0f}% of the {mm:.0f} mm band just outside the tumour border is FLAIR-hyperintense "
            f"like the lesion (> {0.5 * lesion:.1f} SD)"
        ),
        "the abnormality continues beyond the labels (under-segmented)",
    )


def _enhancement(ctx: Context, mask: np.ndarray) -> np.ndarray:
    return ctx.z_crop("t1c", mask) - ctx.z_crop("t1", mask)


def enhancement(ctx: Context, cfg: GateConfig) -> list[Check]:
    """ET brighter on T1c than on T1, more than necrosis; enhancing tissue left unlabelled."""
    if ctx.stats is None:
        return []
    lab = ctx.labels[ctx.crop]
    brain = ctx.brain_crop
    et, ncr = (lab == ENHANCING) & brain, (lab == NECROSIS) & brain
    ml = ctx.counts_ml
    checks: list[Check] = []
    et_enh = None
    if ml["et"] >= cfg.et_min_ml and np.count_nonzero(et) >= 3:
        et_enh = float(np.median(_enhancement(ctx, et)))
        checks.append(
            graded(
                "et_enhancement",
                et_enh,
                cfg.et_enhancement_review,
                None,
                "z",
                lambda v: (
                    f"enhancing tumour ({ml['et']:.1f} ml) enhances by {v:+.1f} SD "
                    "(T1c minus T1, each relative to normal brain)"
                ),
                "the tissue labelled enhancing does not enhance",
                higher_is_worse=False,
            )
        )
        if ml["ncr"] >= cfg.et_min_ml and np.count_nonzero(ncr) >= 3:
            diff = et_enh - float(np.median(_enhancement(ctx, ncr)))
            checks.append(
                graded(
                    "et_vs_necrosis",
                    diff,
                    cfg.et_vs_necrosis_review,
                    cfg.et_vs_necrosis_fail,
                    "z",
                    lambda v: (
                        f"the tissue labelled enhancing enhances {abs(v):.1f} SD "
                        f"{'more' if v >= 0 else 'less'} than the tissue labelled necrosis (T1c minus T1)"
                    ),
                    "enhancing tumour must enhance more than necrosis: the two look swapped or misplaced",
                    higher_is_worse=False,
                )
            )
    other = ctx.wt_crop & brain & ~(lab == ENHANCING)
    if np.count_nonzero(other):
        unl = float(np.count_nonzero(_enhancement(ctx, other) > cfg.enhancement_z)) * ctx.sample_ml
        checks.append(
            graded(
                "unlabelled_enhancement",
                unl,
                cfg.unlabelled_enhancement_review_ml,
                None,
                "ml",
                lambda v: (
                    f"{v:.1f} ml of tumour enhances on T1c (> {cfg.enhancement_z:g} SD above T1) but is "
                    f"labelled necrosis or edema (labelled enhancing tumour: {ml['et']:.1f} ml)"
                ),
                "enhancing tumour is missing from the labels",
            )
        )
    return checks


# ----------------------------------------------------------------------------------------- geometry
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
    """Do the five headers agree? Voxels are used as stored; a segmentation header that is the identity
    (lost geometry, e.g. ``seg-BraTS23_1_mapped``) is only noted; a header that claims a different
    orientation from the images needs review (the image-based orientation check says which is right)."""
    import nibabel as nib

    ref = ctx.case.t1c.affine
    codes_ref = nib.aff2axcodes(ref)
    worst, notes = 0, []
    for vol in (*ctx.case.images[1:], ctx.case.segmentation):
        if np.allclose(vol.affine, ref, atol=1e-3):
            continue
        if np.allclose(vol.affine, np.eye(4)):
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
            worst = max(worst, 1)
            notes.append(f"{vol.name} affine differs from t1c in origin/spacing")
    passed = worst < 2
    if not notes:
        text = "all five headers share one affine"
    else:
        text = "; ".join(notes) + "; voxels are used as stored (the image-based checks judge alignment)"
    return Check("affines", float(worst), 1.0, passed, REVIEW, text, "level")


# ----------------------------------------------------------------------------------------- the scorer
def view_spread(views: dict[str, float], cfg: GateConfig) -> Check | None:
    """Disagreement between the axial, coronal and sagittal star ratings."""
    if len(views) < 2:
        return None
    vals = list(views.values())
    spread = float(max(vals) - min(vals))
    return graded(
        "view_disagreement",
        spread,
        cfg.view_spread_review,
        None,
        "stars",
        lambda v: "views disagree by {:.2f} stars ({})".format(
            v, ", ".join(f"{k} {s:.2f}" for k, s in views.items())
        ),
        "the quality model's views disagree",
    )


def stars(mean_stars: float, cfg: GateConfig) -> Check:
    """Mean predicted star rating vs the configured threshold."""
    return graded(
        "stars",
        mean_stars,
        cfg.star_threshold,
        None,
        "stars",
        lambda v: (
            f"the quality model rates the segmentation {v:.2f} stars (review below {cfg.star_threshold:g})"
        ),
        higher_is_worse=False,
    )


# Gross, whole-lesion problems first: the gate lists reasons of one severity in this order.
CASE_CHECKS: tuple[Callable[[Context, GateConfig], Any], ...] = (
    tumour_outside_brain,
    tumour_brain_fraction,
    tumour_volume,
    orientation,
    boundary_alignment,
    flair_hyperintensity,
    undersegmentation,
    fragmentation,
    label_convention,
    missing_compartments,
    enclosed_holes,
    core_outside_lesion,
    enhancement,
    grid,
    affines,
)


def run_case_checks(ctx: Context, cfg: GateConfig) -> list[Check]:
    """Every image/label check, in a stable order (inapplicable ones omitted)."""
    out: list[Check] = []
    for fn in CASE_CHECKS:
        res = fn(ctx, cfg)
        if res is None:
            continue
        if isinstance(res, Check):
            out.append(res)
        else:
            out.extend(res)
    return out


__all__ = ["CASE_CHECKS", "graded", "run_case_checks", "stars", "view_spread"]
