"""Consensus agreement in batch: Dice of each team with the majority vote of the other teams, per region."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_batch_data import BROKEN, CASES, TEAMS, build_dataset

pytest.importorskip("pandas")
pytest.importorskip("tqdm")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


# ------------------------------------------------------------------ the core rule on small arrays
def test_majority_of_others_by_hand() -> None:
    from dqe.models.qc.consensus import consensus_dice

    base = np.zeros((6, 6, 6), dtype=np.uint8)
    a = base.copy()
    a[1:4, 1:4, 1:4] = 2  # 27 voxels of edema
    a[2, 2, 2] = 3  # one ET voxel
    b = a.copy()
    c = a.copy()
    c[1:4, 1:4, 1:5] = 2  # 9 voxels more
    c[2, 2, 2] = 3
    d = np.zeros_like(a)  # an empty segmentation: votes, and disagrees with everyone
    out = consensus_dice([a, b, c, d, None])
    assert out[4] is None
    # for a: others b, c, d -> majority (>= 2 of 3) = a's 27 voxels exactly
    assert out[0] == pytest.approx({"wt": 1.0, "tc": 1.0, "et": 1.0})
    # for c (36 voxels): majority of a, b, d = a's 27 -> 2*27/63
    assert out[2]["wt"] == pytest.approx(2 * 27 / 63)
    # for d: majority of a, b, c = 27 voxels, d empty -> 0; et likewise
    assert out[3] == pytest.approx({"wt": 0.0, "tc": 0.0, "et": 0.0})


def test_two_others_vote_by_intersection_and_fewer_give_nothing() -> None:
    from dqe.models.qc.consensus import consensus_dice

    a = np.zeros((5, 5, 5), dtype=np.uint8)
    a[0:2] = 2
    b = np.zeros_like(a)
    b[1:3] = 2
    c = np.zeros_like(a)
    c[1:2] = 2
    out = consensus_dice([a, b, c])
    # for a: b & c = slab 1 -> dice(a (2 slabs), 1 slab) = 2/3
    assert out[0]["wt"] == pytest.approx(_dice(a > 0, (b > 0) & (c > 0)))
    assert out[0]["wt"] == pytest.approx(2 / 3)
    # regions absent everywhere agree (both empty -> 1)
    assert out[0]["et"] == 1.0
    assert consensus_dice([a, b]) == [None, None]
    assert consensus_dice([a, b, None]) == [None, None, None]
    with pytest.raises(ValueError, match="different shapes"):
        consensus_dice([a, b, np.zeros((4, 5, 5), dtype=np.uint8)])


# ------------------------------------------------------------------ in dqe batch
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_dataset(tmp_path_factory.getbasetemp() / "batch-dataset")


def _options(**kw):
    from dqe.service.batch import BatchOptions

    return BatchOptions(**{"progress": False, "gate": False, "images": False, **kw})


def _engine_config():
    from dqe.service.engine import EngineConfig

    return EngineConfig(intra_op_threads=2)


def _labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).astype(np.uint8)


@pytest.fixture(scope="module")
def consensus_run(dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The three teams with the gate on (fake gate that records what it is given)."""
    from dqe.models.qc.types import GateResult, Verdict
    from dqe.service.batch import run_batch, scoring

    seen: dict[tuple[str, str], dict | None] = {}

    def evaluate_case(case, result, config=None, *, consensus=None):
        seen[(case.case_id, round(result.mean_stars, 6))] = None if consensus is None else dict(consensus)
        return GateResult(Verdict.PASS, 0.9, [], [], 3.0, alpha=config.alpha)

    mp = pytest.MonkeyPatch()
    mp.setattr(scoring, "evaluate_case", evaluate_case)
    out = tmp_path_factory.mktemp("consensus") / "out"
    try:
        outcome = run_batch(
            dataset["cases"],
            [dataset[t] for t in TEAMS],
            out,
            engine_config=_engine_config(),
            options=_options(gate=True, alpha=0.1),
        )
    finally:
        mp.undo()
    return out, outcome, seen


