"""One import namespace and layers that point down: the wheel's top-level name, the package graph, the lazy
imports, and CLI commands discovered through entry points (training only with its extra)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dqe.service import cli

REPO = Path(__file__).resolve().parents[1]


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "imports.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_package_graph_has_no_upward_edge() -> None:
    proc = _tool("graph")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("0 pointing up")
    assert " UP " not in proc.stdout


def test_every_lazy_import_says_why() -> None:
    proc = _tool("lazy")
    assert proc.returncode == 0, proc.stdout
    assert "NO REASON GIVEN" not in proc.stdout


def test_readme_listings_match_the_code() -> None:
    readme = (REPO / "README.md").read_text()
    graph = _tool("graph").stdout.splitlines()[:-1]
    lazy = _tool("lazy").stdout.splitlines()[:-1]
    assert "\n".join(graph) in readme, "README package graph is stale: run `make imports`"
    assert "\n".join(lazy) in readme, "README lazy-import list is stale: run `make imports`"


@pytest.mark.slow
def test_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dqe_service-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = next(n for n in zf.namelist() if n.endswith("top_level.txt"))
        assert zf.read(top).decode().split() == ["dqe"]
        roots = {n.split("/")[0] for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")}
        assert roots == {"dqe"}


def test_training_commands_need_the_train_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {ep.name for ep in cli.command_entry_points()}
    assert {"score", "serve", "gate", "model", "batch"} <= names
    assert ("training" in names) == cli.extra_installed("train")
    monkeypatch.setattr(cli, "extra_installed", lambda extra, *a, **k: extra != "train")
    sys.modules.pop("dqe.training.cli", None)
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert "train" not in choices and "serve" in choices
    assert "dqe.training.cli" not in sys.modules


def test_extra_installed_follows_self_references() -> None:
    # `train` includes `dqe-service[export]`: installed here only if torch and the reference package are.
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        assert not cli.extra_installed("export")
    else:
        assert cli.extra_installed("export") == cli.extra_installed("train") or not cli.extra_installed(
            "train"
        )
    assert cli.extra_installed("no-such-extra")  # an extra with no requirements is trivially installed
