"""Ratings tables -> centre-of-mass view samples, through the same preprocessing contract as serving.

A ratings table (CSV or Parquet) has one row per rating:

====================  ===========================================================================
``exam_id``           the patient/exam; the train/validation split is made on this column
``t1c t1 t2 flair``   image paths (relative paths are resolved against the table's folder)
``segmentation``      the rated segmentation
``view``              ``axial``, ``coronal``, ``sagittal`` or ``all`` (one rating for every view)
``rater``             who rated (any string)
``stars``             the rating, 1 (very bad) to 6 (very good); fractions allowed
====================  ===========================================================================

Each distinct (images, segmentation) pair is a *segmentation*; it is loaded with :class:`dqe.models.case.Case`
(the serving validation) and turned into views by :func:`dqe.models.preprocess.build_views` with the run's
contract, so training sees exactly what the engine will see.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dqe.models.case import Case
from dqe.models.contract import PreprocessingContract
from dqe.models.errors import DQEError, InvalidInput, NotFound
from dqe.models.preprocess import build_views
from dqe.models.registry import sha256_file

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("t1c", "t1", "t2", "flair")
PATH_COLUMNS = (*IMAGE_COLUMNS, "segmentation")
COLUMNS = ("exam_id", *PATH_COLUMNS, "view", "rater", "stars")
ALL_VIEWS = "all"
STARS_RANGE = (1.0, 6.0)


def read_ratings(path: str | Path, views: Sequence[str] = ("axial", "coronal", "sagittal")) -> pd.DataFrame:
    """Read and validate a ratings table; paths come back absolute.

    Raises:
        NotFound: the table or a file it names does not exist.
        InvalidInput: a column is missing, a view or a star value is out of range.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"ratings table {str(path)!r} does not exist", field="ratings")
    df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    return validate_ratings(df, root=path.parent, views=views)


def validate_ratings(
    df: pd.DataFrame, root: str | Path | None = None, views: Sequence[str] = ("axial", "coronal", "sagittal")
) -> pd.DataFrame:
    """Check a ratings table (see the module docstring) and resolve its paths against ``root``.

    Raises:
        InvalidInput / NotFound: as :func:`read_ratings`.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InvalidInput(
            f"ratings table lacks columns {missing}; expected {list(COLUMNS)}", field="ratings"
        )
    if df.empty:
        raise InvalidInput("ratings table has no rows", field="ratings")
    df = df.loc[:, list(COLUMNS)].copy()
    for col in ("exam_id", "view", "rater", *PATH_COLUMNS):
        df[col] = df[col].astype(str)
    df["view"] = df["view"].str.lower()
    bad_views = sorted(set(df["view"]) - {*views, ALL_VIEWS})
    if bad_views:
        raise InvalidInput(
            f"ratings table has views {bad_views}; expected {[*views, ALL_VIEWS]}", field="view"
        )
    stars = df["stars"].astype(float)
    bad = ~np.isfinite(stars) | (stars < STARS_RANGE[0]) | (stars > STARS_RANGE[1])
    if bad.any():
        raise InvalidInput(
            f"ratings table has {int(bad.sum())} star values outside [1, 6], e.g. {stars[bad].iloc[0]!r}",
            field="stars",
        )
    df["stars"] = stars
    base = Path(root) if root is not None else Path.cwd()
    for col in PATH_COLUMNS:
        df[col] = [str(p if Path(p).is_absolute() else (base / p).resolve()) for p in df[col]]
    absent = sorted({p for col in PATH_COLUMNS for p in df[col] if not Path(p).is_file()})
    if absent:
        raise NotFound(
            f"ratings table names {len(absent)} missing files, e.g. {absent[0]!r}", field="ratings"
        )
    df["seg_key"] = [
        hashlib.sha1("\0".join(row).encode()).hexdigest()[:16]
        for row in df.loc[:, list(PATH_COLUMNS)].itertuples(index=False, name=None)
    ]
    return df.reset_index(drop=True)


def expand_views(df: pd.DataFrame, views: Sequence[str]) -> pd.DataFrame:
    """One row per (rating, view): a rating for ``all`` becomes one row per view."""
    import pandas as pd

    parts = [df[df["view"] != ALL_VIEWS]]
    for view in views:
        rows = df[df["view"] == ALL_VIEWS].copy()
        rows["view"] = view
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def split_exams(
    exams: Sequence[str], val_fraction: float, seed: int, val_exams: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """Seeded split by exam: ``round(val_fraction * n)`` exams held out (at least one when 0 < fraction).

    Raises:
        InvalidInput: ``val_exams`` names an exam that is not in the table.
    """
    unique = sorted(set(exams))
    if val_exams:
        unknown = sorted(set(val_exams) - set(unique))
        if unknown:
            raise InvalidInput(f"data.val_exams {unknown} are not in the ratings table", field="val_exams")
        held = sorted(set(val_exams))
    else:
        n_val = round(val_fraction * len(unique))
        if val_fraction > 0 and n_val == 0 and len(unique) > 1:
            n_val = 1
        order = np.random.default_rng(seed).permutation(len(unique))
        held = sorted(unique[i] for i in order[:n_val])
    train = [e for e in unique if e not in set(held)]
    return train, held


def make_samples(df: pd.DataFrame, views: Sequence[str], targets: str) -> pd.DataFrame:
    """Training samples: ``seg_key, exam_id, view, target, n_ratings``.

    ``targets="rater"`` keeps one sample per individual rating; ``"mean"`` one per rated view with the
    mean of its ratings.
    """
    rows = expand_views(df, views)
    if targets == "rater":
        out = rows.loc[:, ["seg_key", "exam_id", "view", "stars"]].rename(columns={"stars": "target"})
        out["n_ratings"] = 1
        return out.reset_index(drop=True)
    if targets != "mean":
        raise ValueError(f"targets is {targets!r}; expected 'rater' or 'mean'")
    return rated_views(rows)


def rated_views(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per rated (segmentation, view) with the raters' mean as ``target`` (for evaluation)."""
    grouped = rows.groupby(["seg_key", "exam_id", "view"], sort=False)["stars"]
    out = grouped.agg(["mean", "size"]).reset_index()
    return out.rename(columns={"mean": "target", "size": "n_ratings"})


