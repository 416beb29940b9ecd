"""The training pipeline end to end on a tiny synthetic ratings table (CPU, a couple of minutes).

One smoke run (2 epochs) and a 1 + 1 epoch run resumed from its checkpoint must agree exactly; the
finished run is exported to ONNX (parity-checked) under a temporary model home and scored by the engine.
The exported run uses a single whole-tumour label channel and min-max normalisation, so the export and the
engine are exercised with a contract other than the default (5 input channels instead of 7).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dqe.models.errors import InvalidInput, NotFound  # noqa: E402
from dqe.training.config import TrainConfig, build_contract, load_config, replace  # noqa: E402
from dqe.training.data import make_samples, split_exams, validate_ratings  # noqa: E402
from dqe.training.evaluate import regression_metrics, summarize  # noqa: E402
from dqe.training.trainer import METRICS_COLUMNS, RunError, train  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "training" / "configs" / "smoke.yaml"
# A contract other than the default: 5 channels (one binary whole-tumour channel), min-max scaling.
VARIANT = ["contract.labels=wt", "contract.normalization=minmax"]
MODEL_ID = "smoke-wt-minmax-test"


@pytest.fixture(scope="module")
def smoke_cfg() -> TrainConfig:
    return load_config(SMOKE, VARIANT)


@pytest.fixture(scope="module")
def runs(smoke_cfg: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``straight``: 2 epochs in one go; ``resumed``: 1 epoch, stopped, then resumed to 2."""
    root = tmp_path_factory.mktemp("runs")
    straight = root / "straight"
    train(smoke_cfg, straight, progress=False)
    resumed = root / "resumed"
    partial = train(smoke_cfg, resumed, progress=False, stop_after=1)
    assert partial["epochs_completed"] == 1 and "weights" not in partial
    assert not (resumed / "model.pth").exists()
    train(None, resumed, resume=True, progress=False)
    return {"straight": straight, "resumed": resumed}


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_loss_decreases(runs: dict[str, Path]) -> None:
    rows = _metrics(runs["straight"])
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert math.isfinite(float(r["val_mae"])) and math.isfinite(float(r["val_rmse"]))


@pytest.mark.slow
def test_resume_repeats_the_uninterrupted_run(runs: dict[str, Path]) -> None:
    a = torch.load(runs["straight"] / "model.pth", weights_only=True)
    b = torch.load(runs["resumed"] / "model.pth", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    ra, rb = _metrics(runs["straight"]), _metrics(runs["resumed"])
    for x, y in zip(ra, rb, strict=True):
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-5)
    record = json.loads((runs["resumed"] / "run.json").read_text())
    assert record["resumed_at"][0]["epoch"] == 1


@pytest.mark.slow
def test_run_records(runs: dict[str, Path], smoke_cfg: TrainConfig) -> None:
    run = runs["straight"]
    with (run / "metrics.csv").open() as fh:
        assert next(csv.reader(fh)) == list(METRICS_COLUMNS)
    record = json.loads((run / "run.json").read_text())
    for key in (
        "seed",
        "data_hash",
        "code_version",
        "config_digest",
        "versions",
        "train_exams",
        "val_exams",
        "contract",
    ):
        assert key in record, key
    assert record["seed"] == smoke_cfg.seed
    assert record["config_digest"] == smoke_cfg.digest()
    assert len(record["data_hash"]) == 64
    assert not set(record["train_exams"]) & set(record["val_exams"]), "an exam is on both sides of the split"
    assert record["contract"]["label_channels"] == ["WT"] and record["contract"]["normalization"] == "minmax"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert any((run / "tensorboard").iterdir())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"axial", "coronal", "sagittal", "views", "mean"}
    for png in ("scatter.png", "bland_altman.png", "scatter_mean.png"):
        assert (run / "eval" / png).stat().st_size > 1000


@pytest.mark.slow
def test_existing_run_needs_resume_and_same_config(runs: dict[str, Path], smoke_cfg: TrainConfig) -> None:
    with pytest.raises(RunError, match="already holds a run"):
        train(smoke_cfg, runs["straight"], progress=False)
    changed = replace(smoke_cfg, ["optim.lr=0.01"])
    with pytest.raises(RunError, match="optim.lr"):
        train(changed, runs["straight"], resume=True, progress=False)


