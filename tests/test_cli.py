"""The ``dqe`` command line: instant help, JSON output, typed errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from dqe.service.cli import main

HEAVY = ("torch", "onnxruntime", "grpc", "monai", "pandas", "ray", "matplotlib", "openvino")


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from dqe.service.cli import build_parser; build_parser().format_help(); "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_score_prints_json(phantom_dir: Path, engine, capsys) -> None:
    assert main(["score", str(phantom_dir), "--threads", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["views"]) == {"axial", "coronal", "sagittal"}
    assert np.isclose(out["mean_stars"], np.mean(list(out["views"].values())))
    assert out["model_id"] == engine.model_id
    assert out["model_sha256"] == engine.model_sha256
    assert len(out["center_of_mass"]) == 3
    assert out["engine"]["providers"][-1] == "CPUExecutionProvider"
    assert out["timings_ms"]["total"] > 0


def test_score_explicit_files_equal_folder(phantom_dir: Path, capsys) -> None:
    files = {p.name.split("-")[-1].split(".")[0]: p for p in phantom_dir.iterdir()}
    args = [
        "score",
        "--t1c",
        files["t1c"],
        "--t1",
        files["t1n"],
        "--t2",
        files["t2w"],
        "--flair",
        files["t2f"],
    ]
    args += ["--seg", files["seg"], "--threads", "2"]
    assert main([str(a) for a in args]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert main(["score", str(phantom_dir), "--threads", "2"]) == 0
    folder = json.loads(capsys.readouterr().out)
    assert explicit["views"] == folder["views"]


def test_score_invalid_input_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["score", str(tmp_path / "nope")]) == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["code"] == "NOT_FOUND"
    assert "does not exist" in err["message"]
