"""``dqe seg-train`` on seeded phantoms: records, metrics, exact resume, loss from the registry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from dqe.training.segmentation.config import load_seg_config  # noqa: E402
from dqe.training.segmentation.trainer import metric_columns, resume_config, seg_train  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "training" / "configs" / "seg_smoke.yaml"
TINY = [
    "data.synthetic=4",
    "data.synthetic_shape=[48, 48, 40]",
    "data.grid=[24, 24, 16]",
    "data.val_fraction=0.25",
    "train.batch_size=1",
]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("seg")
    full, part = base / "full", base / "part"
    seg_train(load_seg_config(SMOKE, [*TINY, "train.epochs=2"]), full)
    seg_train(load_seg_config(SMOKE, [*TINY, "train.epochs=2"]), part, stop_after=1)
    assert len(_rows(part)) == 1 and not (part / "model.pth").exists()
    seg_train(resume_config(part, []), part, resume=True)
    return {"full": full, "part": part}


def test_run_records_metrics_checkpoint_and_provenance(runs):
    run = runs["full"]
    rows = _rows(run)
    assert tuple(rows[0]) == metric_columns(("WT", "TC", "ET"))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= float(r["val_dice_wt"]) <= 1.0
    record = json.loads((run / "run.json").read_text())
    assert record["task"] == "segmentation" and record["finished_at"]
    assert len(record["val_cases"]) == 1 and len(record["train_cases"]) == 3
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "model.pth").is_file()
    assert "code_version" in record


def test_resume_continues_exactly(runs):
    full, part = _rows(runs["full"]), _rows(runs["part"])
    assert len(part) == 2
    for a, b in zip(full, part, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
        assert float(a["val_dice_mean"]) == pytest.approx(float(b["val_dice_mean"]), abs=1e-5)
    assert json.loads((runs["part"] / "run.json").read_text())["resumed_at"][0]["epoch"] == 1


def test_unknown_loss_lists_the_registry():
    with pytest.raises(
        ValueError, match=r"loss is 'focal'; expected one of \[.*'channel_wise_weighted'.*'rrw'"
    ):
        load_seg_config(SMOKE, ["loss=focal"])
    cfg = load_seg_config(SMOKE, ["loss={name: gdice_bce, dqe_weight: 0.1}"])
    assert cfg.loss == {"name": "gdice_bce", "dqe_weight": 0.1}


def test_cli_reports_bad_config_as_json(tmp_path, capsys):
    from dqe.service.cli import main

    rc = main(
        [
            "seg-train",
            "--config",
            str(SMOKE),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "model.architecture=vnet",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc != 0 and "model.architecture" in out["error"]["message"]
