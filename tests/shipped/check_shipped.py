"""The serving-only install as a user gets it: wheel -> fresh venv without extras -> serve, score, gate.

Run by ``make test-shipped`` with the build environment's Python (``.venv/bin/python``), which has exported
the model into ``$DQE_HOME``. Steps (each timed, seconds on the wall clock):

1. ``pip wheel --no-deps`` from a clean copy of the package sources (``SOURCE_DATE_EPOCH`` fixed, so the same
   sources give the same wheel bytes);
2. a fresh venv in ``.shipped/venv`` (git-ignored) with ``pip install <wheel>`` (no ``-e``, no extras, no
   constraints: what a new user types); reused when its stamp holds the same wheel sha256;
3. ``pip freeze`` of it (``.shipped/freeze.txt``); torch, OpenVINO and MONAI must be absent;
4. ``python -X importtime -m dqe.service.cli serve --port 0 --port-file F`` on ``$DQE_HOME``; health polled
   with ``python -m dqe.service.healthcheck`` (what the container's HEALTHCHECK runs) until SERVING;
5. ``dqe score --server``, ``dqe score`` and ``dqe gate`` from that venv on the real case
   BraTS-GLI-00001-000 (``$DQE_SHARED_DATA``, default ``../shared/data``) or, when absent, a seeded phantom
   written by the build environment; remote and local stars must agree;
6. SIGTERM, clean exit 0. The server writes ``sys.modules`` at exit (``atexit``, after the drain): no
   ``torch``, ``dqe.training``, ``openvino`` or ``monai`` module may be among them, and ``import torch`` must
   fail in the venv. ``-X importtime`` also logs imports that were only attempted (an optional ``import
   openvino`` that found nothing appears there too); they are reported, not failed.

Prints a short summary and writes ``.shipped/summary.json``. Exit 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".shipped"
VENV = WORK / "venv"
SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "models", "service", "training")
FORBIDDEN_PACKAGES = ("torch", "openvino", "monai", "onnx", "deep-quality-estimation")
FORBIDDEN_MODULES = re.compile(r"^(torch|dqe\.training|openvino|monai)(\.|$)")
# `dqe serve` as the console script runs it, plus a record of the modules loaded when the process ends.
SERVE = (
    "import atexit, json, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "from dqe.service.cli import main\n"
    "sys.argv[0] = 'dqe'\n"
    "sys.exit(main())\n"
)
STAR_TOL = 1e-4  # stars; local and server runs may use different thread counts (reduction order)


class CheckFailed(Exception):
    """A shipped-install check did not hold (the message says which and what was found)."""


def log(msg: str) -> None:
    print(f"[test-shipped] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raises CheckFailed with its output when it exits non-zero."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise CheckFailed(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- steps
def build_wheel() -> Path:
    """The wheel of the package sources (copied first, so the repository's build/ folder is never used)."""
    dist = WORK / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="dqe-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in SOURCES:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=ignore)
            else:
                shutil.copy2(path, src / name)
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
             str(src)], env=env)  # fmt: skip
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one wheel in {dist}, found {wheels}")
    return wheels[0]


def ensure_venv(wheel: Path, digest: str) -> bool:
    """A venv with exactly ``pip install <wheel>``; returns True when an existing one was reused."""
    stamp = VENV / ".wheel-sha256"
    if stamp.is_file() and stamp.read_text().strip() == digest and (VENV / "bin" / "dqe").exists():
        return True
    shutil.rmtree(VENV, ignore_errors=True)
    # The interpreter the build venv was made from: a venv of a venv would inherit nothing, but be explicit.
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(VENV)])
    run([str(VENV / "bin" / "pip"), "install", "-q", str(wheel)])
    stamp.write_text(digest + "\n")
    return False


def freeze() -> list[str]:
    out = run([str(VENV / "bin" / "pip"), "freeze", "--all"]).stdout.splitlines()
    (WORK / "freeze.txt").write_text("\n".join(out) + "\n")
    return out


def case_args() -> tuple[str, list[str]]:
    """The real case's file flags, or a seeded phantom's (written here, by the build environment)."""
    shared = Path(os.environ.get("DQE_SHARED_DATA", REPO.parent / "shared" / "data"))
    data = shared / "brainlesion-deep_quality_estimation" / "tests" / "data"
    if (data / "seg-BraTS23_1.nii.gz").is_file():
        files = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f", "seg": "seg-BraTS23_1"}
        return "BraTS-GLI-00001-000", [
            a for k, v in files.items() for a in (f"--{k}", str(data / f"{v}.nii.gz"))
        ]
    from dqe.models.phantom import make_phantom, write_case

    paths = write_case(make_phantom(seed=0), WORK / "phantom", case_id="PHANTOM-00000-000")
    flags = {"t1c": "t1c", "t1": "t1", "t2": "t2", "flair": "flair", "segmentation": "seg"}
    return "phantom seed 0", [a for k, v in flags.items() for a in (f"--{v}", str(paths[k]))]


def wait_serving(port_file: Path, server: subprocess.Popen[str], timeout_s: float) -> tuple[int, float]:
    """The bound port once health answers SERVING, and the seconds it took."""
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DQE_TLS")}
    while time.perf_counter() - t0 < timeout_s:
        if server.poll() is not None:
            raise CheckFailed(
                f"dqe serve exited {server.returncode} before SERVING (see {WORK / 'serve.log'})"
            )
        if port_file.is_file() and port_file.read_text().strip():
            port = int(port_file.read_text())
            probe = subprocess.run(
                [str(VENV / "bin" / "python"), "-m", "dqe.service.healthcheck", "--target", f"127.0.0.1:{port}"],
                capture_output=True, text=True, env=env,
            )  # fmt: skip
            if probe.returncode == 0:
                return port, time.perf_counter() - t0
        time.sleep(0.5)
    raise CheckFailed(f"health not SERVING within {timeout_s:.0f} s")


