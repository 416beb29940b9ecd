"""Region-wise loss with pluggable RW maps (Valverde & Tohka, paper 003), Boundary loss as one of them.

``RW(p, z) = mean over voxels of sum_k p_k z_k`` for softmax probabilities ``p`` and a map ``z`` computed from
the one-hot ground truth (no gradient flows through ``z``). With the *RW-Boundary* map (Kervadec et al.'s
signed distance to each class's boundary) it is Boundary loss; with the *rectified* RRW map every
non-true class has the same value 1 and the true class a normalised negative distance in ``[-1, 0)``, which
makes the gradient with respect to the logits, ``p_k (z_k - sum_j p_j z_j)``, negative for the true class
only (the paper's stability principle; :func:`logit_gradient` computes it for tests and figures).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch.nn.modules.loss import _Loss

from dqe.training.losses._common import activate, onehot_target, reduce

RWMap = Callable[[np.ndarray], np.ndarray]


def boundary_map(onehot: np.ndarray) -> np.ndarray:
    """Kervadec et al.'s signed distance map of one image's one-hot ``(C, ...)`` ground truth, in voxels.

    Outside class ``k``: distance to the nearest voxel of ``k``; inside: ``-(distance to the nearest
    voxel outside k - 1)``; all zeros for a class absent from the image.
    """
    out = np.zeros(onehot.shape, dtype=np.float64)
    for k in range(onehot.shape[0]):
        pos = onehot[k] > 0.5
        if pos.any():
            neg = ~pos
            out[k] = distance_transform_edt(neg) * neg - (distance_transform_edt(pos) - 1.0) * pos
    return out


def rrw_map(onehot: np.ndarray) -> np.ndarray:
    """The rectified RW map of one image's one-hot ``(C, ...)`` ground truth (the paper's Eq. (4)).

    1 wherever a voxel is not of class ``k``; inside class ``k`` minus the distance to its boundary divided
    by the largest such distance of that class, so values lie in ``[-1, 0)``.
    """
    out = np.ones(onehot.shape, dtype=np.float64)
    for k in range(onehot.shape[0]):
        pos = onehot[k] > 0.5
        if pos.any():
            dist = distance_transform_edt(pos)
            out[k][pos] = -dist[pos] / dist.max()
    return out


RW_MAPS: dict[str, RWMap] = {"rrw": rrw_map, "boundary": boundary_map}


def logit_gradient(probs: torch.Tensor, rw: torch.Tensor) -> torch.Tensor:
    """``dRW/ds_k = p_k (z_k - sum_j p_j z_j)`` for softmax probabilities and a map along dim 0 (paper Eq. (2))."""
    return probs * (rw - (probs * rw).sum(0, keepdim=True))


class RegionWiseLoss(_Loss):
    """RW loss: ``mean_voxels sum_k softmax(input)_k * z_k``.

    Args:
        rw_map: ``rrw``, ``boundary`` or a callable from one image's one-hot ``(C, ...)`` numpy array to a
            map of the same shape.
        softmax: apply softmax to ``input`` (the paper's setting); else ``input`` holds probabilities.
        binary: each channel of ``input`` is the logit of one binary task (e.g. BraTS regions): it becomes the
            two-class softmax ``[1 - sigmoid(x), sigmoid(x)]`` against ``[1 - y, y]``, and the channels' losses
            are averaged.
        to_onehot_y: ``target`` holds labels ``(B, 1, ...)``.
        reduction: over the batch of per-image values.

    ``forward`` accepts a precomputed ``rw`` map ``(B, C, ...)`` (e.g. cached with the data) to skip the
    distance transforms. A perfect prediction's loss is the mean of the true class's map value (RRW: between
    -1 and 0; it is the minimum over all predictions, not zero).
    """

    def __init__(
        self,
        rw_map: str | RWMap = "rrw",
        softmax: bool = True,
        to_onehot_y: bool = False,
        binary: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        if isinstance(rw_map, str):
            try:
                rw_map = RW_MAPS[rw_map]
            except KeyError:
                raise ValueError(
                    f"rw_map is {rw_map!r}; expected one of {sorted(RW_MAPS)} or a callable"
                ) from None
        self.rw_map = rw_map
        self.softmax, self.to_onehot_y, self.binary = softmax, to_onehot_y, binary

    def maps(self, target: torch.Tensor) -> torch.Tensor:
        """The RW map of a one-hot ``(B, C, ...)`` batch, on its device and dtype."""
        arrays = [self.rw_map(t.detach().cpu().numpy()) for t in target]
        return torch.as_tensor(np.stack(arrays), dtype=target.dtype, device=target.device)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, rw: torch.Tensor | None = None
    ) -> torch.Tensor:
        target = onehot_target(input, target, self.to_onehot_y)
        if self.binary:
            values = []
            for c in range(input.shape[1]):
                p, y = torch.sigmoid(input[:, c : c + 1]), target[:, c : c + 1]
                values.append(self._loss(torch.cat([1 - p, p], 1), torch.cat([1 - y, y], 1), None))
            return reduce(torch.stack(values).mean(0), self.reduction)
        probs = activate(input, False, self.softmax)
        return reduce(self._loss(probs, target, rw), self.reduction)

    def _loss(self, probs: torch.Tensor, target: torch.Tensor, rw: torch.Tensor | None) -> torch.Tensor:
        """Per-image RW loss of probabilities and one-hot target ``(B, C, ...)``."""
        z = self.maps(target) if rw is None else rw.to(probs)
        return (probs * z).sum(1).flatten(1).mean(1)
