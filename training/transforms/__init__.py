"""Augmentations for 2-D views, one transform per module, and the pipeline that chains them.

The paper's recipe: Gaussian noise, flips, random affine and elastic deformation; contrast, brightness,
gamma, low resolution and Rician noise (batchgenerators semantics, reimplemented on numpy); MR motion,
ghosting, spikes and bias fields (TorchIO). Spatial transforms move image and label channels together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dqe.training.transforms.affine import RandomAffine
from dqe.training.transforms.base import Transform
from dqe.training.transforms.bias_field import BiasField
from dqe.training.transforms.brightness import Brightness
from dqe.training.transforms.contrast import Contrast
from dqe.training.transforms.elastic import ElasticDeformation
from dqe.training.transforms.flip import Flip
from dqe.training.transforms.gamma import Gamma
from dqe.training.transforms.gaussian_noise import GaussianNoise
from dqe.training.transforms.ghosting import Ghosting
from dqe.training.transforms.low_resolution import LowResolution
from dqe.training.transforms.motion import Motion
from dqe.training.transforms.rician_noise import RicianNoise
from dqe.training.transforms.spike import Spike

TRANSFORMS: dict[str, type[Transform]] = {
    cls.name: cls
    for cls in (
        Flip,
        RandomAffine,
        ElasticDeformation,
        Motion,
        Ghosting,
        Spike,
        BiasField,
        LowResolution,
        Contrast,
        Brightness,
        Gamma,
        GaussianNoise,
        RicianNoise,
    )
}


class Pipeline:
    """Transforms applied in order to one ``(C, H, W)`` view whose first ``n_image`` channels are images."""

    def __init__(self, transforms: Sequence[Transform], n_image: int) -> None:
        self.transforms = list(transforms)
        self.n_image = int(n_image)

    def __call__(self, view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = np.asarray(view[: self.n_image], dtype=np.float32)
        labels = np.asarray(view[self.n_image :], dtype=np.float32)
        for transform in self.transforms:
            image, labels = transform(image, labels, rng)
        return np.concatenate([image, labels], axis=0)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": t.name, **t.params()} for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)


def build_transform(spec: Mapping[str, Any]) -> Transform:
    """One transform from ``{"name": ..., **kwargs}``.

    Raises:
        ValueError: unknown name or arguments the transform does not take.
    """
    args = dict(spec)
    name = args.pop("name", None)
    if name not in TRANSFORMS:
        raise ValueError(f"augmentation {name!r} is not one of {sorted(TRANSFORMS)}")
    try:
        return TRANSFORMS[name](**args)
    except TypeError as exc:
        raise ValueError(f"augmentation {name!r}: {exc}") from None


def build_pipeline(specs: Sequence[Mapping[str, Any]], n_image: int) -> Pipeline:
    return Pipeline([build_transform(s) for s in specs], n_image)


__all__ = ["TRANSFORMS", "Pipeline", "Transform", "build_pipeline", "build_transform"]
