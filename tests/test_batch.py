"""``dqe batch`` on a generated dataset: same stars as single-case scoring, typed errors, crash safety."""

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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_dataset(tmp_path_factory.getbasetemp() / "batch-dataset")


def _subs(dataset: dict[str, Path]) -> list[Path]:
    return [dataset[t] for t in TEAMS]


def _options(**kw):
    from dqe.service.batch import BatchOptions

    return BatchOptions(**{"progress": False, "gate": False, "images": False, **kw})


def _engine_config():
    from dqe.service.engine import EngineConfig

    return EngineConfig(intra_op_threads=2)


def _journal_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cli_run(dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One full run through the command line (no images, gate off), shared by several tests."""
    from dqe.service.cli import main

    out = tmp_path_factory.mktemp("batch-cli") / "out"
    argv = ["batch", str(dataset["cases"]), *map(str, _subs(dataset)), "--out", str(out)]
    argv += ["--no-gate", "--no-images", "--no-progress", "--threads", "2", "--workers", "2"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    assert code == 0, buf.getvalue()
    return out, json.loads(buf.getvalue())


def test_cli_writes_every_output_with_one_row_per_case_and_team(cli_run: tuple[Path, dict]) -> None:
    import pandas as pd

    out, printed = cli_run
    assert printed["segmentations"] == 9 and printed["scored_now"] == 9 and printed["failed"] == 1
    for name in ("scores.csv", "scores.parquet", "summary.json", "report.html", "journal.jsonl"):
        assert (out / name).is_file(), name
    csv = pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])
    pq = pd.read_parquet(out / "scores.parquet")
    assert len(csv) == len(pq) == 9
    assert sorted(zip(csv["case"], csv["team"], strict=True)) == sorted((c, t) for c in CASES for t in TEAMS)
    for col in (
        "case",
        "team",
        "mean_stars",
        "axial",
        "coronal",
        "sagittal",
        "verdict",
        "gate_score",
        "error",
    ):
        assert col in csv.columns and col in pq.columns
    np.testing.assert_array_equal(csv["mean_stars"].to_numpy(float), pq["mean_stars"].to_numpy(float))
    assert not any(c.startswith("dice_") for c in csv.columns), "no metrics without --labels"


def test_stars_identical_to_single_case_scoring(
    cli_run: tuple[Path, dict], dataset: dict[str, Path], engine
) -> None:
    import pandas as pd

    from dqe.models.case import Case, discover_files

    out, _ = cli_run
    df = pd.read_parquet(out / "scores.parquet")
    checked = 0
    for _, row in df.iterrows():
        if (row["case"], row["team"]) == BROKEN:
            continue
        files = discover_files(dataset["cases"] / row["case"], require_segmentation=False)
        case = Case.from_files(
            **files, segmentation=dataset[row["team"]] / f"{row['case']}.nii.gz", case_id=row["case"]
        )
        single = engine.score_case(case)
        assert row["mean_stars"] == single.mean_stars, (row["case"], row["team"])
        for view in ("axial", "coronal", "sagittal"):
            assert row[view] == single.views[view]
        assert [row["com_x"], row["com_y"], row["com_z"]] == list(single.center_of_mass)
        checked += 1
    assert checked == 8


def test_broken_file_is_reported_with_its_typed_error_and_skipped(cli_run: tuple[Path, dict]) -> None:
    import pandas as pd

    out, _ = cli_run
    df = pd.read_parquet(out / "scores.parquet")
    bad = df[(df["case"] == BROKEN[0]) & (df["team"] == BROKEN[1])].iloc[0]
    assert bad["error"].startswith("UnreadableFile: ") and "gzip" in bad["error"]
    assert bad["error_code"] == "INVALID_ARGUMENT"
    assert np.isnan(bad["mean_stars"]) and np.isnan(bad["axial"])
    ok = df[df["error"] == ""]
    assert len(ok) == 8 and np.isfinite(ok["mean_stars"]).all()
    assert ((ok["mean_stars"] >= 1) & (ok["mean_stars"] <= 6.5)).all()
    summary = json.loads((out / "summary.json").read_text())
    gamma = summary["teams"]["gamma"]
    assert gamma == {**gamma, "n": 3, "scored": 2, "failures": 1, "failed": [BROKEN[0]]}
    assert summary["teams"]["alpha"]["failures"] == 0
    assert summary["teams"]["alpha"]["median_stars"] == pytest.approx(
        float(np.median(df.loc[df["team"] == "alpha", "mean_stars"]))
    )
    assert summary["n_failed"] == 1 and summary["n_segmentations"] == 9


def test_rerun_skips_done_and_rescored_changed_file(
    cli_run: tuple[Path, dict], dataset: dict[str, Path], tmp_path: Path
) -> None:
    from dqe.service.batch import run_batch

    out = tmp_path / "out"
    shutil.copytree(cli_run[0], out)
    again = run_batch(
        dataset["cases"], _subs(dataset), out, engine_config=_engine_config(), options=_options()
    )
    assert (again.total, again.skipped, again.scored_now) == (9, 9, 0)
    # The journal's torn-free content did not grow: nothing duplicated.
    assert len(_journal_lines(out)) == 9
    # A changed submission (new mtime) is scored again, and only it.
    seg = dataset["beta"] / f"{CASES[2]}.nii.gz"
    st = seg.stat()
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        third = run_batch(
            dataset["cases"], _subs(dataset), out, engine_config=_engine_config(), options=_options()
        )
    finally:
        os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns))
    # Every team of that case is scored again: each one's consensus Dice depends on beta's segmentation.
    assert (third.skipped, third.scored_now) == (6, 3)
    lines = _journal_lines(out)
    assert len(lines) == 12 and {(r["case"], r["team"]) for r in lines[-3:]} == {(CASES[2], t) for t in TEAMS}
    import pandas as pd

    assert len(pd.read_csv(out / "scores.csv")) == 9


def test_crash_mid_run_then_resume_loses_and_duplicates_nothing(
    cli_run: tuple[Path, dict], dataset: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import dqe.service.batch.pipeline as pipeline
    from dqe.service.batch import run_batch

    out = tmp_path / "out"
    real = pipeline.infer_case
    calls = {"n": 0}

    def crash_on_second_case(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill while scoring the second case")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "infer_case", crash_on_second_case)
    with pytest.raises(KeyboardInterrupt):
        run_batch(dataset["cases"], _subs(dataset), out, engine_config=_engine_config(), options=_options())
    first = _journal_lines(out)
    assert [(r["case"], r["team"]) for r in first] == [(CASES[0], t) for t in TEAMS]
    assert not (out / "scores.csv").exists()

    # Simulate the kill landing inside a write as well: a torn half record at the end of the journal.
    with (out / "journal.jsonl").open("ab") as fh:
        fh.write(b'{"case": "CASE-001", "team": "alpha", "mean_st')
    monkeypatch.setattr(pipeline, "infer_case", real)
    resumed = run_batch(
        dataset["cases"], _subs(dataset), out, engine_config=_engine_config(), options=_options()
    )
    assert (resumed.skipped, resumed.scored_now) == (3, 6)
    lines = _journal_lines(out)  # parses: the torn line was cut off
    keys = [(r["case"], r["team"]) for r in lines]
    assert len(keys) == len(set(keys)) == 9
    df = pd.read_parquet(out / "scores.parquet")
    ref = pd.read_parquet(cli_run[0] / "scores.parquet")
    assert len(df) == 9
    np.testing.assert_array_equal(df["mean_stars"].to_numpy(float), ref["mean_stars"].to_numpy(float))
    assert list(df["error"]) == list(ref["error"])


def test_unexpected_error_is_recorded_then_retried(
    dataset: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dqe.service.batch.prepare as prepare
    from dqe.service.batch import run_batch

    sub = tmp_path / "delta"
    sub.mkdir()
    for case in CASES:
        os.symlink(dataset["alpha"] / f"{case}.nii.gz", sub / f"{case}.nii.gz")
    out = tmp_path / "out"
    real = prepare.Case.from_files

    def flaky(*args, **kwargs):
        if kwargs.get("case_id") == CASES[1]:
            raise MemoryError("simulated out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare.Case, "from_files", flaky)
    first = run_batch(dataset["cases"], [sub], out, engine_config=_engine_config(), options=_options())
    assert first.failed == 1
    rec = [r for r in _journal_lines(out) if r["case"] == CASES[1]][0]
    assert rec["error"] == "MemoryError: simulated out of memory" and rec["error_code"] == "INTERNAL"
    monkeypatch.setattr(prepare.Case, "from_files", real)
    second = run_batch(dataset["cases"], [sub], out, engine_config=_engine_config(), options=_options())
    assert (second.skipped, second.scored_now, second.failed) == (2, 1, 0)


def test_gate_verdicts_flow_into_records_and_summary(
    dataset: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a QC gate module present, verdicts, scores and reasons land in the table and summary."""
    import pandas as pd

    from dqe.models.qc.types import Check, GateResult, Verdict
    from dqe.service.batch import run_batch

    seen = []

    def evaluate_case(case, result, config=None, *, consensus=None):
        seen.append((case.case_id, result.mean_stars))
        verdict = Verdict.PASS if result.mean_stars >= 5.6 else Verdict.REVIEW
        reasons = [] if verdict is Verdict.PASS else [f"stars {result.mean_stars:.2f} below 5.6"]
        check = Check("stars", result.mean_stars, 5.6, verdict is Verdict.PASS, "review", "stars", "stars")
        return GateResult(verdict, result.mean_stars / 6, reasons, [check], 5.6)

    from dqe.service.batch import scoring

    # the gate is part of the core and imported at module top: replace the function the batch scorer calls
    monkeypatch.setattr(scoring, "evaluate_case", evaluate_case)
    out = tmp_path / "out"
    sub = [dataset["alpha"], dataset["gamma"]]
    run_batch(dataset["cases"], sub, out, engine_config=_engine_config(), options=_options(gate=True))
    df = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert len(seen) == 5  # every scored segmentation, not the broken one
    ok = df[df["error"] == ""]
    assert set(ok["verdict"]) <= {"pass", "review"} and len(ok) == 5
    for _, r in ok.iterrows():
        assert float(r["gate_score"]) == pytest.approx(float(r["mean_stars"]) / 6)
        assert (r["verdict"] == "review") == bool(r["gate_reasons"])
    assert df.loc[df["error"] != "", "verdict"].tolist() == [""]
    summary = json.loads((out / "summary.json").read_text())
    counts = {v: sum(t["verdicts"][v] for t in summary["teams"].values()) for v in ("pass", "review", "fail")}
    assert counts["pass"] + counts["review"] == 5 and counts["fail"] == 0
    assert summary["gate"] is True


def test_missing_submission_is_a_not_found_row(dataset: dict[str, Path], tmp_path: Path) -> None:
    from dqe.service.batch.dataset import discover_dataset

    sub = tmp_path / "partial"
    sub.mkdir()
    os.symlink(dataset["alpha"] / f"{CASES[0]}.nii.gz", sub / f"{CASES[0]}.nii.gz")
    (sub / "NOT-A-CASE.nii.gz").write_bytes(b"x")
    ds = discover_dataset(dataset["cases"], [sub])
    errors = {j.case_id: j.error for j in ds.jobs}
    assert errors[CASES[0]] is None
    assert type(errors[CASES[1]]).__name__ == "NotFound" and "partial" in str(errors[CASES[1]])
    assert ds.unmatched == {"partial": ["NOT-A-CASE.nii.gz"]}


def test_dataset_errors_are_typed(dataset: dict[str, Path], tmp_path: Path) -> None:
    from dqe.models.errors import InvalidInput, NotFound
    from dqe.service.batch.dataset import discover_dataset

    with pytest.raises(NotFound):
        discover_dataset(tmp_path / "nope", [dataset["alpha"]])
    with pytest.raises(NotFound):
        discover_dataset(dataset["cases"], [tmp_path / "nope"])
    twin = tmp_path / "x" / "alpha"
    twin.mkdir(parents=True)
    with pytest.raises(InvalidInput, match="alpha"):
        discover_dataset(dataset["cases"], [dataset["alpha"], twin])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput):
        discover_dataset(tmp_path / "empty", [dataset["alpha"]])


