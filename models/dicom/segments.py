"""SEG segments -> BraTS labels (1 necrosis, 2 edema, 3 enhancing), by Segmented Property Type code or by
Segment Label; the map is data (``segment_map.json`` beside this module, replaced by ``--segment-map``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqe.models.dicom.errors import UnmappedSegment
from dqe.models.dicom.rules import read_json
from dqe.models.errors import InvalidInput

DEFAULT_SEGMENT_MAP_PATH = Path(__file__).with_name("segment_map.json")


@dataclass(frozen=True)
class LabelRule:
    label: int
    name: str
    codes: frozenset[tuple[str, str]]
    pattern: str


@dataclass(frozen=True)
class SegmentMap:
    """Rules tried in label order; see ``segment_map.json`` for the format."""

    rules: tuple[LabelRule, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "segment map") -> SegmentMap:
        labels = data.get("labels")
        if not isinstance(labels, Mapping) or not labels:
            raise InvalidInput(f"{source}: needs a 'labels' object", field="segment_map")
        rules = []
        for key, spec in sorted(labels.items(), key=lambda kv: int(kv[0])):
            try:
                label = int(key)
                codes = frozenset((str(v), str(s).upper()) for v, s in spec.get("codes", []))
                pattern = str(spec.get("label", ""))
                re.compile(pattern)
            except (TypeError, ValueError, re.error, AttributeError) as exc:
                raise InvalidInput(
                    f"{source}: labels.{key} is malformed ({exc})", field="segment_map"
                ) from None
            if label not in (1, 2, 3):
                raise InvalidInput(f"{source}: label {label}; expected 1, 2 or 3", field="segment_map")
            rules.append(LabelRule(label, str(spec.get("name", key)), codes, pattern))
        return cls(tuple(rules))

    @classmethod
    def load(cls, path: str | Path | None = None) -> SegmentMap:
        source = Path(path) if path else DEFAULT_SEGMENT_MAP_PATH
        return cls.from_dict(read_json(source, "segment map", "segment_map"), str(source))

    def label_for(self, number: int, label: str, code: tuple[str, str] | None) -> int:
        """The BraTS label of segment ``number``.

        Raises:
            UnmappedSegment: no rule matches (names the segment, its label and code).
        """
        if code is not None:
            for rule in self.rules:
                if (code[0], code[1].upper()) in rule.codes:
                    return rule.label
        for rule in self.rules:
            if rule.pattern and re.search(rule.pattern, label, flags=re.IGNORECASE):
                return rule.label
        raise UnmappedSegment(
            f"SEG segment {number} ({label!r}, property type {code}) maps to none of "
            f"{', '.join(f'{r.label} {r.name}' for r in self.rules)}; give a segment map that names it",
            field="segmentation",
        )

    def name_of(self, label: int) -> str:
        return next((r.name for r in self.rules if r.label == label), str(label))
