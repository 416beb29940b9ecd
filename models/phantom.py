"""Seeded synthetic glioma exams ("phantoms") for tests, demos and export parity checks.

A phantom is a skull-stripped ellipsoidal brain with grey/white-matter-like texture on four MR contrasts
and a lesion made of an enhancing rim (3 or legacy 4), a necrotic core (1) and surrounding edema (2), with
intensities that follow the usual appearance: edema bright on T2/FLAIR, enhancing rim bright on T1c.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ("sphere", "ellipsoid", "lobulated", "multifocal")

# Mean intensities (arbitrary scanner units) per tissue: background, brain, edema, necrosis, enhancing.
_INTENSITY = {
    "t1c": (0, 600, 520, 300, 1400),
    "t1": (0, 700, 560, 350, 650),
    "t2": (0, 500, 1100, 1300, 900),
    "flair": (0, 450, 1050, 700, 800),
}


@dataclass(frozen=True)
class Phantom:
    t1c: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    flair: np.ndarray
    segmentation: np.ndarray
    affine: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "t1c": self.t1c,
            "t1": self.t1,
            "t2": self.t2,
            "flair": self.flair,
            "segmentation": self.segmentation,
        }


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.ogrid[: shape[0], : shape[1], : shape[2]]  # type: ignore[return-value]


def make_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (240, 240, 155),
    lesion: str = "sphere",
    legacy_labels: bool = False,
    edema_only: bool = False,
    no_enhancing: bool = False,
    image_dtype: str = "int16",
    seg_dtype: str = "uint8",
) -> Phantom:
    """A deterministic phantom exam; same arguments, same arrays.

    Args:
        seed: random seed (lesion position, size and texture).
        shape: grid in voxels (the BraTS grid by default).
        lesion: one of :data:`SHAPES`.
        legacy_labels: write enhancing tumour as 4 instead of 3.
        edema_only: only label 2.
        no_enhancing: necrosis and edema only.
        image_dtype, seg_dtype: stored dtypes.
    """
    if lesion not in SHAPES:
        raise ValueError(f"lesion {lesion!r} is not one of {SHAPES}")
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)
    c = np.array(shape) / 2.0
    radii = np.array(shape) * np.array([0.36, 0.42, 0.40])
    brain = ((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2 <= 1.0

    centre = c + rng.uniform(-0.15, 0.15, 3) * np.array(shape)
    r = rng.uniform(0.06, 0.10) * min(shape[:2])
    scale = {
        "sphere": (1, 1, 1),
        "ellipsoid": (1.4, 0.8, 1.0),
        "lobulated": (1, 1, 1),
        "multifocal": (1, 1, 1),
    }[lesion]
    dist = np.sqrt(
        ((x - centre[0]) / scale[0]) ** 2
        + ((y - centre[1]) / scale[1]) ** 2
        + ((z - centre[2]) / scale[2]) ** 2
    )
    if lesion == "lobulated":
        dist = dist * (1 + 0.25 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0) * np.sin(z / 6.0))
    seg = np.zeros(shape, dtype=np.uint8)
    et = 4 if legacy_labels else 3
    seg[(dist <= 2.0 * r) & brain] = 2
    if not edema_only:
        seg[dist <= r] = et if not no_enhancing else 1
        seg[dist <= 0.6 * r] = 1
    if lesion == "multifocal":
        c2 = centre + np.array([0.25 * r * 4, -0.2 * r * 4, 0.1 * r * 4])
        d2 = np.sqrt((x - c2[0]) ** 2 + (y - c2[1]) ** 2 + (z - c2[2]) ** 2)
        seg[(d2 <= 0.9 * r) & brain & (seg == 0)] = 2
        if not edema_only:
            seg[d2 <= 0.45 * r] = et if not no_enhancing else 1
    seg[~brain] = 0

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[brain] = 1
    tissue[seg == 2] = 2
    tissue[seg == 1] = 3
    tissue[seg == et] = 4
    coarse = rng.normal(0.0, 1.0, size=(shape[0] // 8 + 2, shape[1] // 8 + 2, shape[2] // 8 + 2))
    texture = np.kron(coarse, np.ones((8, 8, 8)))[: shape[0], : shape[1], : shape[2]]
    images = {}
    for name, means in _INTENSITY.items():
        lut = np.asarray(means, dtype=np.float64)
        vol = lut[tissue] * (1.0 + 0.08 * texture) + rng.normal(0.0, 15.0, size=shape)
        vol[~brain] = 0.0
        images[name] = vol.astype(image_dtype)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return Phantom(**images, segmentation=seg.astype(seg_dtype), affine=affine)


NAMINGS = {
    "brats2023": {
        "t1c": "{id}-t1c",
        "t1": "{id}-t1n",
        "t2": "{id}-t2w",
        "flair": "{id}-t2f",
        "segmentation": "{id}-seg",
    },
    "brats2021": {
        "t1c": "{id}_t1ce",
        "t1": "{id}_t1",
        "t2": "{id}_t2",
        "flair": "{id}_flair",
        "segmentation": "{id}_seg",
    },
    "toolkit": {
        "t1c": "{id}_t1c",
        "t1": "{id}_t1",
        "t2": "{id}_t2",
        "flair": "{id}_fla",
        "segmentation": "{id}_seg",
    },
}


def write_case(
    phantom: Phantom,
    folder: str | Path,
    case_id: str = "PHANTOM-00000-000",
    naming: str = "brats2023",
    compressed: bool = True,
    include_segmentation: bool = True,
) -> dict[str, Path]:
    """Write a phantom as a BraTS-style case folder of NIfTI files; returns the paths by field."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if compressed else ".nii"
    paths = {}
    for field, array in phantom.arrays().items():
        if field == "segmentation" and not include_segmentation:
            continue
        path = folder / (NAMINGS[naming][field].format(id=case_id) + ext)
        img = nib.Nifti1Image(array, phantom.affine)
        img.header.set_data_dtype(array.dtype)
        nib.save(img, str(path))
        paths[field] = path
    return paths