def dqe_json(args: list[str]) -> dict[str, Any]:
    """Run ``dqe ARGS`` from the serving venv; stdout must be exactly one JSON document."""
    out = run([str(VENV / "bin" / "dqe"), *args]).stdout
    try:
        return dict(json.loads(out))
    except json.JSONDecodeError as exc:
        raise CheckFailed(f"dqe {args[0]} stdout is not JSON ({exc}): {out[:500]!r}") from exc


def main() -> int:
    if "DQE_HOME" not in os.environ:
        # The build environment's model home (the CLI's default, where `make model` exported it), passed on
        # explicitly so the serving venv reads exactly that model.
        from dqe.models.artifacts import model_home

        os.environ["DQE_HOME"] = str(model_home())
    WORK.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    wheel = build_wheel()
    digest = sha256(wheel)
    timings["wheel_s"] = time.perf_counter() - t0
    log(f"wheel {wheel.name} sha256 {digest[:16]} ({timings['wheel_s']:.1f} s)")

    t0 = time.perf_counter()
    reused = ensure_venv(wheel, digest)
    timings["venv_s"] = time.perf_counter() - t0
    log(f"venv {'reused' if reused else 'created'} ({timings['venv_s']:.1f} s)")

    packages = freeze()
    names = {re.split(r"[=@ ]", p, maxsplit=1)[0].lower().replace("_", "-") for p in packages}
    present = sorted(n for n in FORBIDDEN_PACKAGES if n in names)
    if present:
        raise CheckFailed(f"the serving-only venv has {present}")
    probe = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        raise CheckFailed("`import torch` works in the serving-only venv")

    case_name, flags = case_args()
    port_file = WORK / "port"
    port_file.unlink(missing_ok=True)
    serve_log = WORK / "serve.log"
    modules_file = WORK / "server-modules.json"
    modules_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with serve_log.open("w") as err:
        server = subprocess.Popen(
            [str(VENV / "bin" / "python"), "-X", "importtime", "-c", SERVE, str(modules_file), "serve",
             "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--metrics-port", "-1",
             "--log-format", "text", "--threads", "2"],
            stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=WORK,
        )  # fmt: skip
        try:
            port, _ = wait_serving(port_file, server, timeout_s=300)
            timings["serve_to_serving_s"] = time.perf_counter() - t0
            log(f"health SERVING on port {port} after {timings['serve_to_serving_s']:.1f} s")

            t0 = time.perf_counter()
            remote = dqe_json(["score", "--server", f"127.0.0.1:{port}", *flags])
            timings["score_server_s"] = time.perf_counter() - t0
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server_rc = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server_rc = server.wait()
    if server_rc != 0:
        raise CheckFailed(f"dqe serve exited {server_rc} after SIGTERM (see {serve_log})")
    t0 = time.perf_counter()
    local = dqe_json(["score", "--threads", "2", *flags])
    timings["score_local_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gate = dqe_json(["gate", *flags])
    timings["gate_local_s"] = time.perf_counter() - t0

    if not modules_file.is_file():
        raise CheckFailed(f"the server wrote no module list at exit ({modules_file})")
    modules = json.loads(modules_file.read_text())
    if "dqe.service.serving.server" not in modules or "onnxruntime" not in modules:
        raise CheckFailed(
            "the server's module list lacks the server or onnxruntime: it was not recorded at exit"
        )
    loaded = sorted(m for m in modules if FORBIDDEN_MODULES.match(m))
    if loaded:
        raise CheckFailed(f"the server imported {loaded}")
    attempted = sorted({
        name for line in serve_log.read_text().splitlines() if line.startswith("import time:")
        for name in [line.rsplit("|", 1)[-1].strip()] if FORBIDDEN_MODULES.match(name)
    })  # fmt: skip
    n_imports = len(modules)
    diff = abs(float(remote["mean_stars"]) - float(local["mean_stars"]))
    if diff > STAR_TOL:
        raise CheckFailed(
            f"server {remote['mean_stars']} vs local {local['mean_stars']} stars differ by {diff}"
        )
    timings["total_s"] = time.perf_counter() - t_all

    summary = {
        "wheel": wheel.name,
        "wheel_sha256": digest,
        "venv_reused": reused,
        "packages": packages,
        "torch_installed": False,
        "server_modules_loaded": n_imports,
        "server_imported_forbidden": [],
        "server_attempted_absent": attempted,
        "health": "SERVING",
        "case": case_name,
        "mean_stars_server": remote["mean_stars"],
        "mean_stars_local": local["mean_stars"],
        "views_server": remote.get("views"),
        "gate_verdict": (gate.get("gate") or {}).get("verdict"),
        "server_exit": server_rc,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    (WORK / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"serving-only install: {wheel.name} (sha256 {digest[:12]}, venv {'reused' if reused else 'new'})")
    print(f"  packages ({len(packages)}): {', '.join(packages)}")
    print(f"  torch installed: no; server had {n_imports} modules loaded at exit, none of torch/dqe.training/"
          f"openvino/monai (tried and absent: {', '.join(attempted) or 'none'})")  # fmt: skip
    print(
        f"  health: SERVING after {timings['serve_to_serving_s']:.1f} s; dqe serve exit {server_rc} on SIGTERM"
    )
    print(f"  {case_name}: server {remote['mean_stars']:.6f} stars, local {local['mean_stars']:.6f} "
          f"(|diff| {diff:.2e}); gate {summary['gate_verdict']}")  # fmt: skip
    print(f"  took {timings['total_s']:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as exc:
        print(f"test-shipped FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
