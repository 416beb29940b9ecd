"""Augmentations: deterministic under a seed, change their input, keep labels binary and aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchio")

from dqe.models.phantom import make_phantom  # noqa: E402
from dqe.models.preprocess import build_views  # noqa: E402
from dqe.training.transforms import TRANSFORMS, Pipeline, build_pipeline, build_transform  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
N_IMAGE = 4


@pytest.fixture(scope="module")
def view() -> np.ndarray:
    """The axial (7, 240, 240) view of a phantom: 4 normalised images + TC/WT/ET."""
    ph = make_phantom(seed=3, lesion="lobulated")
    views, _ = build_views([ph.t1c, ph.t1, ph.t2, ph.flair], ph.segmentation)
    return views[0]


def _apply(name: str, view: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    t = build_transform({"name": name, "p": 1.0})
    return t(view[:N_IMAGE].copy(), view[N_IMAGE:].copy(), np.random.default_rng(seed))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_deterministic_under_seed(name: str, view: np.ndarray) -> None:
    a_img, a_lab = _apply(name, view, 11)
    b_img, b_lab = _apply(name, view, 11)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    seeds = [_apply(name, view, s)[0] for s in (12, 13, 14)]
    assert any(not np.array_equal(a_img, other) for other in seeds), f"{name} ignores its seed"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_changes_input_and_keeps_labels_binary(name: str, view: np.ndarray) -> None:
    img, lab = _apply(name, view, 5)
    assert img.shape == view[:N_IMAGE].shape and lab.shape == view[N_IMAGE:].shape
    assert img.dtype == np.float32 and lab.dtype == np.float32
    assert np.isfinite(img).all()
    assert float(np.abs(img - view[:N_IMAGE]).max()) > 1e-3, f"{name} did not change the images"
    assert set(np.unique(lab)) <= {0.0, 1.0}
    if TRANSFORMS[name].spatial:
        assert not np.array_equal(lab, view[N_IMAGE:]), f"spatial {name} did not move the labels"
        # nested BraTS regions stay nested: ET within TC within WT
        tc, wt, et = lab
        assert not (et > tc).any() and not (tc > wt).any()
    else:
        np.testing.assert_array_equal(lab, view[N_IMAGE:])


@pytest.mark.parametrize("name", sorted(n for n, cls in TRANSFORMS.items() if cls.spatial))
def test_spatial_labels_stay_aligned_with_images(name: str, view: np.ndarray) -> None:
    """Put the WT mask into an image channel too: after the transform the (linearly interpolated) image
    channel, thresholded at 0.5, must coincide with the (nearest-neighbour) label channel."""
    marked = view.copy()
    marked[0] = marked[N_IMAGE + 1]
    for seed in range(3):
        img, lab = _apply(name, marked, seed)
        moved = img[0] >= 0.5
        wt = lab[1] > 0.5
        union = np.logical_or(moved, wt).sum()
        iou = np.logical_and(moved, wt).sum() / union
        assert iou > 0.95, f"{name} seed {seed}: image and labels disagree (IoU {iou:.3f})"


def test_p_zero_is_identity(view: np.ndarray) -> None:
    for name in TRANSFORMS:
        t = build_transform({"name": name, "p": 0.0})
        img, lab = t(view[:N_IMAGE], view[N_IMAGE:], np.random.default_rng(0))
        np.testing.assert_array_equal(img, view[:N_IMAGE])
        np.testing.assert_array_equal(lab, view[N_IMAGE:])


def test_paper_pipeline_deterministic_and_binary(view: np.ndarray) -> None:
    import yaml

    specs = yaml.safe_load((CONFIGS / "paper.yaml").read_text())["augment"]["transforms"]
    assert {s["name"] for s in specs} == set(TRANSFORMS), "the paper config should use every augmentation"
    # every transform forced on, so the whole chain runs
    pipe = build_pipeline([{**s, "p": 1.0} for s in specs], N_IMAGE)
    a = pipe(view, np.random.default_rng([1, 2, 3]))
    b = pipe(view, np.random.default_rng([1, 2, 3]))
    c = pipe(view, np.random.default_rng([1, 2, 4]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == view.shape
    assert set(np.unique(a[N_IMAGE:])) <= {0.0, 1.0}
    assert a[N_IMAGE + 1].sum() > 0, "the tumour left the view"


def test_single_tissue_channel_pipeline(view: np.ndarray) -> None:
    """With one label channel the same pipeline works (nearest neighbour keeps the channel's values)."""
    one = np.concatenate([view[:N_IMAGE], view[N_IMAGE + 1 : N_IMAGE + 2]])
    pipe = Pipeline([build_transform({"name": n, "p": 1.0}) for n in ("flip", "affine", "elastic")], N_IMAGE)
    out = pipe(one, np.random.default_rng(0))
    assert out.shape == one.shape
    assert set(np.unique(out[N_IMAGE:])) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "nope"},
        {"name": "flip", "axes": [2]},
        {"name": "gamma", "gamma": [-1, 2]},
        {"name": "affine", "scale": [1.2, 0.8]},
        {"name": "low_resolution", "zoom": [0.5, 2.0]},
        {"name": "gaussian_noise", "p": 1.5},
        {"name": "motion", "channels": "some"},
        {"name": "contrast", "unknown_arg": 1},
    ],
)
def test_bad_specs_raise(spec: dict) -> None:
    with pytest.raises(ValueError):
        build_transform(spec)
