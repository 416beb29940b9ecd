"""DQE as a loss: the released quality estimator, frozen, read on soft segmentations.

The serving pipeline (:mod:`dqe.models.preprocess`) rebuilt in torch so the label channels stay
differentiable: for each image the centre of mass of the soft tumour core (detached: it only chooses the
slices, as in serving, and is truncated to integer voxels), the three centre-of-mass slices of the four MR
images scaled jointly to [0, 1] by their 0.5/99.5 percentiles (``torch.quantile`` on float64, as the
reference), the TC/WT/ET probabilities of the same slices as the label channels, every view padded to
240 x 240 with numpy's ``minimum`` mode, and the released DenseNet121 (weights from the
``deep-quality-estimation`` wheel, sha256-checked through :mod:`dqe.models.registry`) in eval mode with
``requires_grad=False``. On a hard one-hot segmentation these are exactly the views ``dqe score`` builds.

Scale: the loss is ``(6 - stars) / 5`` (``output_range`` of the contract), so it lies near [0, 1] like a
Dice loss; one star is 0.2 loss units. The released model rates most tumour-shaped segmentations 4-5.5 stars,
so the term is around 0.1-0.4; but its gradient is concentrated on the three slices' voxels, where it is large
compared with a Dice or BCE term's per-voxel share. In ``benchmarks/seg_losses.py`` a ``dqe_weight`` of 0.2 from
the first epoch hurt Dice and did not raise the stars (``benchmarks/RESULTS.md``): use small weights, late.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from dqe.models.contract import CONTRACT_V1, PreprocessingContract
from dqe.models.errors import InvalidInput
from dqe.models.network import load_network
from dqe.models.registry import DEFAULT_MODEL_ID, get_entry, locate_weights
from dqe.training.losses._common import activate, reduce


def load_frozen_network(model_id: str = DEFAULT_MODEL_ID) -> torch.nn.Module:
    """The registered weights (sha256 verified) in a DenseNet, eval mode, no gradients to its parameters.

    Raises:
        NotFound: the weights package is not installed.
        IntegrityError: the weights file's sha256 is not the registered one.
    """
    entry = get_entry(model_id)
    net = load_network(locate_weights(entry), entry.architecture, entry.in_channels)
    for param in net.parameters():
        param.requires_grad_(False)
    return net.eval()


def pad_minimum(view: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``numpy.pad(view, ..., mode="minimum")`` of a ``(C, H, W)`` tensor up to ``size``, symmetric, never crops.

    numpy pads axis by axis; along each axis it fills with that line's own minimum, taken over the
    original extent of the axis and the already padded extent of the others. Differentiable (``amin``).
    """
    for axis, target in zip((1, 2), size, strict=True):
        width = max(int(target) - view.shape[axis], 0)
        if width == 0:
            continue
        before, after = width // 2, width - width // 2
        low = view.amin(dim=axis, keepdim=True)
        shape = list(view.shape)
        parts = []
        if before:
            shape[axis] = before
            parts.append(low.expand(shape))
        parts.append(view)
        if after:
            shape[axis] = after
            parts.append(low.expand(shape))
        view = torch.cat(parts, dim=axis)
    return view


def scale_percentiles(images: torch.Tensor, contract: PreprocessingContract) -> torch.Tensor:
    """Joint percentile scaling of ``(4, H, W)`` image slices, as :func:`dqe.models.preprocess.scale_percentiles`."""
    values = torch.nan_to_num(images.to(torch.float64))
    flat = values.reshape(-1)
    a_min = torch.quantile(flat, contract.lower_percentile / 100.0)
    a_max = torch.quantile(flat, contract.upper_percentile / 100.0)
    if float(a_max - a_min) == 0.0:
        scaled = values - a_min
    else:
        scaled = (values - a_min) / (a_max - a_min)
        if contract.clip:
            scaled = scaled.clamp(0.0, 1.0)
    return scaled.to(torch.float32)


def soft_center_of_mass(core: torch.Tensor, fallback: torch.Tensor) -> tuple[int, int, int]:
    """Centre of mass of a soft ``(X, Y, Z)`` core mask, each coordinate truncated towards zero (detached).

    Falls back to ``fallback`` (whole tumour) when the core holds less than one voxel of mass, and to the
    grid centre when that is empty too (a training batch must not stop on an empty prediction).
    """
    for mass in (core, fallback):
        weights = mass.detach().to(torch.float64)
        total = float(weights.sum())
        if total >= 1.0:
            com = []
            for axis in range(3):
                other = tuple(a for a in range(3) if a != axis)
                counts = weights.sum(dim=other)
                positions = torch.arange(counts.numel(), dtype=torch.float64, device=counts.device)
                com.append(int(float((positions * counts).sum()) / total))
            return com[0], com[1], com[2]
    x, y, z = core.shape
    return x // 2, y // 2, z // 2


