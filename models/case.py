"""``Case``: four MR images and a segmentation, valid once constructed.

A case either exists whole and checked, or its constructor raised a typed error that names the field and
the value found. Warnings that do not stop scoring (disagreeing affines, an unusual grid, NaN replaced,
legacy label 4) travel with the case and then with the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dqe.models.contract import CONTRACT_V1, FIELDS, MODALITIES, PreprocessingContract
from dqe.models.errors import EmptySegmentation, InvalidInput, NotFound
from dqe.models.labels import FLAG_HINT, apply_convention, track_warnings
from dqe.models.nifti import DEFAULT_MAX_VOXELS, Volume, affine_usable, decode_nifti, from_array, load_nifti

# Modality tokens in BraTS 2023 (-t1c/-t1n/-t2w/-t2f/-seg), BraTS 2021 (_t1ce/_t1/_t2/_flair/_seg) and
# BraTS Toolkit (_t1c/_t1/_t2/_fla, optionally followed by _bet) file names.
ALIASES: dict[str, tuple[str, ...]] = {
    "t1c": ("t1c", "t1ce", "t1gd"),
    "t1": ("t1", "t1n"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "fla", "t2f"),
    "segmentation": ("seg", "segmentation", "label", "labels"),
}
_TOKEN_TO_FIELD = {alias: f for f, aliases in ALIASES.items() for alias in aliases}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DEFAULT_MAX_GRID_SIDE = 512
"""Longest grid axis a case may have by default (voxels): 2.1x BraTS's 240; a view is at most 512 x 512 pixels,
4.6x the network's 240 x 240 input, so one oversized case cannot hold inference for long."""
DEFAULT_MAX_GRID_VOXELS = DEFAULT_MAX_VOXELS


