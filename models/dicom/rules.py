"""Series selection as data: which MR series of a study is t1c, t1, t2 or flair.

The default rules live in ``series_rules.json`` beside this module (their format is described in its
``comment``); a JSON file of the same shape replaces them (``--series-rules``, ``DQE_DICOM_SERIES_RULES``).
The idea is MONAI Deploy's series selector: rules on series attributes, not on file names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqe.models.contract import MODALITIES
from dqe.models.dicom.errors import AmbiguousSeries, ModalityNotFound
from dqe.models.errors import InvalidInput

DEFAULT_RULES_PATH = Path(__file__).with_name("series_rules.json")


@dataclass(frozen=True)
class SeriesRules:
    """Rules per field (alternatives, each a mapping keyword -> condition) and the order fields are matched."""

    order: tuple[str, ...]
    fields: Mapping[str, tuple[Mapping[str, Any], ...]]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "rules") -> SeriesRules:
        """Raises:
        InvalidInput: not the documented shape (names the source and the key)."""
        fields = data.get("fields")
        order = tuple(data.get("order", MODALITIES))
        if not isinstance(fields, Mapping) or sorted(order) != sorted(MODALITIES):
            raise InvalidInput(
                f"{source}: needs 'fields' (a mapping) and 'order' listing {list(MODALITIES)}",
                field="series_rules",
            )
        out: dict[str, tuple[Mapping[str, Any], ...]] = {}
        for name in MODALITIES:
            rules = fields.get(name)
            if not isinstance(rules, list) or not all(isinstance(r, Mapping) and r for r in rules):
                raise InvalidInput(
                    f"{source}: fields.{name} must be a list of non-empty objects", field="series_rules"
                )
            for rule in rules:
                for key, cond in rule.items():
                    _check_condition(source, name, key, cond)
            out[name] = tuple(rules)
        return cls(order=order, fields=out)

    @classmethod
    def load(cls, path: str | Path | None = None) -> SeriesRules:
        """The rules of ``path`` (a JSON file), or the defaults."""
        source = Path(path) if path else DEFAULT_RULES_PATH
        return cls.from_dict(read_json(source, "series rules", "series_rules"), str(source))


def read_json(source: Path, what: str, field: str) -> Any:
    """The JSON document of ``source``; :class:`InvalidInput` naming ``what`` when unreadable."""
    try:
        return json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{what} {str(source)!r} unreadable: {exc}", field=field) from None


def _check_condition(source: str, name: str, key: str, cond: Any) -> None:
    ok = isinstance(cond, bool | str) or (
        isinstance(cond, list) and len(cond) == 2 and all(isinstance(v, int | float) for v in cond)
    )
    if not ok:
        raise InvalidInput(
            f"{source}: fields.{name}.{key} = {cond!r}; expected a regex, [min, max] or true/false",
            field="series_rules",
        )
    if isinstance(cond, str):
        try:
            re.compile(cond)
        except re.error as exc:
            raise InvalidInput(
                f"{source}: fields.{name}.{key}: bad regex ({exc})", field="series_rules"
            ) from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        return value.decode(errors="replace") if isinstance(value, bytes) else value
    try:
        return "\\".join(str(v) for v in value)
    except TypeError:
        return str(value)


def _number(value: Any) -> float | None:
    try:
        return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return None


def matches(rule: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    """Whether every condition of ``rule`` holds for ``attributes`` (keyword -> value of the first instance)."""
    for key, cond in rule.items():
        value = attributes.get(key)
        present = _text(value).strip() != ""
        if isinstance(cond, bool):
            if cond != present:
                return False
        elif isinstance(cond, str):
            if not re.search(cond, _text(value), flags=re.IGNORECASE):
                return False
        else:
            number = _number(value)
            if number is None or not (cond[0] <= number <= cond[1]):
                return False
    return True


def describe(attributes: Mapping[str, Any]) -> str:
    """``'#5 "T2 FLAIR"'``: how errors name a series."""
    return f"#{_text(attributes.get('SeriesNumber')) or '?'} {_text(attributes.get('SeriesDescription'))!r}"


def select_series(series: Mapping[str, Mapping[str, Any]], rules: SeriesRules) -> dict[str, str]:
    """Assign a series UID to each of t1c, t1, t2, flair.

    Args:
        series: series UID -> attributes of its first instance (MR image series only).

    Raises:
        ModalityNotFound: no series matched a field (lists the series that were there).
        AmbiguousSeries: the first matching rule of a field matched several series.
    """
    chosen: dict[str, str] = {}
    free = dict(series)
    for name in rules.order:
        for rule in rules.fields[name]:
            hits = [uid for uid, attrs in free.items() if matches(rule, attrs)]
            if len(hits) > 1:
                raise AmbiguousSeries(
                    f"{name}: {len(hits)} series match rule {dict(rule)}: "
                    f"{', '.join(describe(series[u]) for u in hits)}; give a series rules file that tells them apart",
                    field=name,
                )
            if hits:
                chosen[name] = hits[0]
                del free[hits[0]]
                break
        else:
            present = ", ".join(describe(a) for a in series.values()) or "none"
            raise ModalityNotFound(
                f"no series matches the {name} rules; the study's MR series are: {present}", field=name
            )
    return chosen
