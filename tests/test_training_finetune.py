"""Fine-tuning data: Dice / surface Dice targets, failure-aware tables, a short run from the released weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dqe.models.phantom import make_phantom, write_case  # noqa: E402
from dqe.training.finetune import (  # noqa: E402
    FinetuneCase,
    FinetuneOptions,
    build_table,
    dice,
    metric_score,
    read_cases,
    surface_dice,
)

GRID = (64, 64, 48)
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _ball(
    centre: tuple[int, int, int], radius: float, shape: tuple[int, int, int] = (40, 40, 40)
) -> np.ndarray:
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


def test_dice_and_surface_dice() -> None:
    a = _ball((20, 20, 20), 8)
    assert dice(a, a) == 1.0 and surface_dice(a, a, (1, 1, 1), 2.0) == 1.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0 and surface_dice(empty, empty, (1, 1, 1), 2.0) == 1.0
    assert dice(a, empty) == 0.0 and surface_dice(a, empty, (1, 1, 1), 2.0) == 0.0
    shifted = _ball((21, 20, 20), 8)
    assert 0.8 < dice(a, shifted) < 1.0
    # a 1 mm shift is within a 2 mm tolerance everywhere, but not within 0.5 mm
    assert surface_dice(a, shifted, (1, 1, 1), 2.0) == pytest.approx(1.0)
    assert surface_dice(a, shifted, (1, 1, 1), 0.5) < 0.9
    # anisotropic voxels: a 1-voxel shift along a 3 mm axis is 3 mm
    assert surface_dice(a, shifted, (3, 1, 1), 2.0) < 1.0
    far = _ball((20, 20, 20), 8, shape=(40, 40, 40)) & False
    far[2:6, 2:6, 2:6] = True
    assert surface_dice(a, far, (1, 1, 1), 2.0) == 0.0


def test_metric_score_maps_to_stars() -> None:
    ph = make_phantom(seed=1, shape=GRID)
    ref = ph.segmentation
    perfect = metric_score(ref, ref)
    assert perfect["stars"] == pytest.approx(6.0) and perfect["score"] == pytest.approx(1.0)
    moved = np.roll(ref, 6, axis=0)
    worse = metric_score(moved, ref)
    assert 1.0 <= worse["stars"] < perfect["stars"]
    assert worse["dice_WT"] < 1.0 and set(worse) >= {"dice_TC", "dice_ET", "sdice_WT", "sdice_TC", "sdice_ET"}
    # the worst region counts: ET relabelled as necrosis keeps WT and TC perfect but loses ET entirely
    no_et = np.where(ref == 3, 1, ref).astype(ref.dtype)
    exact = FinetuneOptions(min_region_ml=0.0)
    assert metric_score(no_et, ref, options=exact)["stars"] == pytest.approx(1.0)
    mean = metric_score(no_et, ref, options=FinetuneOptions(min_region_ml=0.0, aggregate="mean"))
    assert mean["stars"] == pytest.approx(1.0 + 5.0 * 2.0 / 3.0)
    wt_tc = metric_score(
        no_et, ref, options=FinetuneOptions(min_region_ml=0.0, region_weights={"WT": 1.0, "TC": 1.0})
    )
    assert wt_tc["stars"] == pytest.approx(6.0)
    # a region that is tiny in both segmentations is not scored: here ET (< 1 ml on this small phantom)
    et_ml = np.count_nonzero(ref == 3) / 1000.0
    assert et_ml < 1.0
    assert metric_score(no_et, ref)["stars"] == pytest.approx(6.0)
    # every voxel labelled: TC and ET untouched, but WT (and so the score) collapses
    everything = np.where(ref == 0, 2, ref).astype(ref.dtype)
    assert metric_score(everything, ref)["stars"] < 1.5
    assert metric_score(everything, ref, options=FinetuneOptions(aggregate="mean"))["stars"] > 3.0
    with pytest.raises(ValueError):
        FinetuneOptions(region_weights={"XX": 1.0}).validate()
    with pytest.raises(ValueError):
        FinetuneOptions(aggregate="max").validate()


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> list[FinetuneCase]:
    """Three phantom exams on a small grid; each has one algorithm-like candidate (the edema removed)."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("ft-exams")
    cases = []
    for i in range(3):
        ph = make_phantom(seed=20 + i, shape=GRID, lesion=("sphere", "lobulated", "ellipsoid")[i])
        paths = write_case(ph, root / f"EX{i}", case_id=f"EX{i}")
        cand = root / f"EX{i}" / "candidate.nii.gz"
        nib.save(
            nib.Nifti1Image(np.where(ph.segmentation == 2, 0, ph.segmentation).astype(np.uint8), ph.affine),
            str(cand),
        )
        images = {k: paths[k] for k in ("t1c", "t1", "t2", "flair")}
        cases.append(
            FinetuneCase(exam_id=f"EX{i}", images=images, reference=paths["segmentation"], candidates=(cand,))
        )
    return cases


