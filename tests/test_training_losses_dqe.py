"""DQE as a loss: the serving views rebuilt in torch, the stars of ``dqe score``, gradients, optimisation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from dqe.models.case import Case  # noqa: E402
from dqe.models.phantom import make_phantom  # noqa: E402
from dqe.models.preprocess import build_views  # noqa: E402
from dqe.training.losses.dqe import DQELoss, pad_minimum, soft_center_of_mass  # noqa: E402
from dqe.training.losses.registry import build_loss  # noqa: E402
from tests.conftest import DQE_TEST_DATA  # noqa: E402

LABELS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def dqe_loss():
    return DQELoss(labels=LABELS)


def _tensors(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([np.asarray(v[:, :, :], dtype=np.float64) for v in case.images])
    seg = np.asarray(case.labels[:, :, :])
    onehot = np.stack([seg == k for k in LABELS]).astype(np.float32)
    return torch.from_numpy(images)[None], torch.from_numpy(onehot)[None]


def test_pad_minimum_is_numpys_minimum_mode():
    view = np.random.default_rng(0).normal(size=(3, 17, 9))
    got = pad_minimum(torch.from_numpy(view), (24, 20)).numpy()
    np.testing.assert_array_equal(got, np.pad(view, [(0, 0), (3, 4), (5, 6)], mode="minimum"))


def test_soft_centre_of_mass_truncates_like_serving_and_falls_back():
    core = torch.zeros(10, 10, 10)
    core[2:5, 3:9, 7] = 1.0
    assert soft_center_of_mass(core, core) == (3, 5, 7)
    wt = torch.zeros(10, 10, 10)
    wt[8, 8, 8] = 1.0
    assert soft_center_of_mass(torch.zeros(10, 10, 10), wt) == (8, 8, 8)
    assert soft_center_of_mass(torch.zeros(10, 10, 10), torch.zeros(10, 10, 10)) == (5, 5, 5)


def test_phantom_views_are_the_serving_views_bit_for_bit(dqe_loss):
    case = Case.from_arrays(**make_phantom(seed=3, shape=(96, 112, 80)).arrays())
    images, onehot = _tensors(case)
    ref, _ = build_views(case.images, case.labels)
    ours = dqe_loss.views(dqe_loss.region_probabilities(onehot)[0], images[0])
    for r, o in zip(ref, ours, strict=True):
        np.testing.assert_array_equal(o.numpy(), r)


def test_gradient_reaches_the_label_probabilities_and_not_the_network(dqe_loss):
    case = Case.from_arrays(**make_phantom(seed=1, shape=(96, 96, 64)).arrays())
    images, onehot = _tensors(case)
    probs = onehot.clone().requires_grad_(True)
    loss = dqe_loss(probs, images)
    loss.backward()
    assert 0.0 < loss.item() < 1.0
    assert probs.grad is not None and float(probs.grad.abs().sum()) > 0.0
    assert all(p.grad is None and not p.requires_grad for p in dqe_loss.network.parameters())
    dqe_loss.train()
    assert not dqe_loss.network.training


def test_compound_with_dqe_weight_adds_the_scaled_term():
    case = Case.from_arrays(**make_phantom(seed=2, shape=(64, 64, 48)).arrays())
    images, onehot = _tensors(case)
    seg = onehot.argmax(1)
    regions = torch.stack([seg > 0, (seg == 1) | (seg == 3), seg == 3], 1).double()
    logits = (regions * 2 - 1) * 4.0
    plain = build_loss("gdice_bce")
    with_dqe = build_loss({"name": "gdice_bce", "dqe_weight": 0.5})
    expected = plain(logits, regions) + 0.5 * with_dqe.dqe(logits, images)
    torch.testing.assert_close(with_dqe(logits, regions, images=images), expected)
    with pytest.raises(Exception, match="needs the MR images"):
        with_dqe(logits, regions)


def _shared_case() -> Case:
    names = ("t1c", "t1n", "t2w", "t2f", "seg-BraTS23_1")
    return Case.from_files(*(DQE_TEST_DATA / f"{n}.nii.gz" for n in names))


@pytest.mark.real_data
@pytest.mark.slow
def test_hard_one_hot_of_shared_case_gives_dqe_score_stars(dqe_loss):
    images, onehot = _tensors(_shared_case())
    probs = onehot.clone().requires_grad_(True)
    stars = dqe_loss.stars(probs, images)
    # the reference package's expectation, which `dqe score` reproduces (tests/test_parity.py)
    assert abs(float(stars[0]) - 5.315626939137776) <= 1e-4
    stars.sum().backward()
    assert float(probs.grad.abs().sum()) > 0.0


@pytest.mark.real_data
@pytest.mark.slow
def test_optimising_a_degraded_segmentation_raises_its_stars():
    case = _shared_case()
    images, onehot = _tensors(case)
    seg = onehot.argmax(1)
    degraded = seg.clone()
    degraded[seg == 3] = 1  # enhancing tumour lost
    degraded[seg == 2] = 0  # edema lost
    hard = torch.nn.functional.one_hot(degraded, 4).permute(0, 4, 1, 2, 3).float()
    logits = (hard * 6 - 3).requires_grad_(True)
    loss = DQELoss(softmax=True, labels=LABELS)
    opt = torch.optim.Adam([logits], lr=0.5)
    values = []
    for _ in range(3):
        value = loss(logits, images)
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(float(value))
    with torch.no_grad():
        final = float(loss.stars(logits, images)[0])
    start = 6 - 5 * values[0]
    assert final > start + 0.1, (start, final)
