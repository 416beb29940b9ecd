"""``dqe score --server`` prints what local ``dqe score`` prints; ``dqe serve`` refuses bad configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dqe.service.cli import main
from tests.grpc_support import running_server, write_phantom


@pytest.fixture(scope="module")
def served(engine, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli")
    write_phantom(root / "CLI-0001", seed=21, shape=(240, 240, 155))
    with running_server(engine, allowed_roots=(str(root),)) as server:
        yield f"127.0.0.1:{server.port}", root / "CLI-0001"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(args)
    return code, json.loads(capsys.readouterr().out)


def test_score_server_prints_the_local_json_shape(served, capsys: pytest.CaptureFixture[str]) -> None:
    target, folder = served
    code, local = _run(["score", str(folder), "--threads", "2"], capsys)
    assert code == 0
    for extra in ([], ["--views"], ["--remote-paths"]):
        code, remote = _run(["score", str(folder), "--server", target, *extra], capsys)
        assert code == 0, remote
        assert set(remote) == set(local), extra
        for key in (
            "case_id",
            "mean_stars",
            "views",
            "center_of_mass",
            "warnings",
            "model_id",
            "model_sha256",
        ):
            assert remote[key] == local[key], (extra, key)
        assert remote["engine"] == local["engine"]
        assert remote["timings_ms"]["total"] > 0 and remote["timings_ms"]["server_total"] > 0


def test_score_server_explicit_files(served, capsys: pytest.CaptureFixture[str]) -> None:
    target, folder = served
    files = {p.name.split("-")[-1].split(".")[0]: p for p in folder.iterdir()}
    args = [
        "--t1c",
        files["t1c"],
        "--t1",
        files["t1n"],
        "--t2",
        files["t2w"],
        "--flair",
        files["t2f"],
        "--seg",
        files["seg"],
    ]
    code, local = _run(["score", *map(str, args), "--threads", "2"], capsys)
    code2, remote = _run(["score", *map(str, args), "--server", target], capsys)
    assert code == code2 == 0
    assert remote["case_id"] == local["case_id"] and remote["views"] == local["views"]


def test_score_server_errors_print_the_local_error_shape(
    served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, folder = served
    bad = tmp_path / "BAD-1"
    paths = write_phantom(bad, seed=22)
    import nibabel as nib
    import numpy as np

    seg = np.asarray(nib.load(paths["segmentation"]).dataobj)
    nib.save(nib.Nifti1Image(np.zeros_like(seg), np.eye(4)), paths["segmentation"])
    code, local = _run(["score", str(bad), "--threads", "2"], capsys)
    code2, remote = _run(["score", str(bad), "--server", target], capsys)
    assert code == code2 == 2
    assert remote == local  # {"error": {code, kind, field, message}}
    code3, refused = _run(["score", "/etc", "--server", target, "--remote-paths"], capsys)
    assert code3 == 2 and refused["error"]["code"] == "PERMISSION_DENIED"
    code4, down = _run(
        ["score", str(folder), "--server", "127.0.0.1:1", "--retries", "1", "--deadline", "2"], capsys
    )
    assert code4 == 2 and down["error"]["code"] == "UNAVAILABLE"


def test_serve_rejects_bad_configuration(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DQE_MAX_BATCH_SIZE", "many")
    code, out = _run(["serve", "--port", "0"], capsys)
    assert code == 2
    assert out["error"]["field"] == "max_batch_size" and "DQE_MAX_BATCH_SIZE" in out["error"]["message"]
    monkeypatch.delenv("DQE_MAX_BATCH_SIZE")
    code, out = _run(["serve", "--port", "0", "--tls-cert", "only-cert.pem"], capsys)
    assert code == 2 and out["error"]["field"] == "tls_key"