def test_cli_invalid_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dqe.service.cli import main

    code = main(
        ["batch", str(tmp_path / "missing"), str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    assert code == 2
    assert json.loads(capsys.readouterr().out)["error"]["kind"] == "NotFound"


def test_identical_submissions_run_their_views_once(
    dataset: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import dqe.service.engine as engine_mod
    from dqe.service.batch import run_batch

    cases = tmp_path / "cases"
    cases.mkdir()
    os.symlink(dataset["cases"] / CASES[0], cases / CASES[0])
    twin = tmp_path / "twin"
    twin.mkdir()
    os.symlink(dataset["alpha"] / f"{CASES[0]}.nii.gz", twin / f"{CASES[0]}.nii.gz")
    batches: list[int] = []
    real = engine_mod.Engine.run_views

    def counting(self, views):
        batches.append(len(views))
        return real(self, views)

    monkeypatch.setattr(engine_mod.Engine, "run_views", counting)
    out = tmp_path / "out"
    run_batch(
        cases,
        [dataset["alpha"], twin, dataset["beta"]],
        out,
        engine_config=_engine_config(),
        options=_options(),
    )
    assert batches == [6]  # one engine call for the case: alpha and twin share 3 views, beta adds 3
    df = pd.read_parquet(out / "scores.parquet").set_index("team")
    assert df.loc["alpha", "mean_stars"] == df.loc["twin", "mean_stars"] != df.loc["beta", "mean_stars"]

    # Many teams: the case is run in bounded chunks, with the same numbers.
    import dqe.service.batch.scoring as scoring

    monkeypatch.setattr(scoring, "MAX_VIEWS_PER_RUN", 4)
    batches.clear()
    run_batch(
        cases,
        [dataset["alpha"], twin, dataset["beta"]],
        tmp_path / "o2",
        engine_config=_engine_config(),
        options=_options(),
    )
    assert batches == [4, 2]
    chunked = pd.read_parquet(tmp_path / "o2" / "scores.parquet").set_index("team")
    np.testing.assert_array_equal(chunked["mean_stars"].to_numpy(), df["mean_stars"].to_numpy())


def test_pipeline_prefetches_the_next_case_with_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 of case i+1 runs while case i is inferred; at most prefetch + 2 cases are prepared ahead."""
    import threading

    import dqe.service.batch.pipeline as pipeline

    n_cases, prefetch = 6, 1
    started: list[int] = []
    second_started = threading.Event()

    def fake_prepare(spec, engine, pool, options):
        started.append(spec)
        if spec == 1:
            second_started.set()
        return spec

    def fake_infer(engine, prepared):
        if prepared == 0:
            assert second_started.wait(10), "case 1 was not prepared while case 0 was being scored"
        assert len(started) <= prepared + prefetch + 2, (prepared, list(started))
        return prepared

    finished_in: set[str] = set()

    def fake_finish(engine, inferred, gate, pool, extra):
        finished_in.add(threading.current_thread().name)
        return [{"case": inferred}]

    monkeypatch.setattr(pipeline, "prepare_case", fake_prepare)
    monkeypatch.setattr(pipeline, "infer_case", fake_infer)
    monkeypatch.setattr(pipeline, "finish_case", fake_finish)
    out = list(pipeline.run_local(list(range(n_cases)), None, None, prefetch=prefetch))  # type: ignore[arg-type]
    assert out == [[{"case": i}] for i in range(n_cases)]
    assert threading.current_thread().name not in finished_in  # records are finished off the inference thread

    # Closing early stops the producer instead of preparing everything.
    started.clear()
    second_started.clear()
    gen = pipeline.run_local(list(range(100)), None, None, prefetch=prefetch)  # type: ignore[arg-type]
    next(gen)
    gen.close()
    assert len(started) <= 4

    def broken_prepare(spec, engine, pool, options):
        raise RuntimeError("bug in stage 1")

    monkeypatch.setattr(pipeline, "prepare_case", broken_prepare)
    with pytest.raises(RuntimeError, match="bug in stage 1"):
        list(pipeline.run_local([0], None, None))  # type: ignore[arg-type]


@pytest.mark.real_data
def test_real_toolkit_case_matches_single_case_scoring(tmp_path: Path, engine) -> None:
    """A real BraTS Toolkit case (5 algorithms + 2 fusions, `_bet` file names) through the batch pipeline."""
    import pandas as pd

    from dqe.models.case import Case, discover_files
    from dqe.service.batch import run_batch
    from tests.conftest import TOOLKIT

    case = "OtherEXampleFromTCIA"
    src = TOOLKIT / case / f"{case}_brainles"
    cases = tmp_path / "cases"
    cases.mkdir()
    os.symlink(src / "raw_bet", cases / case)
    segs = sorted((src / "segmentation").glob("*.nii.gz")) + sorted((src / "fusion").glob("*.nii.gz"))
    subs = []
    for seg in segs:
        sub = tmp_path / "subs" / seg.name.split(".")[0]
        sub.mkdir(parents=True)
        os.symlink(seg, sub / f"{case}.nii.gz")
        subs.append(sub)
    out = tmp_path / "out"
    outcome = run_batch(cases, subs, out, engine_config=_engine_config(), options=_options(images=True))
    assert (outcome.scored_now, outcome.failed) == (7, 0)
    df = pd.read_parquet(out / "scores.parquet").set_index("team")
    files = discover_files(src / "raw_bet", require_segmentation=False)
    for seg, sub in zip(segs, subs, strict=True):
        single = engine.score_case(Case.from_files(**files, segmentation=seg))
        assert df.loc[sub.name, "mean_stars"] == single.mean_stars, sub.name
    assert df.loc["mav", "mean_stars"] == df.loc["simple", "mean_stars"]  # identical fusions