FAST_MODES = ("shift", "erode", "dilate", "false_positives")


def test_metric_table(exams: list[FinetuneCase], tmp_path: Path) -> None:
    ratings, cands = build_table(
        exams[:1], FinetuneOptions(mode="metric", failure_modes=FAST_MODES), tmp_path
    )
    assert (tmp_path / "ratings.csv").is_file() and (tmp_path / "candidates.csv").is_file()
    assert list(cands["kind"]) == ["reference", "candidate"] + ["failure"] * len(FAST_MODES)
    assert set(cands["failure_mode"].fillna("")) == {"", *FAST_MODES}
    assert all(Path(p).is_file() for p in cands["segmentation"])
    ref_stars = cands.loc[cands["kind"] == "reference", "stars"].item()
    assert ref_stars == pytest.approx(6.0)
    assert (cands.loc[cands["kind"] == "failure", "stars"] < ref_stars).all()
    assert (
        ratings["stars"].between(1, 6).all()
        and set(ratings["view"]) == {"all"}
        and set(ratings["rater"]) == {"metric"}
    )
    # same seed, same failures: a second table reuses and reproduces them
    _, again = build_table(
        exams[:1], FinetuneOptions(mode="metric", failure_modes=FAST_MODES), tmp_path / "again"
    )
    np.testing.assert_allclose(again["stars"], cands["stars"])


def test_failure_table_fixed_good_stars(exams: list[FinetuneCase], tmp_path: Path) -> None:
    opts = FinetuneOptions(
        mode="failure", failure_modes=("shift", "dilate"), good_stars=5.0, failure_stars=1.5
    )
    ratings, cands = build_table(exams[:1], opts, tmp_path)
    fails = set(cands.loc[cands["kind"] == "failure", "segmentation"])
    assert len(fails) == 2
    assert (ratings.loc[ratings["segmentation"].isin(fails), "stars"] == 1.5).all()
    assert (ratings.loc[~ratings["segmentation"].isin(fails), "stars"] == 5.0).all()
    # 2 good (reference, candidate) and 2 failures: balanced already, one copy each
    assert len(ratings) == 4
    opts = FinetuneOptions(mode="failure", failure_modes=FAST_MODES, good_stars=5.0)
    ratings, _ = build_table(exams[:1], opts, tmp_path / "more")
    good = ratings[ratings["stars"] == 5.0]
    assert len(good) == len(ratings[ratings["stars"] == 1.5]) == 4 and set(good["rater"]) == {
        "fixed-0",
        "fixed-1",
    }


def test_verdict() -> None:
    from dqe.training.finetune import verdict

    base = {"n": 4, "mae_m": 1.0, "r_m": 0.2, "auc": 0.6, "good": 4.5, "fail": 4.0}
    better = {**base, "mae_m": 0.8, "r_m": 0.4, "auc": 0.8, "fail": 3.0}
    assert verdict("metric", {"before": base, "after": better, "drift": 0.2}) == (True, [])
    assert verdict("failure", {"before": base, "after": better, "drift": 0.2}) == (True, [])
    ok, reasons = verdict("failure", {"before": base, "after": better, "drift": 2.0})
    assert not ok and "moved 2.00 stars" in reasons[0]
    ok, reasons = verdict("metric", {"before": base, "after": {**better, "r_m": 0.1}, "drift": 0.0})
    assert not ok and "Pearson" in reasons[0]


def test_failure_table_teacher_matches_engine(exams: list[FinetuneCase], tmp_path: Path, engine) -> None:
    """Good segmentations keep the released model's own per-view stars (torch), equal to the engine's."""
    from dqe.models.case import Case

    opts = FinetuneOptions(mode="failure", failure_modes=("shift",))
    ratings, _ = build_table(exams[:1], opts, tmp_path)
    teacher = ratings[ratings["rater"].str.startswith("teacher")]
    assert len(teacher) == 6  # reference + candidate, three views each, one copy (1 failure < 2 good)
    ref = exams[0]
    result = engine.score_case(Case.from_files(**ref.images, segmentation=ref.reference))
    got = teacher[teacher["segmentation"] == str(ref.reference)].set_index("view")["stars"]
    for view, stars in result.views.items():
        assert got[view] == pytest.approx(float(np.clip(stars, 1, 6)), abs=1e-4)