@pytest.fixture(scope="module")
def published(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The finished run exported once (about 40 s) into a temporary model home."""
    from dqe.training.publish import publish_run

    home = tmp_path_factory.mktemp("dqe-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DQE_HOME", str(home))
        # parity_inputs draws its phantoms on the contract's grid (64 x 64 x 48 here)
        art = publish_run(runs["straight"], MODEL_ID)
        yield art, home


@pytest.mark.slow
def test_published_model_passes_parity_and_records_training(published, runs: dict[str, Path]) -> None:
    art, home = published
    assert art.directory == home / "models" / MODEL_ID
    assert art.card["parity"]["max_abs_diff_stars"] <= art.card["parity"]["tolerance_stars"]
    assert art.card["in_channels"] == 5
    assert art.contract.n_channels == 5 and art.contract.normalization == "minmax"
    record = json.loads((runs["straight"] / "run.json").read_text())
    assert art.card["training"]["data_hash"] == record["data_hash"]
    assert art.card["training"]["seed"] == record["seed"]
    from dqe.models.registry import sha256_file

    assert art.card["weights_sha256"] == sha256_file(runs["straight"] / "model.pth")


@pytest.mark.slow
def test_engine_serves_published_model(
    published, runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dqe.models.case import Case
    from dqe.models.network import load_network
    from dqe.service.engine import Engine, EngineConfig

    art, home = published
    monkeypatch.setenv("DQE_HOME", str(home))
    engine = Engine(EngineConfig(model_id=MODEL_ID, intra_op_threads=2))
    assert engine.contract == art.contract
    exam = sorted(p for p in (runs["straight"] / "data").iterdir() if p.is_dir())[0]
    case = Case.from_folder(exam, segmentation=exam / f"{exam.name}-seg.nii.gz", contract=engine.contract)
    result = engine.score_case(case)
    assert result.model_id == MODEL_ID and set(result.views) == {"axial", "coronal", "sagittal"}
    views, _ = engine.preprocess(case)
    net = load_network(runs["straight"] / "model.pth", "densenet121", 5)
    with torch.no_grad():
        expected = net(torch.from_numpy(np.stack(views))).numpy().ravel()
    got = np.array([result.views[v] for v in ("axial", "coronal", "sagittal")])
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_cli_evaluate_published_model(
    published, runs: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    from dqe.service.cli import main

    _, home = published
    monkeypatch.setenv("DQE_HOME", str(home))
    rc = main(
        [
            "evaluate",
            "--model",
            MODEL_ID,
            "--ratings",
            str(runs["straight"] / "data" / "ratings.csv"),
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["views"]["n"] > 0
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "bland_altman.png").is_file()


@pytest.mark.slow
def test_cli_train_smoke_config_and_evaluate_run(tmp_path: Path, capsys) -> None:
    """The shipped smoke config through ``dqe train`` (1 epoch, 7 channels), then ``dqe evaluate --run``."""
    from dqe.service.cli import main

    run = tmp_path / "run"
    rc = main(
        ["train", "--config", str(SMOKE), "--out", str(run), "--set", "train.epochs=1", "--no-progress"]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["epochs_completed"] == 1 and len(_metrics(run)) == 1
    assert json.loads((run / "run.json").read_text())["contract"]["label_channels"] == ["TC", "WT", "ET"]
    rc = main(["evaluate", "--run", str(run), "--out", str(tmp_path / "eval"), "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert out["metrics"]["views"]["mae"] == pytest.approx(saved["views"]["mae"], abs=1e-4)
    rc = main(["train", "--out", str(tmp_path / "nothing"), "--resume"])
    assert rc == 2 and "nothing to resume" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- cheap units
def test_optimizers_step() -> None:
    from dqe.training.config import OptimConfig
    from dqe.training.model import build_optimizer

    for name in ("ranger21", "adamw", "sgd"):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 1)
        before = net.weight.detach().clone()
        opt = build_optimizer(OptimConfig(name=name, lr=1e-2), list(net.parameters()), total_steps=10)
        for _ in range(3):
            loss = (net(torch.randn(8, 4)) - 3.0).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert not torch.equal(before, net.weight), name
    with pytest.raises(ValueError):
        build_optimizer(OptimConfig(name="adam"), list(net.parameters()), 1)


def test_frozen_prefix_matches_full_network() -> None:
    from dqe.models.network import build_network
    from dqe.training.model import SplitNetwork

    torch.manual_seed(0)
    net = build_network("densenet121", 7).eval()
    split = SplitNetwork(net, "denseblock4", bn_eval=True)
    x = torch.randn(2, 7, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split(x), net(x).reshape(-1), rtol=1e-5, atol=1e-5)
    split.train()
    assert not split.prefix.training and not any(p.requires_grad for p in split.prefix.parameters())
    assert all(p.requires_grad for p in net.class_layers.parameters())
    with pytest.raises(ValueError, match="freeze_until"):
        SplitNetwork(net, "denseblock9")


def _table(tmp_path: Path, n_exams: int = 5) -> pd.DataFrame:  # noqa: F821
    import pandas as pd

    files = {}
    for name in ("t1c", "t1", "t2", "flair", "segmentation"):
        files[name] = tmp_path / f"{name}.nii.gz"
        files[name].write_bytes(b"x")
    rows = []
    for e in range(n_exams):
        for rater in ("a", "b"):
            for view in ("axial", "all"):
                rows.append(
                    {
                        "exam_id": f"E{e}",
                        **{k: str(v) for k, v in files.items()},
                        "view": view,
                        "rater": rater,
                        "stars": 1 + (e + len(rater)) % 6,
                    }
                )
    return pd.DataFrame(rows)


def test_ratings_validation(tmp_path: Path) -> None:
    df = _table(tmp_path)
    ok = validate_ratings(df)
    assert "seg_key" in ok.columns and ok["seg_key"].nunique() == 1
    with pytest.raises(InvalidInput, match="lacks columns"):
        validate_ratings(df.drop(columns=["rater"]))
    with pytest.raises(InvalidInput, match="star values"):
        validate_ratings(df.assign(stars=7))
    with pytest.raises(InvalidInput, match="views"):
        validate_ratings(df.assign(view="oblique"))
    with pytest.raises(NotFound):
        validate_ratings(df.assign(segmentation=str(tmp_path / "missing.nii.gz")))


def test_targets_per_rater_or_mean(tmp_path: Path) -> None:
    df = validate_ratings(_table(tmp_path, n_exams=1))
    views = ("axial", "coronal", "sagittal")
    per_rater = make_samples(df, views, "rater")
    # 2 raters x (1 axial rating + 1 "all" rating expanded to 3 views)
    assert len(per_rater) == 8
    mean = make_samples(df, views, "mean")
    assert len(mean) == 3
    axial = mean[mean["view"] == "axial"].iloc[0]
    assert axial["n_ratings"] == 4
    assert axial["target"] == pytest.approx(df["stars"].mean())


def test_split_by_exam_is_seeded() -> None:
    exams = [f"E{i}" for i in range(10)] * 3
    train1, val1 = split_exams(exams, 0.2, seed=1)
    train2, val2 = split_exams(exams, 0.2, seed=1)
    assert (train1, val1) == (train2, val2)
    assert len(val1) == 2 and len(train1) == 8 and not set(train1) & set(val1)
    assert split_exams(exams, 0.2, seed=2)[1] != val1 or split_exams(exams, 0.2, seed=3)[1] != val1
    assert split_exams(exams, 0.2, seed=1, val_exams=["E3"])[1] == ["E3"]
    with pytest.raises(InvalidInput):
        split_exams(exams, 0.2, seed=1, val_exams=["nope"])


def test_contract_variants() -> None:
    from dqe.training.config import ContractConfig

    assert build_contract(ContractConfig()).n_channels == 7
    wt = build_contract(ContractConfig(labels="wt", normalization="minmax"))
    assert wt.n_channels == 5 and wt.label_map == {"WT": (1, 2, 3, 4)} and wt.normalization == "minmax"
    assert wt.version != build_contract(ContractConfig()).version
    small = build_contract(ContractConfig(overrides={"spatial_size": [64, 64]}))
    assert small.spatial_size == (64, 64)
    from dqe.models.contract import PreprocessingContract

    if "label_encoding" not in PreprocessingContract.__dataclass_fields__:
        with pytest.raises(ValueError, match="label_encoding"):
            build_contract(ContractConfig(labels="tissue"))
    with pytest.raises(ValueError, match="invalid"):
        build_contract(ContractConfig(overrides={"no_such_field": 1}))


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 3}\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(bad)
    with pytest.raises(ValueError, match="optim.name"):
        load_config(SMOKE, ["optim.name=adam"])
    with pytest.raises(ValueError, match="eval_every"):
        load_config(SMOKE, ["train.eval_every=0"])


def test_failed_start_leaves_no_run(tmp_path: Path, capsys) -> None:
    from dqe.service.cli import main

    paper = SMOKE.with_name("paper.yaml")
    rc = main(["train", "--config", str(paper), "--out", str(tmp_path / "run")])
    assert rc == 2 and "data.ratings is not set" in capsys.readouterr().out
    assert not (tmp_path / "run" / "config.yaml").exists()
    if not torch.cuda.is_available():
        rc = main(["train", "--config", str(paper), "--out", str(tmp_path / "run"), "--device", "cuda"])
        assert rc == 2 and "CUDA" in capsys.readouterr().out


def test_metrics_and_three_view_mean() -> None:
    import pandas as pd

    m = regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])
    assert m["mae"] == pytest.approx(1.0) and m["rmse"] == pytest.approx(math.sqrt(5 / 3)) and m["n"] == 3
    assert m["bias"] == pytest.approx(-1.0)
    assert m["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [2, 2, 5])[0, 1])
    preds = pd.DataFrame(
        {
            "seg_key": ["s1"] * 3 + ["s2"] * 3,
            "exam_id": ["e"] * 6,
            "view": ["axial", "coronal", "sagittal"] * 2,
            "pred": [4, 5, 6, 1, 2, 3],
        }
    )
    # s1 rated on axial only (two ratings, mean 5); s2 rated on all views
    rated = pd.DataFrame(
        {
            "seg_key": ["s1", "s2", "s2", "s2"],
            "exam_id": ["e"] * 4,
            "view": ["axial", "axial", "coronal", "sagittal"],
            "target": [5.0, 2.0, 2.0, 2.0],
            "n_ratings": [2, 1, 1, 1],
        }
    )
    out = summarize(preds, rated, ("axial", "coronal", "sagittal"))
    assert out["axial"]["n"] == 2 and out["axial"]["mae"] == pytest.approx(1.0)
    assert out["views"]["n"] == 4
    assert out["mean"]["n"] == 2 and out["mean"]["mae"] == pytest.approx(0.0)
