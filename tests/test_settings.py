"""One settings loader (flags > DQE_* > defaults, typed errors naming the variable), one model home, and the
first-use paths a new user takes: ``dqe serve`` without a model, ``dqe gate`` on a header with a NaN affine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dqe.models.artifacts import model_home
from dqe.models.errors import InvalidInput
from dqe.models.phantom import make_phantom, write_case
from dqe.service.cli import main
from dqe.service.settings import BatchSettings, ClientSettings, EngineSettings, ServerConfig

DQE = [sys.executable, "-m", "dqe.service.cli"]


def test_flags_win_over_environment_over_defaults() -> None:
    env = {"DQE_THREADS": "3", "DQE_PRECISION": "bf16", "DQE_MODEL": "m-env"}
    s = EngineSettings.from_sources({"intra_op_threads": 1, "precision": None}, env=env)
    assert (s.intra_op_threads, s.precision, s.model_id) == (1, "bf16", "m-env")
    assert EngineSettings.from_sources({}, env={}).precision == EngineSettings().precision


@pytest.mark.parametrize(
    ("cls", "env", "variable"),
    [
        (EngineSettings, {"DQE_THREADS": "abc"}, "DQE_THREADS"),
        (EngineSettings, {"DQE_THREADS": "-1"}, "DQE_THREADS"),
        (ClientSettings, {"DQE_DEADLINE_S": "0"}, "DQE_DEADLINE_S"),
        (BatchSettings, {"DQE_DECODE_WORKERS": "zero"}, "DQE_DECODE_WORKERS"),
        (ServerConfig, {"DQE_PORT": "70000"}, "DQE_PORT"),
    ],
)
def test_bad_values_name_the_variable_and_value(cls: type, env: dict[str, str], variable: str) -> None:
    with pytest.raises(InvalidInput) as err:
        cls.from_sources({}, env=env)
    assert variable in err.value.message and env[variable] in err.value.message


def test_one_meaning_per_variable() -> None:
    """DQE_DECODE_WORKERS is the NIfTI decode threads for both serve and batch; DQE_BATCH_WORKERS only the
    server's concurrent inference batches (it used to mean decode threads for `dqe batch`)."""
    env = {"DQE_DECODE_WORKERS": "5", "DQE_BATCH_WORKERS": "2"}
    assert BatchSettings.from_sources({}, env=env).decode_workers == 5
    server = ServerConfig.from_sources({}, env=env)
    assert (server.decode_workers, server.batch_workers) == (5, 2)


def test_bad_environment_never_breaks_help() -> None:
    env = {**os.environ, "DQE_THREADS": "abc", "DQE_PORT": "x", "DQE_DEADLINE_S": "soon"}
    for command in (["serve", "--help"], ["score", "--help"], ["gate", "--help"], ["--help"]):
        proc = subprocess.run([*DQE, *command], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr


def test_bad_environment_is_a_typed_error(phantom_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["DQE_THREADS"] = "abc"
    try:
        code = main(["score", str(phantom_dir)])
    finally:
        del os.environ["DQE_THREADS"]
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert out["error"]["field"] == "intra_op_threads" and "DQE_THREADS" in out["error"]["message"]


def test_serve_without_a_model_exits_at_once_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DQE_HOME": str(tmp_path / "empty-home")}
    proc = subprocess.run(
        [*DQE, "serve", "--port", "0", "--metrics-port", "-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "dqe model export" in lines[0], proc.stderr
    assert not (tmp_path / "empty-home").exists()  # nothing exported, nothing created


def test_cli_and_makefile_share_the_default_model_home() -> None:
    """`make model` builds into the CLI's default home (the Makefile no longer overrides DQE_HOME)."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "export DQE_HOME" not in makefile
    if "DQE_HOME" not in os.environ:
        assert model_home().name == "dqe"


@pytest.fixture()
def nan_affine_case(tmp_path: Path) -> Path:
    folder = tmp_path / "NANAFF-00000-000"
    files = write_case(make_phantom(seed=2), folder, case_id="NANAFF-00000-000")
    img = nib.load(str(files["segmentation"]))
    header = img.header.copy()
    header.set_qform(None, code=0)
    header["sform_code"] = 1
    header["srow_x"] = np.full(4, np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header), str(files["segmentation"]))
    assert not np.isfinite(nib.load(str(files["segmentation"])).header.get_best_affine()).all()
    return folder


def test_gate_with_nan_affine_skips_header_checks_with_a_warning(
    nan_affine_case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["gate", str(nan_affine_case)])
    out = json.loads(capsys.readouterr().out)
    assert code in (0, 1, 3)  # a verdict, not a crash
    assert any("NaN/Inf" in w and "segmentation" in w for w in out["warnings"])
    affines = next(c for c in out["gate"]["checks"] if c["name"] == "affines")
    assert "unusable" in affines["message"] and not affines["passed"]  # never passed silently
    assert code != 0


@pytest.mark.slow
def test_first_use_with_an_empty_model_home_prints_only_json(phantom_dir: Path, tmp_path: Path) -> None:
    """`DQE_HOME=$(mktemp -d) dqe score CASE | python -m json.tool`: the export on first use writes its
    progress on stderr, never stdout."""
    pytest.importorskip("torch")
    env = {**os.environ, "DQE_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [*DQE, "score", str(phantom_dir)], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert 1.0 <= result["mean_stars"] <= 6.0
    assert (tmp_path / "home" / "models").is_dir()


def test_serve_flags_are_generated_from_server_config_fields() -> None:
    """Every ServerConfig field but the secret token has a flag whose help names its DQE_* variable and the
    field's own default; a flag given wins over the environment, an absent one falls back to it."""
    import argparse
    import dataclasses

    from dqe.service.settings import add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser, ServerConfig)
    by_dest = {a.dest: a for a in parser._actions if a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    assert set(by_dest) == set(fields) - {"token"}
    for name, action in by_dest.items():
        assert ServerConfig.env_name(name) in action.help, name
        default = fields[name].default
        shown = ",".join(default) if isinstance(default, tuple) else default
        if shown not in ("", ()) and not isinstance(default, bool):
            assert f"default {shown}" in action.help.replace("%%", "%"), name
    args = parser.parse_args(
        ["--threads", "3", "--allowed-root", "/a", "--allowed-root", "/b", "--no-warmup"]
    )
    config = ServerConfig.from_sources(vars(args), env={"DQE_THREADS": "5", "DQE_PORT": "6000"})
    assert (config.intra_op_threads, config.allowed_roots, config.warmup) == (3, ("/a", "/b"), False)
    assert (config.port, config.max_batch_size) == (6000, ServerConfig.default("max_batch_size"))