def data_hash(df: pd.DataFrame) -> str:
    """sha256 over the ratings and the content of every file they name (not their paths), so the same
    data moved to another folder hashes the same."""
    digest = hashlib.sha256()
    shas = {p: sha256_file(p) for p in sorted({p for col in PATH_COLUMNS for p in df[col]})}
    canon = df.loc[:, ["exam_id", "view", "rater", "stars"]].copy()
    for col in PATH_COLUMNS:
        canon[col] = df[col].map(shas)
    canon = canon.sort_values(list(canon.columns))
    digest.update(canon.to_csv(index=False).encode())
    return digest.hexdigest()


@dataclass
class ViewBank:
    """Preprocessed views of every segmentation in a table: ``views[seg_key]`` is ``(V, C, H, W)`` float32."""

    contract: PreprocessingContract
    views: dict[str, np.ndarray]
    com: dict[str, tuple[int, int, int]]
    skipped: dict[str, str]

    def view(self, seg_key: str, view: str) -> np.ndarray:
        return self.views[seg_key][self.contract.views.index(view)]

    def stack(self, seg_keys: Sequence[str], views: Sequence[str]) -> np.ndarray:
        """``(N, C, H, W)`` float32 for parallel sequences of segmentation keys and view names.

        Raises:
            InvalidInput: views differ in shape (grids that pad to different sizes).
        """
        arrays = [self.view(k, v) for k, v in zip(seg_keys, views, strict=True)]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise InvalidInput(
                f"views have several shapes {sorted(shapes)}; set contract.overrides.spatial_size to pad them to one",
                field="spatial_size",
            )
        return np.stack(arrays).astype(np.float32, copy=False)


def _cache_key(paths: Sequence[str], contract: PreprocessingContract) -> str:
    digest = hashlib.sha256(json.dumps(contract.to_dict(), sort_keys=True).encode())
    for p in paths:
        st = Path(p).stat()
        digest.update(f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def build_view_bank(
    df: pd.DataFrame,
    contract: PreprocessingContract,
    cache_dir: str | Path | None = None,
    skip_invalid: bool = False,
    progress: bool = False,
) -> ViewBank:
    """Load every distinct segmentation once (images decoded once per exam) and build its views.

    Views are cached as ``.npy`` in ``cache_dir``, keyed by the file paths, sizes, mtimes and the contract.

    Raises:
        DQEError: a case is invalid (unless ``skip_invalid``, which records it in ``skipped`` instead).
    """

    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    unique = df.drop_duplicates("seg_key").sort_values([*IMAGE_COLUMNS, "seg_key"])
    views: dict[str, np.ndarray] = {}
    coms: dict[str, tuple[int, int, int]] = {}
    skipped: dict[str, str] = {}
    images = None
    images_key: tuple[str, ...] | None = None
    rows = list(unique.itertuples(index=False))
    iterator = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="views", unit="seg", leave=False)
    for row in iterator:
        paths = [getattr(row, c) for c in PATH_COLUMNS]
        key = _cache_key(paths, contract)
        npy = cache / f"{key}.npy" if cache else None
        meta = cache / f"{key}.json" if cache else None
        if npy is not None and meta is not None and npy.is_file() and meta.is_file():
            views[row.seg_key] = np.load(npy)
            coms[row.seg_key] = tuple(json.loads(meta.read_text())["com"])  # type: ignore[assignment]
            continue
        img_key = tuple(paths[:4])
        try:
            files = dict(zip(PATH_COLUMNS, paths, strict=True))
            case = Case.from_files(
                **files,  # type: ignore[arg-type]
                case_id=str(row.exam_id),
                contract=contract,
                images=images if img_key == images_key else None,
            )
            images, images_key = dict(zip(IMAGE_COLUMNS, case.images, strict=True)), img_key
            arr, com = build_views(case.images, case.labels, contract)
        except DQEError as exc:
            if not skip_invalid:
                raise
            logger.warning("skipping %s: %s", paths[-1], exc.message)
            skipped[row.seg_key] = exc.message
            continue
        stacked = np.stack(arr).astype(np.float32)
        views[row.seg_key] = stacked
        coms[row.seg_key] = com
        if npy is not None and meta is not None:
            _atomic_save(npy, stacked)
            meta.write_text(json.dumps({"com": list(com), "segmentation": paths[-1]}))
    return ViewBank(contract=contract, views=views, com=coms, skipped=skipped)