class DQELoss(_Loss):
    """``(6 - stars) / 5`` of the released quality estimator on the prediction's three views.

    Args:
        sigmoid: ``input`` holds region logits in ``regions`` order (BraTS WT/TC/ET training).
        softmax: ``input`` holds label logits, channel ``k`` being label ``labels[k]``; region probabilities
            are sums of label probabilities by the contract's label map.
        regions: channel order of region inputs (names of ``contract.label_channels``).
        labels: label value of each channel for label inputs (e.g. ``(0, 1, 2, 4)``).
        upsample: factor by which each slice is resized (bilinear) before scaling and padding, for training at
            a reduced resolution (the network was trained on 1 mm views); ``1`` keeps the grid.
        model_id: registered weights.
        reduction: over the batch.

    ``forward(input, images)``: ``images`` is ``(B, 4, X, Y, Z)`` in the contract's channel order
    (t1c, t1, t2, flair); ``input`` is 3-D ``(B, C, X, Y, Z)`` on the same grid.
    """

    def __init__(
        self,
        sigmoid: bool = False,
        softmax: bool = False,
        regions: Sequence[str] = ("WT", "TC", "ET"),
        labels: Sequence[int] | None = None,
        upsample: float = 1.0,
        model_id: str = DEFAULT_MODEL_ID,
        contract: PreprocessingContract = CONTRACT_V1,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        unknown = set(regions) - set(contract.label_channels)
        if labels is None and unknown:
            raise InvalidInput(
                f"regions {sorted(unknown)} are not in {list(contract.label_channels)}", field="loss"
            )
        self.sigmoid, self.softmax = sigmoid, softmax
        self.regions, self.labels = tuple(regions), None if labels is None else tuple(labels)
        self.upsample, self.contract = float(upsample), contract
        self.network = load_frozen_network(model_id)

    def train(self, mode: bool = True) -> DQELoss:
        """The estimator stays in eval mode (BatchNorm running statistics) whatever the caller's mode."""
        super().train(mode)
        self.network.eval()
        return self

    def region_probabilities(self, input: torch.Tensor) -> torch.Tensor:
        """``(B, 3, X, Y, Z)`` probabilities in ``contract.label_channels`` order (TC, WT, ET)."""
        probs = activate(input, self.sigmoid, self.softmax)
        if self.labels is None:
            if probs.shape[1] != len(self.regions):
                raise InvalidInput(
                    f"input has {probs.shape[1]} channels; regions {list(self.regions)} name {len(self.regions)}",
                    field="loss",
                )
            return torch.stack(
                [probs[:, self.regions.index(name)] for name in self.contract.label_channels], 1
            )
        if probs.shape[1] != len(self.labels):
            raise InvalidInput(
                f"input has {probs.shape[1]} channels; labels {list(self.labels)} name {len(self.labels)}",
                field="loss",
            )
        regions = []
        for name in self.contract.label_channels:
            members = [k for k, value in enumerate(self.labels) if value in self.contract.label_map[name]]
            regions.append(probs[:, members].sum(1))
        return torch.stack(regions, 1)

    def views(self, regions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The ``(3, 7, 240, 240)`` network input of one image (``regions`` ``(3, X, Y, Z)``, ``images`` ``(4, ...)``)."""
        names = self.contract.label_channels
        core = regions[names.index("TC")]
        x, y, z = soft_center_of_mass(core, regions[names.index("WT")])
        out = []
        for view in self.contract.views:
            if view == "axial":
                img, lab = images[:, :, :, z], regions[:, :, :, z]
            elif view == "coronal":
                img, lab = images[:, :, y, :], regions[:, :, y, :]
            else:
                img, lab = images[:, x], regions[:, x]
            if self.upsample != 1.0:
                size = [round(s * self.upsample) for s in img.shape[1:]]
                img = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False)[0]
                lab = F.interpolate(lab[None], size=size, mode="bilinear", align_corners=False)[0]
            stacked = torch.cat([scale_percentiles(img, self.contract), lab.to(torch.float32)], 0)
            out.append(pad_minimum(stacked, self.contract.spatial_size))
        return torch.stack(out)

    def stars(self, input: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` mean stars over the three views (what ``dqe score`` reports for a hard segmentation)."""
        if input.ndim != 5 or images.ndim != 5 or images.shape[2:] != input.shape[2:]:
            raise InvalidInput(
                f"input {tuple(input.shape)} and images {tuple(images.shape)} must be (B, C, X, Y, Z) on one grid",
                field="loss",
            )
        if images.shape[1] != len(self.contract.image_channels):
            raise InvalidInput(
                f"images have {images.shape[1]} channels; expected 4 (t1c, t1, t2, flair)", field="loss"
            )
        regions = self.region_probabilities(input)
        batch = torch.stack([self.views(r, i) for r, i in zip(regions, images, strict=True)])
        flat = self.network(batch.flatten(0, 1)).reshape(batch.shape[0], batch.shape[1])
        return flat.mean(1)

    def forward(self, input: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.contract.output_range
        return reduce((hi - self.stars(input, images)) / (hi - lo), self.reduction)
