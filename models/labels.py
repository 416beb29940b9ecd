"""Label conventions and BraTS tracks, as data.

The released model was trained on adult-glioma BraTS segmentations (labels 1 necrosis / non-enhancing
core, 2 edema / SNFH, 3 or legacy 4 enhancing tumour). Everything downstream (the network's TC/WT/ET
channels, the QC checks) reads that layout. Other layouts are *mapped* to it before a
:class:`~dqe.models.case.Case` is built (:func:`apply_convention`), and a case that is outside the model's
training distribution -- another BraTS track by its name, or a non-BraTS label map -- carries a warning
into every result (:func:`track_warnings`, :data:`LabelConvention.caveat`).

Conventions (``--label-convention NAME``):

``auto`` (default)
    no mapping: labels {0, 1, 2, 3, 4} are read as BraTS, 3 and legacy 4 both as enhancing tumour, exactly
    as the reference package does (star parity). Anything else is refused with a message naming the flag.
``brats2023``
    BraTS 2023+ (GLI, MET, PED, MEN, SSA): 1 NETC, 2 SNFH, 3 ET.
``brats2021``
    BraTS <= 2022: 1 NCR/NET, 2 ED, 4 ET (4 mapped to 3; a 3 in such a map is refused).
``brats2024-post``
    BraTS 2024 post-treatment glioma: 1 NETC, 2 SNFH, 3 ET, 4 resection cavity. The cavity is not tumour
    and the model has no label for it: it is mapped to background (read as legacy ET it would corrupt the
    TC and ET channels). Post-treatment images are outside the training distribution.
``msd``
    Medical Segmentation Decathlon Task01_BrainTumour: 1 edema, 2 non-enhancing tumour, 3 enhancing
    tumour -> 2, 1, 3.
``met-core-edema``
    a two-label metastasis map: 1 lesion (enhancing rim and necrotic centre together), 2 peritumoral
    edema -> 3, 2 (the lesion is read as enhancing tumour; the necrosis channel stays empty).
``whole-tumour``
    a single lesion label 1 -> 2 (whole tumour only; TC and ET channels empty, the centre of mass falls
    back to any label as the reference does).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from dqe.models.errors import InvalidInput
from dqe.models.nifti import Volume

logger = logging.getLogger(__name__)

AUTO = "auto"
FLAG = "--label-convention"
TRAINING_DISTRIBUTION = "adult glioma, BraTS label maps"


@dataclass(frozen=True)
class LabelConvention:
    """A label layout and how it maps onto the model's (BraTS 2023) labels.

    Attributes:
        name: the flag value.
        description: one line for help texts.
        mapping: file value -> model label (0 background, 1 necrosis, 2 edema, 3 enhancing tumour).
        caveat: a warning attached to every result scored with this convention ("" when the map is a BraTS
            adult-glioma map the model was trained on).
    """

    name: str
    description: str
    mapping: Mapping[int, int]
    caveat: str = ""

    @property
    def values(self) -> tuple[int, ...]:
        """The label values a map in this convention may contain."""
        return tuple(sorted(self.mapping))


def _non_brats(what: str) -> str:
    return (
        f"labels mapped from the {what} convention to BraTS labels; the model was trained on "
        f"{TRAINING_DISTRIBUTION}: stars for other label maps are outside its training distribution"
    )


CONVENTIONS: dict[str, LabelConvention] = {
    c.name: c
    for c in (
        LabelConvention("brats2023", "BraTS 2023+: 1 NETC, 2 SNFH, 3 ET", {0: 0, 1: 1, 2: 2, 3: 3}),
        LabelConvention("brats2021", "BraTS <= 2022: 1 NCR/NET, 2 ED, 4 ET", {0: 0, 1: 1, 2: 2, 4: 3}),
        LabelConvention(
            "brats2024-post",
            "BraTS 2024 post-treatment glioma: 1 NETC, 2 SNFH, 3 ET, 4 resection cavity (-> background)",
            {0: 0, 1: 1, 2: 2, 3: 3, 4: 0},
            "BraTS 2024 post-treatment map: the resection cavity (label 4) was mapped to background; the "
            f"model was trained on pre-treatment {TRAINING_DISTRIBUTION}: post-treatment cases are outside "
            "its training distribution",
        ),
        LabelConvention(
            "msd",
            "Medical Segmentation Decathlon Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing",
            {0: 0, 1: 2, 2: 1, 3: 3},
            _non_brats("Medical Segmentation Decathlon (1 edema, 2 non-enhancing, 3 enhancing)"),
        ),
        LabelConvention(
            "met-core-edema",
            "two-label metastasis map: 1 lesion (-> enhancing tumour), 2 edema",
            {0: 0, 1: 3, 2: 2},
            _non_brats("two-label metastasis (1 lesion, 2 edema)"),
        ),
        LabelConvention(
            "whole-tumour",
            "single lesion label 1 (-> whole tumour only)",
            {0: 0, 1: 2},
            _non_brats("single-label whole-tumour"),
        ),
    )
}
CHOICES: tuple[str, ...] = (AUTO, *CONVENTIONS)
FLAG_HINT = f"if the map uses another label convention, pass {FLAG} ({', '.join(CONVENTIONS)})"


def get_convention(name: str | None) -> LabelConvention | None:
    """The convention called ``name``; ``None`` for ``auto`` (or ``None``: no mapping).

    Raises:
        InvalidInput: unknown name (the message lists the choices).
    """
    if name is None or name == AUTO:
        return None
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise InvalidInput(
            f"label convention {name!r} is not one of {', '.join(CHOICES)}", field="label_convention"
        ) from None


def _set(values: Iterable[int]) -> str:
    return "{" + ", ".join(str(v) for v in sorted(values)) + "}"


def apply_convention(segmentation: Volume, convention: str | LabelConvention | None) -> Volume:
    """The segmentation with its labels mapped to the model's; the convention's caveat is added to its
    notes (which every :class:`~dqe.models.case.Case` result carries as warnings).

    ``auto``/``None`` returns the volume unchanged (no copy).

    Raises:
        InvalidInput: a value the convention does not define (the message names the values found, the
            convention and the flag), non-integer or non-finite labels, or an unknown convention name.
    """
    conv = get_convention(convention) if not isinstance(convention, LabelConvention) else convention
    if conv is None:
        return segmentation
    seg = segmentation.values()
    if seg.dtype.kind == "f" and not (np.isfinite(seg).all() and np.array_equal(seg, np.round(seg))):
        raise InvalidInput(
            f"segmentation has non-integer or non-finite labels; the {conv.name} convention has "
            f"{_set(conv.values)}",
            field="segmentation",
        )
    top = max(conv.values)
    lut = np.zeros(top + 1, dtype=np.uint8)
    for src, dst in conv.mapping.items():
        lut[src] = dst
    ints = seg.astype(np.int64, copy=False)
    lo, hi = int(ints.min()), int(ints.max())
    present = {int(v) for v in np.unique(ints)} if (lo < 0 or hi > top) else None
    if present is None:
        counts = np.bincount(ints.ravel(), minlength=top + 1)
        present = {int(v) for v in np.flatnonzero(counts)}
    unknown = sorted(present - set(conv.values))
    if unknown:
        raise InvalidInput(
            f"segmentation has labels {_set(unknown)}, which the {conv.name} convention ({conv.description}) "
            f"does not define; expected a subset of {_set(conv.values)}. {FLAG_HINT[0].upper()}{FLAG_HINT[1:]}",
            field="segmentation",
        )
    mapped = lut[ints]
    notes = segmentation.notes + ((conv.caveat,) if conv.caveat else ())
    logger.debug("segmentation %s mapped with the %s convention", segmentation.source, conv.name)
    return replace(segmentation, data=mapped, slope=1.0, inter=0.0, notes=notes)


# ----------------------------------------------------------------------------------------- tracks
@dataclass(frozen=True)
class Track:
    """A BraTS challenge track recognised from case or file names."""

    code: str
    disease: str
    in_distribution: bool
    convention: str


TRACKS: dict[str, Track] = {
    t.code: t
    for t in (
        Track("GLI", "adult glioma", True, "brats2023"),
        Track(
            "SSA",
            "adult glioma from Sub-Saharan Africa (other scanners and image quality)",
            False,
            "brats2023",
        ),
        Track("MET", "brain metastases", False, "brats2023"),
        Track("PED", "paediatric brain tumours", False, "brats2023"),
        Track("MEN", "meningioma (extra-axial)", False, "brats2023"),
        Track("MEN-RT", "meningioma radiotherapy planning", False, "brats2023"),
        Track("GOAT", "mixed tumour types (generalisability across tumours)", False, "brats2023"),
    )
}
# BraTS 2023+ names: BraTS-MET-00001-000; legacy names: BraTS2021_00000, BraTS20_Training_001.
_TRACK_RE = re.compile(r"brats-(gli|ssa|met|ped|men-rt|men|goat)-\d", re.IGNORECASE)
_LEGACY_RE = re.compile(r"brats(?:20)?\d\d_(?:training_|validation_)?\d", re.IGNORECASE)


def detect_track(names: Iterable[str]) -> Track | None:
    """The BraTS track named in any of ``names`` (case ids, file paths); the first match wins.

    Legacy names (``BraTS2021_00000``, ``BraTS20_Training_001``) are adult glioma in the <= 2022 convention.
    """
    for name in names:
        m = _TRACK_RE.search(name or "")
        if m:
            return TRACKS[m.group(1).upper()]
        if _LEGACY_RE.search(name or ""):
            return Track("GLI", "adult glioma", True, "brats2021")
    return None


def track_warnings(names: Iterable[str]) -> list[str]:
    """The out-of-distribution warning for a case named as a BraTS track other than adult glioma."""
    track = detect_track(names)
    if track is None or track.in_distribution:
        return []
    return [
        f"case is named as BraTS-{track.code} ({track.disease}): outside the released model's training "
        f"distribution ({TRAINING_DISTRIBUTION}); the stars are not validated for this track"
    ]
