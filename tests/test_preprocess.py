"""Unit checks of the numpy preprocessing against the libraries whose semantics it reproduces."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from dqe.models.contract import CONTRACT_V1, PreprocessingContract
from dqe.models.errors import EmptySegmentation
from dqe.models.preprocess import (
    center_of_mass,
    label_channels,
    pad_to_size,
    scale_percentiles,
    torch_quantile,
)

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("q", [0.005, 0.995, 0.5, 0.0, 1.0])
def test_quantile_equals_torch_quantile(seed: int, q: float) -> None:
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(300, 200, size=(4, 61, 37)), 1 if seed % 2 else 0)  # with many ties
    expected = torch.quantile(torch.from_numpy(values).flatten(), torch.tensor(q, dtype=torch.float64)).item()
    assert torch_quantile(values, q) == expected


@pytest.mark.parametrize("seed", range(6))
def test_center_of_mass_equals_scipy_truncated(seed: int) -> None:
    rng = np.random.default_rng(seed)
    seg = np.zeros((50, 60, 40), np.uint8)
    for _ in range(4):
        c = rng.integers(5, 35, 3)
        seg[c[0] : c[0] + rng.integers(2, 12), c[1] : c[1] + rng.integers(2, 12), c[2] : c[2] + 5] = (
            rng.choice([1, 2, 3, 4])
        )
    mask = np.isin(seg, (1, 3, 4)).astype(np.float64)
    if mask.sum() == 0:
        mask = (seg > 0).astype(np.float64)
    expected = tuple(int(x) for x in scipy.ndimage.center_of_mass(mask))
    assert center_of_mass(seg) == expected


def test_center_of_mass_falls_back_to_edema_and_rejects_empty() -> None:
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[2:5, 6:9, 1:3] = 2
    assert center_of_mass(seg) == (3, 7, 1)
    with pytest.raises(EmptySegmentation):
        center_of_mass(np.zeros((4, 4, 4), np.uint8))


def test_pad_matches_monai_spatial_pad_minimum() -> None:
    from monai.transforms import SpatialPad

    rng = np.random.default_rng(0)
    view = rng.random((7, 240, 155)).astype(np.float32)
    view[4:, :, :] = rng.random((3, 240, 155)) > 0.5
    view[4, 7, :] = 1.0  # a full label line: numpy pads it with its own minimum, 1
    expected = SpatialPad(spatial_size=(240, 240), mode="minimum")(torch.from_numpy(view)).numpy()
    ours = pad_to_size(view)
    assert ours.shape == (7, 240, 240)
    np.testing.assert_array_equal(ours, expected)
    assert ours[4, 7, 0] == 1.0


def test_pad_never_crops() -> None:
    view = np.zeros((7, 250, 260), np.float32)
    assert pad_to_size(view).shape == (7, 250, 260)


def test_scaling_matches_monai() -> None:
    from monai.transforms import ScaleIntensityRangePercentiles

    rng = np.random.default_rng(1)
    images = rng.normal(500, 300, size=(4, 240, 155))
    monai_scaled = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0, b_max=1, clip=True)(
        torch.from_numpy(images)
    )
    np.testing.assert_array_equal(scale_percentiles(images), np.asarray(monai_scaled, dtype=np.float32))
    # constant input: MONAI only subtracts the lower limit
    const = np.full((4, 8, 8), 7.0)
    np.testing.assert_array_equal(scale_percentiles(const), np.zeros((4, 8, 8), np.float32))


def test_label_channels_tc_wt_et() -> None:
    seg = np.array([[0, 1, 2, 3, 4]])
    tc, wt, et = label_channels(seg)
    np.testing.assert_array_equal(tc, [[0, 1, 0, 1, 1]])
    np.testing.assert_array_equal(wt, [[0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(et, [[0, 0, 0, 1, 1]])


def test_contract_round_trips_through_json(tmp_path) -> None:
    path = tmp_path / "contract.json"
    CONTRACT_V1.to_json(path)
    assert PreprocessingContract.from_json(path) == CONTRACT_V1
    with pytest.raises(ValueError, match="unknown fields"):
        PreprocessingContract.from_dict({**CONTRACT_V1.to_dict(), "colour": "blue"})
