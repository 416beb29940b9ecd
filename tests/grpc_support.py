"""Helpers for the gRPC tests: a tiny published ONNX model, TLS certificates, phantom case bytes, servers.

The tiny model is a real ONNX graph (3x3 convolution -> ReLU -> global average pool -> linear) published
with the real preprocessing contract, so a real :class:`dqe.service.engine.Engine` runs it through ONNX Runtime
in microseconds. Tests of transport, batching, errors and concurrency use it to stay fast on 2 cores; tests
of scores use the real model.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dqe.models.contract import CONTRACT_V1

TINY_MODEL_ID = "tiny-test"
SMALL_GRID = (64, 64, 40)


# ---------------------------------------------------------------------------------------------- tiny model
def publish_tiny_model(home: Path, model_id: str = TINY_MODEL_ID, seed: int = 0) -> Path:
    """Write ``<home>/models/<model_id>/{model.onnx, contract.json, card.json}``; returns the folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dqe.models.registry import sha256_file

    rng = np.random.default_rng(seed)
    c = CONTRACT_V1.n_channels
    w_conv = rng.normal(0, 0.3, size=(4, c, 3, 3)).astype(np.float32)
    b_conv = rng.normal(0, 0.1, size=(4,)).astype(np.float32)
    w_fc = rng.normal(0, 1.0, size=(4, 1)).astype(np.float32)
    b_fc = np.array([3.5], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["views", "w_conv", "b_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["stars"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_dqe",
        [helper.make_tensor_value_info("views", TensorProto.FLOAT, ["batch", c, "height", "width"])],
        [helper.make_tensor_value_info("stars", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(w_conv, "w_conv"),
            numpy_helper.from_array(b_conv, "b_conv"),
            numpy_helper.from_array(w_fc, "w_fc"),
            numpy_helper.from_array(b_fc, "b_fc"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder = home / "models" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    CONTRACT_V1.to_json(folder / "contract.json")
    card = {
        "model_id": model_id,
        "architecture": "tiny-conv (tests only)",
        "in_channels": c,
        "onnx_sha256": sha256_file(folder / "model.onnx"),
        "weights_sha256": "",
        "notes": "seeded random weights; exercises the serving path, not the model",
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def tiny_engine(home: Path, threads: int = 1) -> Any:
    from dqe.models.artifacts import ModelArtifacts
    from dqe.service.engine import Engine, EngineConfig

    folder = publish_tiny_model(home)
    return Engine(
        EngineConfig(model_id=TINY_MODEL_ID, intra_op_threads=threads), artifacts=ModelArtifacts.load(folder)
    )


class WrappedEngine:
    """A real engine whose ``run`` can be held, slowed down or made to fail (everything else delegates)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.delay_s = 0.0
        self.fail_with: BaseException | None = None
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def warmup(self) -> None:
        self.run(np.zeros((3, self.contract.n_channels, *self.contract.spatial_size), dtype=np.float32))

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait()
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        self.calls.append(int(batch.shape[0]))
        if self.fail_with is not None:
            raise self.fail_with
        return self._engine.run(batch)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- cases
def write_phantom(
    folder: Path, seed: int, shape: tuple[int, int, int] = SMALL_GRID, **kwargs: Any
) -> dict[str, Path]:
    from dqe.models.phantom import make_phantom, write_case

    return write_case(make_phantom(seed=seed, shape=shape, **kwargs), folder, case_id=folder.name)


def read_bytes(paths: dict[str, Path]) -> dict[str, bytes]:
    return {k: Path(v).read_bytes() for k, v in paths.items()}


def nifti_bytes(array: np.ndarray, compressed: bool = True, affine: np.ndarray | None = None) -> bytes:
    """The bytes of a NIfTI-1 file holding ``array``."""
    import nibabel as nib

    img = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    img.header.set_data_dtype(array.dtype)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if compressed else raw


# ---------------------------------------------------------------------------------------------- TLS
def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate it signed, and an untrusted
    client certificate from another CA (openssl CLI; EC P-256, valid 2 days)."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    def key_and_csr(name: str, cn: str) -> None:
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={cn}")  # fmt: skip

    for ca in ("ca", "rogue-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=dqe-test-{ca}")  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ca, ext in (
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("rogue", "rogue-ca", "client.ext"),
    ):
        key_and_csr(name, "localhost" if name == "server" else f"dqe-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", ext)  # fmt: skip
    return {
        n: folder / n
        for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "rogue.pem", "rogue.key")
    }


# ---------------------------------------------------------------------------------------------- servers
@contextlib.contextmanager
def running_server(engine: Any, **overrides: Any) -> Iterator[Any]:
    """A started, warmed-up server on 127.0.0.1:0 (metrics on a free port), stopped afterwards."""
    from dqe.service.serving.server import create_server
    from dqe.service.settings import ServerConfig

    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
    }
    settings.update(overrides)
    wait = settings.pop("wait_ready", True)
    server, _port = create_server(ServerConfig(**settings), engine=engine)
    try:
        if wait:
            assert server.wait_ready(60), f"server did not become ready: {server.failed!r}"
        yield server
    finally:
        server.stop(grace=1.0)


def rpc_code(fn: Callable[[], Any]) -> tuple[str, str, dict[str, str]]:
    """Run a raw stub call; returns (status code name, details, trailing metadata) ('OK' when it succeeded)."""
    import grpc

    try:
        fn()
    except grpc.RpcError as err:
        trailing = {k: v for k, v in (err.trailing_metadata() or ())}  # type: ignore[attr-defined]
        return err.code().name, err.details() or "", trailing  # type: ignore[attr-defined]
    return "OK", "", {}
