"""The preprocessing contract, as data.

One frozen dataclass describes everything a model expects from its inputs: channel and view order, the
output size, the intensity scaling and the label encoding. It is saved as ``contract.json`` beside every
exported ``.onnx`` file and read back by the engine, export and training alike, so the three can never
disagree silently (the MONAI bundle ``network_data_format`` idea).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PreprocessingContract:
    """How a case becomes the ``(3, 7, H, W)`` float32 tensor the network reads.

    The defaults reproduce ``deep_quality_estimation`` 0.0.3 exactly, quirks included:

    * centre of mass of the tumour core (labels ``com_labels``), falling back to any label > 0, each
      coordinate truncated towards zero with ``int()``;
    * slices taken in raw voxel order, the affine ignored: axial ``img[:, :, z]``, coronal
      ``img[:, y, :]``, sagittal ``img[x, :, :]``;
    * NaN -> 0 and +/-Inf -> the largest finite float64 (``numpy.nan_to_num``);
    * percentiles ``lower``/``upper`` computed jointly over the four images of one view (not per channel),
      with ``torch.quantile``'s linear interpolation on float64 values, then scaled to ``[0, 1]`` and clipped,
      rounded once to float32;
    * label channels TC = {1, 3, 4}, WT = {1, 2, 3, 4}, ET = {3, 4} as 0/1;
    * every view padded symmetrically up to ``spatial_size`` (``width // 2`` before) with numpy's
      ``"minimum"`` mode, which pads each line with that line's own minimum; larger views are not cropped.
    """

    version: str = "dqe-contract/1"
    image_channels: tuple[str, ...] = ("t1c", "t1", "t2", "flair")
    label_channels: tuple[str, ...] = ("TC", "WT", "ET")
    label_map: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {"TC": (1, 3, 4), "WT": (1, 2, 3, 4), "ET": (3, 4)}
    )
    valid_labels: tuple[int, ...] = (0, 1, 2, 3, 4)
    com_labels: tuple[int, ...] = (1, 3, 4)
    com_fallback: str = "any_label"
    views: tuple[str, ...] = ("axial", "coronal", "sagittal")
    spatial_size: tuple[int, int] = (240, 240)
    expected_grid: tuple[int, int, int] = (240, 240, 155)
    normalization: str = "percentile"
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    joint_scaling: bool = True
    clip: bool = True
    pad_mode: str = "minimum"
    nan_to_num: bool = True
    output_range: tuple[float, float] = (1.0, 6.0)

    @property
    def channels(self) -> tuple[str, ...]:
        """All input channels in network order."""
        return self.image_channels + self.label_channels

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label_map"] = {k: list(v) for k, v in self.label_map.items()}
        return data

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingContract:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"contract has unknown fields {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "label_map":
                kwargs[key] = {k: tuple(v) for k, v in value.items()}
            elif isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> PreprocessingContract:
        return cls.from_dict(json.loads(Path(path).read_text()))


CONTRACT_V1 = PreprocessingContract()

# The case's files, defined once from the contract: the four images in network channel order, then the label map.
MODALITIES: tuple[str, ...] = CONTRACT_V1.image_channels
FIELDS: tuple[str, ...] = (*MODALITIES, "segmentation")
