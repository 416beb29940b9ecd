"""The losses of paper 000 / 002 / 003 against independent implementations, gradcheck, perfect predictions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from dqe.training.losses import LOSSES, check_loss_name, loss_names  # noqa: E402
from dqe.training.losses.compound import CompoundLoss, load_presets  # noqa: E402
from dqe.training.losses.dice import soft_dice, soft_jaccard  # noqa: E402
from dqe.training.losses.generalized_dice import BinaryGeneralizedDiceLoss  # noqa: E402
from dqe.training.losses.lovasz import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_grad  # noqa: E402
from dqe.training.losses.region_wise import (  # noqa: E402
    RegionWiseLoss,
    boundary_map,
    logit_gradient,
    rrw_map,
)
from dqe.training.losses.registry import build_loss  # noqa: E402
from dqe.training.losses.sensitivity_specificity import SensitivitySpecificityLoss  # noqa: E402


def _batch(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=dtype)
    target = (torch.rand(shape, generator=g) > 0.6).to(dtype)
    return logits, target


# ---- soft Dice / Jaccard (MONAI) against the definitions -------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 6, 6, 5)])
@pytest.mark.parametrize("per_image", [True, False])
def test_soft_dice_and_jaccard_match_the_formulas(shape, per_image):
    logits, target = _batch(shape)
    p = torch.sigmoid(logits)
    axes = tuple(range(2, len(shape))) if per_image else (0, *range(2, len(shape)))
    inter = (p * target).sum(axes)
    size = p.sum(axes) + target.sum(axes)
    dice = (1 - (2 * inter + 1e-5) / (size + 1e-5)).mean()
    jac = (1 - (2 * inter + 1e-5) / (2 * (size - inter) + 1e-5)).mean()
    torch.testing.assert_close(soft_dice(per_image, sigmoid=True)(logits, target), dice)
    torch.testing.assert_close(soft_jaccard(per_image, sigmoid=True)(logits, target), jac)
    # batch pooling is a different number (Bertels et al.'s point), not a renaming
    assert (
        abs(
            float(
                soft_dice(True, sigmoid=True)(logits, target) - soft_dice(False, sigmoid=True)(logits, target)
            )
        )
        > 1e-4
    )


def test_gdice_w_matches_wolny_formula():
    logits, target = _batch((3, 2, 10, 10))
    p = torch.sigmoid(logits)
    expected = []
    for c in range(2):
        pc = torch.stack([p[:, c].flatten(), 1 - p[:, c].flatten()])
        yc = torch.stack([target[:, c].flatten(), 1 - target[:, c].flatten()])
        w = 1 / yc.sum(1) ** 2
        expected.append(1 - 2 * (w * (pc * yc).sum(1)).sum() / (w * (pc + yc).sum(1)).sum())
    got = BinaryGeneralizedDiceLoss(sigmoid=True)(logits, target)
    torch.testing.assert_close(got, torch.stack(expected).mean(), rtol=1e-4, atol=1e-5)


def test_sensitivity_specificity_matches_numpy():
    logits, target = _batch((2, 3, 7, 7))
    p, y = torch.sigmoid(logits).numpy(), target.numpy()
    sq = (y - p) ** 2
    spec = (sq * y).sum((2, 3)) / (y.sum((2, 3)) + 1)
    sens = (sq * (1 - y)).sum((2, 3)) / ((1 - y).sum((2, 3)) + 1)
    expected = (0.1 * spec + 0.9 * sens).mean()
    got = SensitivitySpecificityLoss(sigmoid=True)(logits, target)
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)


# ---- Lovász ---------------------------------------------------------------------------------------------------


def test_lovasz_hand_worked_case():
    # gt [1, 0, 1], p [0.8, 0.4, 0.3]: errors sorted 0.7 (fg), 0.4 (bg), 0.2 (fg);
    # Jaccard loss of the growing error sets 1/2, 2/3, 3/3 -> 0.7/2 + 0.4/6 + 0.2/3 = 29/60.
    p = torch.tensor([0.8, 0.4, 0.3], dtype=torch.float64).reshape(1, 1, 1, 3)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 1, 1, 3)
    assert float(LovaszSoftmaxLoss()(p, y)) == pytest.approx(29 / 60, abs=1e-12)
    np.testing.assert_allclose(
        lovasz_grad(torch.tensor([1.0, 0.0, 1.0])).numpy(), [0.5, 1 / 6, 1 / 3], rtol=1e-6
    )


def _lovasz_by_definition(errors: np.ndarray, fg: np.ndarray) -> float:
    """Berman et al.: sum_i m_(i) (Delta(S_i) - Delta(S_{i-1})), Delta(S) = |S| / |gt u S| (Jaccard loss of S)."""
    order = np.argsort(-errors, kind="stable")
    gt = set(np.flatnonzero(fg > 0.5).tolist())
    total, prev, wrong = 0.0, 0.0, set()
    for i in order:
        wrong.add(int(i))
        delta = len(wrong) / len(gt | wrong)
        total += errors[i] * (delta - prev)
        prev = delta
    return total


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_softmax_equals_berman_definition(per_image):
    logits, _ = _batch((2, 3, 5, 4))
    labels = torch.randint(0, 3, (2, 1, 5, 4), generator=torch.Generator().manual_seed(3))
    probs = torch.softmax(logits, 1)
    got = LovaszSoftmaxLoss(softmax=True, to_onehot_y=True, per_image=per_image)(logits, labels)
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).double().numpy()
    p = probs.numpy()
    sets = [(p[b : b + 1], onehot[b : b + 1]) for b in range(2)] if per_image else [(p, onehot)]
    values = []
    for ps, ys in sets:
        per_class = [
            _lovasz_by_definition(np.abs(ys[:, c] - ps[:, c]).ravel(), ys[:, c].ravel())
            for c in range(3)
            if ys[:, c].sum() > 0
        ]
        values.append(np.mean(per_class))
    np.testing.assert_allclose(float(got), np.mean(values), rtol=1e-10)


def test_lovasz_hinge_equals_definition_and_is_zero_with_margin():
    logits, target = _batch((1, 1, 6, 6))
    signs = 2 * target.numpy().ravel() - 1
    errors = np.maximum(1 - logits.numpy().ravel() * signs, 0)
    # relu commutes with the decreasing sort, so the definition applies to the clipped errors
    expected = _lovasz_by_definition(errors, target.numpy().ravel())
    np.testing.assert_allclose(float(LovaszHingeLoss()(logits, target)), expected, rtol=1e-10)
    perfect = (2 * target - 1) * 3.0
    assert float(LovaszHingeLoss()(perfect, target)) == 0.0


# ---- region-wise (paper 003) ----------------------------------------------------------------------------------


def _three_class_labels() -> np.ndarray:
    labels = np.zeros((24, 24), dtype=int)
    labels[4:20, 4:20] = 1
    labels[9:15, 9:15] = 2
    return labels


def test_rrw_map_values():
    onehot = np.eye(3)[_three_class_labels()].transpose(2, 0, 1)
    z = rrw_map(onehot)
    assert np.all(z[onehot == 0] == 1.0)
    inside = z[onehot == 1]
    assert inside.min() == -1.0 and inside.max() < 0.0


def test_figure_2_rrw_has_one_negative_component_boundary_map_does_not():
    """Over a grid of 3-class softmax vectors: d RW / d logits has exactly one negative component (the true
    class) with the RRW map at every voxel tried; the unrectified Boundary map gives two negatives somewhere."""
    labels = _three_class_labels()
    onehot = np.eye(3)[labels].transpose(2, 0, 1)
    step = 0.05
    grid = [
        (a, b, 1 - a - b)
        for a, b in itertools.product(np.arange(step, 1, step), repeat=2)
        if 1 - a - b > step / 2
    ]
    probs = torch.tensor(grid, dtype=torch.float64).T[:, :, None]  # (3, N, 1)
    rrw, bnd = rrw_map(onehot), boundary_map(onehot)
    boundary_bad = 0
    for x, y in [(11, 11), (6, 6), (5, 12), (2, 2), (21, 12)]:
        true = labels[x, y]
        g_rrw = logit_gradient(probs, torch.tensor(rrw[:, x, y]).reshape(3, 1, 1))
        neg = g_rrw < 0
        assert bool(neg[true].all()) and int(neg.sum(0).max()) == 1, (x, y)
        g_bnd = logit_gradient(probs, torch.tensor(bnd[:, x, y]).reshape(3, 1, 1))
        boundary_bad += int(((g_bnd < 0).sum(0) >= 2).sum())
    assert boundary_bad > 0


def test_region_wise_perfect_prediction_is_mean_true_class_map():
    labels = torch.tensor(_three_class_labels())[None, None]
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).double()
    loss = RegionWiseLoss("rrw", softmax=False)
    z = rrw_map(onehot[0].numpy())
    expected = (z * onehot[0].numpy()).sum(0).mean()
    assert float(loss(onehot, onehot)) == pytest.approx(expected)
    # and it is the minimum: any other softmax output costs more
    other = torch.softmax(torch.randn(1, 3, 24, 24, dtype=torch.float64), 1)
    assert float(loss(other, onehot)) > expected


# ---- gradients, dtypes, dims ---------------------------------------------------------------------------------

GRAD_LOSSES = {
    "dice": lambda: soft_dice(True, sigmoid=True),
    "jaccard_batch": lambda: soft_jaccard(False, sigmoid=True),
    "gdice_w": lambda: BinaryGeneralizedDiceLoss(sigmoid=True),
    "ss": lambda: SensitivitySpecificityLoss(sigmoid=True),
    "lovasz": lambda: LovaszSoftmaxLoss(sigmoid=True, per_image=True),
    "lovasz_hinge": lambda: LovaszHingeLoss(),
    "rrw": lambda: RegionWiseLoss("rrw", binary=True),
    "boundary": lambda: RegionWiseLoss("boundary", binary=True),
    "gdice_ss_bce": lambda: build_loss("gdice_ss_bce"),
}


@pytest.mark.parametrize("name", sorted(GRAD_LOSSES))
def test_gradcheck_float64(name):
    channels = 3 if name == "gdice_ss_bce" else 2
    logits, target = _batch((2, channels, 5, 4, 3), seed=7)
    loss = GRAD_LOSSES[name]()
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, target), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(GRAD_LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dims", [2, 3])
def test_losses_run_in_2d_3d_float32_float64_and_vanish_or_bottom_at_perfect(name, dtype, dims):
    channels = 3 if name == "gdice_ss_bce" else 2
    shape = (2, channels, 12, 12) + ((6,) if dims == 3 else ())
    _, target = _batch(shape, dtype=dtype, seed=1)
    loss = GRAD_LOSSES[name]()
    perfect = (2 * target - 1) * 30.0  # sigmoid ~ the target exactly
    value = loss(perfect, target)
    assert value.dtype == dtype and value.ndim == 0
    noisy = loss(torch.zeros_like(target), target)
    assert float(value) < float(noisy)
    if name in ("dice", "jaccard_batch", "gdice_w", "ss", "lovasz", "lovasz_hinge"):
        assert float(value) == pytest.approx(0.0, abs=1e-4)


# ---- compound (paper 000) and registry ----------------------------------------------------------------------


def test_presets_are_the_papers_four_candidates():
    presets = load_presets()
    assert list(presets) == ["gdice_bce", "gdice_ss_bce", "channel_wise", "channel_wise_weighted"]
    weighted = presets["channel_wise_weighted"]["channels"]
    assert [weighted[c]["weight"] for c in ("WT", "TC", "ET")] == [1, 5, 5]
    assert set(weighted["ET"]["losses"]) == {"gdice_w"}


def test_compound_equation_1_is_the_weighted_sum_of_its_terms():
    logits, target = _batch((2, 3, 8, 8, 4))
    loss = build_loss("channel_wise_weighted")
    gd, bce, ss = (
        BinaryGeneralizedDiceLoss(sigmoid=True),
        torch.nn.BCEWithLogitsLoss(),
        SensitivitySpecificityLoss(sigmoid=True),
    )
    ch = [(logits[:, i : i + 1], target[:, i : i + 1]) for i in range(3)]
    expected = gd(*ch[0]) + ss(*ch[0]) + bce(*ch[0]) + 5 * (gd(*ch[1]) + bce(*ch[1])) + 5 * gd(*ch[2])
    torch.testing.assert_close(loss(logits, target), expected)


def test_compound_needs_images_for_dqe_and_rejects_unknown_terms():
    with pytest.raises(Exception, match="unknown losses"):
        CompoundLoss({"WT": {"losses": {"nope": 1}}})


def test_registry_lists_names_on_unknown_and_builds_every_segmentation_loss():
    with pytest.raises(ValueError, match="expected one of .*'dice_bce'"):
        check_loss_name("focal", "segmentation")
    with pytest.raises(ValueError, match="mse"):
        check_loss_name("dice", "regression")
    assert loss_names("regression") == ["huber", "l1", "mse"]
    logits, target = _batch((1, 3, 6, 6, 4))
    for name in loss_names("segmentation"):
        if name == "dqe":
            continue
        value = build_loss(name)(logits, target)
        assert torch.isfinite(value), name
    assert set(LOSSES) >= {"gdice_bce", "gdice_ss_bce", "channel_wise", "channel_wise_weighted"}


def test_train_config_takes_its_loss_from_the_registry():
    from dqe.training.config import TrainConfig

    assert TrainConfig(loss="huber").validate().loss == "huber"
    with pytest.raises(ValueError, match=r"loss is 'dice'; expected one of \['huber', 'l1', 'mse'\]"):
        TrainConfig(loss="dice").validate()
    assert isinstance(build_loss("l1", task="regression"), torch.nn.L1Loss)


def test_dice_bce_is_dice_plus_binary_cross_entropy_on_every_channel():
    from monai.losses import DiceLoss

    logits, target = _batch((2, 3, 8, 8, 4))
    expected = DiceLoss(sigmoid=True)(logits, target) + torch.nn.BCEWithLogitsLoss()(logits, target)
    torch.testing.assert_close(build_loss("dice_bce")(logits, target), expected)
    # and the paper-000 form with weights 1/3 per channel is the same number
    third = {r: {"weight": 1 / 3, "losses": {"dice": 1, "bce": 1}} for r in ("WT", "TC", "ET")}
    torch.testing.assert_close(build_loss({"channels": third})(logits, target), expected)