def test_consensus_columns_match_the_rule(consensus_run, dataset: dict[str, Path]) -> None:
    import pandas as pd

    out, outcome, _ = consensus_run
    assert outcome.scored_now == 9
    df = pd.read_parquet(out / "scores.parquet")
    csv = pd.read_csv(out / "scores.csv")
    for r in ("wt", "tc", "et"):
        assert f"consensus_dice_{r}" in df.columns and f"consensus_dice_{r}" in csv.columns
    lut = {"wt": [1, 2, 3, 4], "tc": [1, 3, 4], "et": [3, 4]}
    case = CASES[0]  # all three teams usable
    segs = {t: _labels(dataset[t] / f"{case}.nii.gz") for t in TEAMS}
    for team in TEAMS:
        others = [segs[t] for t in TEAMS if t != team]
        row = df[(df["case"] == case) & (df["team"] == team)].iloc[0]
        for region, labels in lut.items():
            mine = np.isin(segs[team], labels)
            majority = np.isin(others[0], labels) & np.isin(others[1], labels)  # 2 others: both
            assert row[f"consensus_dice_{region}"] == pytest.approx(_dice(mine, majority), abs=1e-9)
    # gamma relabelled ET as necrosis: no ET at all, while the other two agree on one -> 0
    gamma = df[(df["case"] == case) & (df["team"] == "gamma")].iloc[0]
    assert gamma["consensus_dice_et"] == 0.0
    # the shifted team agrees least on the whole tumour
    rows = df[df["case"] == case].set_index("team")
    assert rows.loc["beta", "consensus_dice_wt"] < rows.loc["alpha", "consensus_dice_wt"]
    # CASE-001: gamma's file is broken -> only two usable -> no consensus for anyone
    broken_case = df[df["case"] == BROKEN[0]]
    assert broken_case["consensus_dice_wt"].isna().all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teams"]["alpha"]["consensus_dice_mean"]["wt"] == pytest.approx(
        float(df.loc[df["team"] == "alpha", "consensus_dice_wt"].mean())
    )


def test_consensus_and_alpha_are_gate_inputs(consensus_run) -> None:
    import pandas as pd

    out, _, seen = consensus_run
    df = pd.read_parquet(out / "scores.parquet")
    assert len(seen) == 8  # every scored segmentation
    for _, row in df[df["error"] == ""].iterrows():
        got = seen[(row["case"], round(row["mean_stars"], 6))]
        if np.isnan(row["consensus_dice_wt"]):
            assert got is None
        else:
            assert got == pytest.approx({r: row[f"consensus_dice_{r}"] for r in ("wt", "tc", "et")})
        assert row["gate_alpha"] == 0.1
        # the batch attached per-region results with evidence slices for the real case
        assert row["verdict_wt"] == "pass" and row["p_value_wt"] == 1.0


def test_resume_rescores_whole_case_and_keeps_consensus(
    consensus_run, dataset: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from dqe.models.qc.types import GateResult, Verdict
    from dqe.service.batch import run_batch, scoring

    monkeypatch.setattr(
        scoring,
        "evaluate_case",
        lambda case, result, config=None, *, consensus=None: GateResult(Verdict.PASS, 0.9, [], [], 3.0),
    )
    out = tmp_path / "out"
    shutil.copytree(consensus_run[0], out)
    lines = (out / "journal.jsonl").read_text().splitlines()
    # a crash lost the last case's records: the journal only has the first two cases
    (out / "journal.jsonl").write_text(
        "\n".join(ln for ln in lines if json.loads(ln)["case"] != CASES[2]) + "\n"
    )

    def run():
        teams = [dataset[t] for t in TEAMS]
        opts = _options(gate=True, alpha=0.1)
        return run_batch(dataset["cases"], teams, out, engine_config=_engine_config(), options=opts)

    # ... and one team of the first case changed its file (new mtime, same content)
    seg = dataset["beta"] / f"{CASES[0]}.nii.gz"
    st = seg.stat()
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        resumed = run()
        again = run()
    finally:
        os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns))
    # CASE-000 in full (beta changed), CASE-001 skipped, CASE-002 in full (lost)
    assert (resumed.skipped, resumed.scored_now) == (3, 6)
    assert (again.skipped, again.scored_now) == (9, 0)
    df = pd.read_parquet(out / "scores.parquet")
    ref = pd.read_parquet(consensus_run[0] / "scores.parquet")
    for r in ("wt", "tc", "et"):
        np.testing.assert_array_equal(
            df[f"consensus_dice_{r}"].to_numpy(float), ref[f"consensus_dice_{r}"].to_numpy(float)
        )


