"""``make demo``: build the default model, start the gRPC service on loopback, score one case, print it.

Uses the real BraTS-GLI-00001-000 exam from ``../shared/data`` when it is there (and compares with the
reference package's published expectation), else a seeded synthetic phantom written to a temporary folder.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from dqe.models.artifacts import ensure_model
from dqe.models.phantom import make_phantom, write_case
from dqe.models.registry import DEFAULT_MODEL_ID
from dqe.service.settings import ServerConfig

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "brainlesion-deep_quality_estimation" / "tests" / "data"
REFERENCE_EXPECTED_MEAN = 5.315626939137776  # deep_quality_estimation 0.0.3's own test, seg-BraTS23_1


def _case_files(tmp: Path) -> tuple[str, dict[str, Path]]:
    if REAL.is_dir():
        names = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f", "segmentation": "seg-BraTS23_1"}
        return "BraTS-GLI-00001-000 (real, ../shared/data)", {
            k: REAL / f"{v}.nii.gz" for k, v in names.items()
        }

    return "synthetic phantom (seed 0)", write_case(make_phantom(seed=0), tmp / "PHANTOM-00000-000")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from dqe.service.client import DQEClient  # lazy: grpc only where a server or client is used
    from dqe.service.serving.server import (  # lazy: grpc server stack loads only when serving
        create_server,  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
    )

    t0 = time.perf_counter()
    art = ensure_model(DEFAULT_MODEL_ID)
    print(
        f"[demo] model {art.model_id} ready in {art.directory} (onnx sha256 {art.onnx_sha256[:12]}...)",
        file=sys.stderr,
    )
    config = ServerConfig(
        host="127.0.0.1", port=0, metrics_port=-1, log_format="text", log_level="WARNING", grace_s=5.0
    )
    server, port = create_server(config)
    try:
        if not server.wait_ready(timeout=300):
            print("[demo] server did not become SERVING", file=sys.stderr)
            return 1
        print(
            f"[demo] dqe gRPC server SERVING on 127.0.0.1:{port} after {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        with tempfile.TemporaryDirectory() as tmp:
            label, files = _case_files(Path(tmp))
            print(f"[demo] scoring {label} over gRPC (NIfTI bytes, QC gate on)", file=sys.stderr)
            with DQEClient(f"127.0.0.1:{port}", deadline_s=120) as client:
                health = client.health()
                remote = client.score_files(
                    files["t1c"],
                    files["t1"],
                    files["t2"],
                    files["flair"],
                    files["segmentation"],
                    case_id=label.split(" ")[0],
                    run_gate=True,
                )
        result = remote.to_dict()
        result["health"] = health
        print(json.dumps(result, indent=2, default=str))
        if REAL.is_dir():
            delta = abs(remote.mean_stars - REFERENCE_EXPECTED_MEAN)
            print(
                f"[demo] mean {remote.mean_stars:.6f} stars; reference package expects {REFERENCE_EXPECTED_MEAN:.6f} "
                f"(|diff| {delta:.1e})",
                file=sys.stderr,
            )
    finally:
        server.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