def test_read_cases(exams: list[FinetuneCase], tmp_path: Path) -> None:
    import pandas as pd

    ex = exams[0]
    table = tmp_path / "cases.csv"
    pd.DataFrame(
        [
            {
                "exam_id": ex.exam_id,
                **{k: str(v) for k, v in ex.images.items()},
                "reference": str(ex.reference),
                "candidates": ";".join(map(str, ex.candidates)),
            }
        ]
    ).to_csv(table, index=False)
    (got,) = read_cases(table)
    assert got == ex
    from dqe.models.errors import InvalidInput

    pd.DataFrame([{"exam_id": "x"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InvalidInput):
        read_cases(tmp_path / "bad.csv")


@pytest.mark.slow
def test_dqe_finetune_from_released_weights(exams: list[FinetuneCase], tmp_path: Path, capsys) -> None:
    """``dqe finetune`` (metric surrogate, 2 epochs): starts from the released weights, reports before/after."""
    import pandas as pd

    from dqe.service.cli import main

    rows = [
        {
            "exam_id": ex.exam_id,
            **{k: str(v) for k, v in ex.images.items()},
            "reference": str(ex.reference),
            "candidates": str(ex.candidates[0]),
        }
        for ex in exams
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "cases.csv", index=False)
    run = tmp_path / "run"
    argv = [
        "finetune",
        "--mode",
        "metric",
        "--cases",
        str(tmp_path / "cases.csv"),
        "--out",
        str(run),
        "--no-progress",
    ]
    argv += ["--failure-modes", "shift,erode", "--device", "cpu"]
    for item in (
        "train.epochs=2",
        "data.val_exams=[EX2]",
        "contract.overrides={spatial_size: [64, 64], expected_grid: [64, 64, 48]}",
    ):
        argv += ["--set", item]
    rc = main(argv)
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["mode"] == "metric" and isinstance(out["improved"], bool)
    assert out["improved"] == (not out["reasons"])
    assert out["before"]["n"] == out["after"]["n"] == 4  # EX2: reference, candidate, 2 failures
    assert set(out["before"]) == {"n", "mae_m", "r_m", "auc", "good", "fail"} and out["drift"] >= 0
    record = json.loads((run / "run.json").read_text())
    assert (
        record["val_exams"] == ["EX2"]
        and record["cached_features"] is True
        and record["finetune"]["mode"] == "metric"
    )
    # the released weights are the starting point: the frozen blocks did not move, the head did
    from dqe.models.network import load_state_dict
    from dqe.training.model import released_weights

    start, end = load_state_dict(released_weights()), torch.load(run / "model.pth", weights_only=True)
    torch.testing.assert_close(end["features.conv0.weight"], start["features.conv0.weight"], rtol=0, atol=0)
    assert not torch.equal(end["class_layers.out.weight"], start["class_layers.out.weight"])
    assert (run / "eval_initial" / "scatter.png").is_file() and (run / "eval" / "bland_altman.png").is_file()


@pytest.mark.real_data
@pytest.mark.slow
def test_metric_targets_on_a_real_exam(tmp_path: Path) -> None:
    """TCGA-DU-7294: the algorithms agree with the majority-vote fusion far better than generated failures."""
    from tests.conftest import TOOLKIT

    root = TOOLKIT / "TCGA-DU-7294" / "TCGA-DU-7294_brainles"
    raw = root / "raw_bet"
    case = FinetuneCase(
        exam_id="TCGA-DU-7294",
        images={
            k: raw / f"TCGA-DU-7294_{v}_bet.nii.gz"
            for k, v in {"t1c": "t1c", "t1": "t1", "t2": "t2", "flair": "fla"}.items()
        },
        reference=root / "fusion" / "mav.nii.gz",
        candidates=tuple(sorted((root / "segmentation").glob("*.nii.gz"))),
        brain_mask=root / "brain-extraction" / "atlas_bet_t1c_mask.nii.gz",
    )
    _, cands = build_table([case], FinetuneOptions(mode="metric", failure_modes=("shift", "spill")), tmp_path)
    algos = cands[cands["kind"] == "candidate"]
    fails = cands[cands["kind"] == "failure"]
    assert len(algos) == 5 and len(fails) == 2
    assert algos["dice_WT"].min() > 0.8
    assert fails["stars"].max() < algos["stars"].min()