def _stem(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def classify_filename(name: str) -> str | None:
    """The case field a BraTS-style file name stands for, or ``None`` (the last modality token wins)."""
    stem = _stem(name)
    if stem is None:
        return None
    tokens = [t for t in re.split(r"[-_.]", stem.lower()) if t]
    for token in reversed(tokens):
        if token in _TOKEN_TO_FIELD:
            return _TOKEN_TO_FIELD[token]
    return None


def discover_files(folder: str | Path, require_segmentation: bool = True) -> dict[str, Path]:
    """Map case fields to the files of a BraTS-style case folder.

    Raises:
        NotFound: the folder is missing or a modality has no file.
        InvalidInput: a modality matches several files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"case folder {str(folder)!r} does not exist", field="case_dir")
    found: dict[str, list[Path]] = {f: [] for f in FIELDS}
    for path in sorted(folder.iterdir()):
        kind = classify_filename(path.name) if path.is_file() else None
        if kind is not None:
            found[kind].append(path)
    wanted = FIELDS if require_segmentation else MODALITIES
    result: dict[str, Path] = {}
    for kind in wanted:
        paths = found[kind]
        if not paths:
            raise NotFound(
                f"case folder {str(folder)!r} has no {kind} file (looked for names ending in "
                f"{'/'.join(ALIASES[kind])} + .nii[.gz])",
                field=kind,
            )
        if len(paths) > 1:
            raise InvalidInput(
                f"case folder {str(folder)!r} has {len(paths)} {kind} files {[p.name for p in paths]}; "
                "name the one to use explicitly",
                field=kind,
            )
        result[kind] = paths[0]
    if not require_segmentation and len(found["segmentation"]) == 1:
        result["segmentation"] = found["segmentation"][0]
    return result


class Case:
    """Four co-registered MR images and a BraTS-style segmentation, validated on construction.

    Args:
        t1c, t1, t2, flair, segmentation: decoded volumes (see :mod:`dqe.models.nifti`).
        case_id: a name for logs and reports.
        contract: the preprocessing contract (valid labels).
        max_side: longest grid axis in voxels (0 = no limit).
        max_voxels: most voxels in the grid (0 = no limit).

    Raises:
        InvalidInput: a grid over ``max_side`` / ``max_voxels``, shapes differ, labels outside the contract's set, non-integer labels, an image with
            no finite voxel.
        EmptySegmentation: no tumour label anywhere.
    """

    __slots__ = (
        "case_id",
        "contract",
        "counts",
        "flair",
        "labels",
        "segmentation",
        "t1",
        "t1c",
        "t2",
        "warnings",
    )

    def __init__(
        self,
        t1c: Volume,
        t1: Volume,
        t2: Volume,
        flair: Volume,
        segmentation: Volume,
        case_id: str = "case",
        contract: PreprocessingContract = CONTRACT_V1,
        *,
        max_side: int = DEFAULT_MAX_GRID_SIDE,
        max_voxels: int = DEFAULT_MAX_GRID_VOXELS,
    ) -> None:
        self.t1c, self.t1, self.t2, self.flair, self.segmentation = t1c, t1, t2, flair, segmentation
        self.case_id = case_id
        self.contract = contract
        warnings: list[str] = []
        for vol in self.volumes:
            warnings.extend(vol.notes)
        self._check_shapes(max_side, max_voxels)
        self.labels, self.counts = self._check_labels(warnings)
        self._check_images(warnings)
        self._check_geometry(warnings)
        # another BraTS track by its name (BraTS-MET-..., -PED-, -MEN-, -SSA-): out of distribution
        warnings.extend(track_warnings((case_id, *(v.source for v in self.volumes))))
        self.warnings: tuple[str, ...] = tuple(warnings)

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def from_files(
        cls,
        t1c: str | Path,
        t1: str | Path,
        t2: str | Path,
        flair: str | Path,
        segmentation: str | Path,
        case_id: str | None = None,
        contract: PreprocessingContract = CONTRACT_V1,
        images: Mapping[str, Volume] | None = None,
        label_convention: str | None = None,
    ) -> Case:
        """Load and validate; the five files are decoded in parallel threads (zlib/igzip drop the GIL).

        ``images`` lets a caller reuse already decoded images (batch scoring of many segmentations).
        ``label_convention`` maps the segmentation's labels first (:mod:`dqe.models.labels`; ``None`` or
        ``auto``: read as BraTS, unchanged).
        """
        paths = {"t1c": t1c, "t1": t1, "t2": t2, "flair": flair, "segmentation": segmentation}
        todo = {k: v for k, v in paths.items() if not (images and k in images)}
        with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
            futures = {k: pool.submit(load_nifti, p, k) for k, p in todo.items()}
            vols = {k: f.result() for k, f in futures.items()}
        if images:
            vols.update({k: v for k, v in images.items() if k in MODALITIES})
        vols["segmentation"] = apply_convention(vols["segmentation"], label_convention)
        return cls.from_volumes(vols, case_id or Path(segmentation).name.split(".")[0], contract)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        segmentation: str | Path | None = None,
        contract: PreprocessingContract = CONTRACT_V1,
        label_convention: str | None = None,
    ) -> Case:
        """A case from a BraTS-style folder; ``segmentation`` overrides the folder's own ``*seg*`` file."""
        files = discover_files(folder, require_segmentation=segmentation is None)
        if segmentation is not None:
            files["segmentation"] = Path(segmentation)
        return cls.from_files(
            **files,  # type: ignore[arg-type]
            case_id=Path(folder).name,
            contract=contract,
            label_convention=label_convention,
        )

    @classmethod
    def from_bytes(
        cls, files: Mapping[str, bytes], case_id: str = "case", contract: PreprocessingContract = CONTRACT_V1
    ) -> Case:
        """A case from the bytes of five NIfTI files (gzip or not), keyed by field name."""
        missing = [f for f in FIELDS if not files.get(f)]
        if missing:
            raise InvalidInput(f"missing file bytes for {missing}", field=missing[0])
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {k: pool.submit(decode_nifti, files[k], k) for k in FIELDS}
            vols = {k: f.result() for k, f in futures.items()}
        return cls.from_volumes(vols, case_id, contract)

    @classmethod
    def from_arrays(
        cls,
        t1c: np.ndarray,
        t1: np.ndarray,
        t2: np.ndarray,
        flair: np.ndarray,
        segmentation: np.ndarray,
        case_id: str = "case",
        affine: np.ndarray | None = None,
        contract: PreprocessingContract = CONTRACT_V1,
    ) -> Case:
        """A case from in-memory voxel arrays (same semantics as NIfTI files with no scaling)."""
        arrays = {"t1c": t1c, "t1": t1, "t2": t2, "flair": flair, "segmentation": segmentation}
        vols = {k: from_array(v, k, affine) for k, v in arrays.items()}
        return cls.from_volumes(vols, case_id, contract)

    @classmethod
    def from_volumes(
        cls,
        volumes: Mapping[str, Volume],
        case_id: str = "case",
        contract: PreprocessingContract = CONTRACT_V1,
        *,
        max_side: int = DEFAULT_MAX_GRID_SIDE,
        max_voxels: int = DEFAULT_MAX_GRID_VOXELS,
    ) -> Case:
        """A case from decoded volumes keyed by field name (see the constructor for the limits)."""
        v = volumes
        return cls(
            v["t1c"], v["t1"], v["t2"], v["flair"], v["segmentation"], case_id=case_id, contract=contract,
            max_side=max_side, max_voxels=max_voxels,
        )  # fmt: skip

    # ----------------------------------------------------------------- properties
    @property
    def images(self) -> tuple[Volume, Volume, Volume, Volume]:
        """The four images in network channel order (t1c, t1, t2, flair)."""
        return (self.t1c, self.t1, self.t2, self.flair)

    @property
    def volumes(self) -> tuple[Volume, ...]:
        return (*self.images, self.segmentation)

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.segmentation.shape
        return (s[0], s[1], s[2])

    def labels_present(self) -> list[int]:
        return [int(v) for v in np.nonzero(self.counts)[0] if v > 0]

    # ----------------------------------------------------------------- validation
    def _check_shapes(self, max_side: int, max_voxels: int) -> None:
        ref = self.segmentation.shape
        if max_side and max(ref) > max_side:
            raise InvalidInput(
                f"segmentation has grid {ref}; at most {max_side} voxels along an axis are accepted",
                field="segmentation",
            )
        if max_voxels and int(np.prod(ref, dtype=object)) > max_voxels:
            raise InvalidInput(
                f"segmentation has grid {ref}; at most {max_voxels} voxels are accepted", field="segmentation"
            )
        for vol in self.images:
            if vol.shape != ref:
                raise InvalidInput(
                    f"{vol.name} has shape {vol.shape} but segmentation has shape {ref}; the five volumes must share one grid",
                    field=vol.name,
                )
        if min(ref) < 1:
            raise InvalidInput(f"segmentation has empty shape {ref}", field="segmentation")

    def _check_labels(self, warnings: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Label volume as uint8 and voxel counts per label; rejects anything outside the contract."""
        seg = self.segmentation.values()
        valid = set(self.contract.valid_labels)
        top = max(valid)
        valid_text = ", ".join(map(str, sorted(valid)))
        if seg.dtype.kind == "f":
            finite = np.isfinite(seg)
            if not finite.all():
                raise InvalidInput(
                    f"segmentation has {int(finite.size - np.count_nonzero(finite))} NaN/Inf voxels; "
                    f"expected labels {{{valid_text}}}",
                    field="segmentation",
                )
        lo, hi = seg.min(), seg.max()
        in_range = lo >= 0 and hi <= top
        labels = seg.astype(np.uint8, copy=False) if in_range else None
        if labels is None or (seg.dtype.kind == "f" and not np.array_equal(labels, seg)):
            bad_mask = (seg < 0) | (seg > top)
            if seg.dtype.kind == "f":
                bad_mask |= seg != np.round(seg)
            found = np.unique(seg[bad_mask])
            shown = ", ".join(f"{v:g}" for v in found[:10]) + (", ..." if found.size > 10 else "")
            raise InvalidInput(
                f"segmentation has labels {{{shown}}}; expected a subset of {{{valid_text}}}; {FLAG_HINT}",
                field="segmentation",
            )
        assert labels is not None
        # count_nonzero per label is ~5x faster than bincount, which widens every voxel to intp first
        counts = np.array([np.count_nonzero(labels == k) for k in range(top + 1)], dtype=np.int64)
        extra = sorted(k for k in range(top + 1) if counts[k] and k not in valid)
        if extra:
            raise InvalidInput(
                f"segmentation has labels {{{', '.join(map(str, extra))}}}; expected a subset of "
                f"{{{valid_text}}}; {FLAG_HINT}",
                field="segmentation",
            )
        if counts[1:].sum() == 0:
            raise EmptySegmentation(
                "segmentation has no tumour voxel (every label is 0); the centre of mass is undefined",
                field="segmentation",
            )
        if counts.size > 4 and counts[4] > 0:
            if counts[3] > 0:
                warnings.append(
                    "segmentation mixes label 3 and legacy label 4; both are read as enhancing tumour "
                    "(in a BraTS 2024 post-treatment map 4 is the resection cavity: pass "
                    "--label-convention brats2024-post)"
                )
            else:
                warnings.append(
                    "segmentation uses legacy label 4 for enhancing tumour (BraTS <= 2022); read as label 3"
                )
        return labels, counts[: top + 1]

    def _check_images(self, warnings: list[str]) -> None:
        for vol in self.images:
            data = vol.data
            if data.dtype.kind != "f":
                continue
            finite = np.isfinite(data)
            n_bad = int(finite.size - np.count_nonzero(finite))
            if n_bad == finite.size:
                raise InvalidInput(f"{vol.name} has no finite voxel (all NaN/Inf)", field=vol.name)
            if n_bad:
                warnings.append(
                    f"{vol.name}: {n_bad} NaN/Inf voxels replaced as the reference does (NaN -> 0, Inf -> float64 max)"
                )

    def _check_geometry(self, warnings: list[str]) -> None:
        if self.shape != tuple(self.contract.expected_grid):
            warnings.append(
                f"grid {self.shape} is not the BraTS/SRI-24 grid {tuple(self.contract.expected_grid)}; "
                "the model was trained on that grid"
            )
        unusable = [vol.name for vol in self.volumes if not affine_usable(vol.affine)]
        for name in unusable:
            warnings.append(
                f"{name}: header affine has NaN/Inf values or is singular; its geometry is ignored (voxels are "
                "used as stored) and the QC gate's header checks skip it"
            )
        ref = self.t1c.affine
        for vol in (*self.images[1:], self.segmentation):
            if vol.name in unusable or self.t1c.name in unusable:
                continue
            if not np.allclose(vol.affine, ref, atol=1e-3):
                warnings.append(
                    f"{vol.name} affine differs from t1c affine while the voxel grids align; "
                    "voxels are used as stored (the affine is ignored)"
                )