def test_partial_case_in_journal_is_rescored_in_full(
    consensus_run, dataset: dict[str, Path], tmp_path: Path
) -> None:
    from dqe.service.batch.dataset import discover_dataset
    from dqe.service.batch.journal import Journal
    from dqe.service.batch.runner import _pending

    out = tmp_path / "out"
    shutil.copytree(consensus_run[0], out)
    lines = (out / "journal.jsonl").read_text().splitlines()
    drop = (CASES[2], "gamma")
    (out / "journal.jsonl").write_text(
        "\n".join(ln for ln in lines if (json.loads(ln)["case"], json.loads(ln)["team"]) != drop) + "\n"
    )
    journal = Journal(out / "journal.jsonl")
    ds = discover_dataset(dataset["cases"], [dataset[t] for t in TEAMS])
    keyed = {c.case_id: c for c in ds.cases}
    # give every job the key the journal has for it, so only the dropped record is pending
    for c in keyed.values():
        jobs = [
            type(j)(
                j.case_id,
                j.team,
                j.segmentation,
                j.error,
                journal.records.get((j.case_id, j.team), {}).get("input_key", "x"),
            )
            for j in c.jobs
        ]
        keyed[c.case_id] = c.with_jobs(jobs)
    ds.cases = list(keyed.values())
    specs, skipped = _pending(ds, journal, whole_cases=True)
    assert [s.case_id for s in specs] == [CASES[2]] and len(specs[0].jobs) == 3 and skipped == 6
    specs, skipped = _pending(ds, journal, whole_cases=False)
    assert [j.team for j in specs[0].jobs] == ["gamma"] and skipped == 8


def test_real_gate_evidence_maps_and_report(dataset: dict[str, Path], tmp_path: Path) -> None:
    """The real gate in batch: per-region columns, evidence panels in report.html, NIfTI maps per team."""
    import nibabel as nib
    import pandas as pd

    from dqe.service.batch import run_batch

    out, ev = tmp_path / "out", tmp_path / "evidence"
    outcome = run_batch(
        dataset["cases"],
        [dataset[t] for t in TEAMS],
        out,
        engine_config=_engine_config(),
        options=_options(gate=True, images=True, evidence_dir=str(ev)),
    )
    assert outcome.failed == 1
    df = pd.read_csv(out / "scores.csv", keep_default_na=False)
    ok = df[df["error"] == ""]
    assert set(ok["verdict_wt"]) <= {"pass", "review", "fail"} and len(ok) == 8
    # the shifted team always has whole-tumour evidence; a correct whole tumour may have none worth showing
    assert ok.loc[ok["team"] == "beta", "evidence_wt"].str.contains("axial|coronal|sagittal").all()
    maps = sorted(p.name for p in ev.iterdir())
    assert len(maps) == 8 and f"{CASES[0]}__beta_evidence.nii.gz" in maps
    seg = nib.load(str(dataset["beta"] / f"{CASES[0]}.nii.gz"))
    img = nib.load(str(ev / f"{CASES[0]}__beta_evidence.nii.gz"))
    assert img.shape == seg.shape and np.allclose(img.affine, seg.affine)
    # the shifted team's map holds more disagreement than the correct team's
    good = np.asarray(nib.load(str(ev / f"{CASES[0]}__alpha_evidence.nii.gz")).dataobj).sum()
    assert np.asarray(img.dataobj).sum() > 5 * good
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    rec = next(r for r in journal if (r["case"], r["team"]) == (CASES[0], "beta"))
    assert rec["evidence_slices"]["wt"][0]["axis"] in ("axial", "coronal", "sagittal")
    assert rec["evidence_png"] and (out / "png" / rec["evidence_png"]).is_file()
    html = (out / "report.html").read_text()
    assert "evidence slices" in html and "consensus Dice" in html and "strongest evidence at" in html


def test_batch_cli_refuses_a_bad_alpha_before_scoring(dataset: dict[str, Path], tmp_path: Path) -> None:
    import contextlib
    import io

    from dqe.service.cli import main

    buf = io.StringIO()
    argv = [
        "batch",
        str(dataset["cases"]),
        str(dataset["alpha"]),
        "--out",
        str(tmp_path / "o"),
        "--alpha",
        "1.5",
    ]
    with contextlib.redirect_stdout(buf):
        code = main([*argv, "--no-progress"])
    out = json.loads(buf.getvalue())
    assert code == 2 and out["error"]["field"] == "alpha" and not (tmp_path / "o" / "journal.jsonl").exists()
