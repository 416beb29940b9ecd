"""Malformed inputs and bad credentials against a mutual-TLS, token-protected server: each gets the right
status code and a message naming the field, and the server stays healthy and correct afterwards."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.errors import DQEError
from dqe.models.phantom import make_phantom
from dqe.service.client import DQEClient
from tests.grpc_support import (
    SMALL_GRID,
    make_certs,
    nifti_bytes,
    read_bytes,
    running_server,
    tiny_engine,
    write_phantom,
)

TOKEN = "s3cret-token"


@dataclass
class Env:
    target: str
    certs: dict[str, Path]
    root: Path
    outside: Path
    good: dict[str, bytes]
    arrays: dict[str, np.ndarray]
    engine: Any

    def client(self, **overrides: Any) -> DQEClient:
        kwargs: dict[str, Any] = {
            "ca_cert": str(self.certs["ca.pem"]),
            "client_cert": str(self.certs["client.pem"]),
            "client_key": str(self.certs["client.key"]),
            "token": TOKEN,
            "retries": 0,
            "deadline_s": 30,
        }
        kwargs.update(overrides)
        return DQEClient(self.target, **kwargs)

    def with_file(self, field: str, data: bytes) -> dict[str, bytes]:
        return {**self.good, field: data}

    def with_array(self, field: str, array: np.ndarray) -> dict[str, bytes]:
        return self.with_file(field, nifti_bytes(array))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    base = tmp_path_factory.mktemp("errors")
    certs = make_certs(base / "certs")
    root = base / "root"
    outside = base / "outside"
    write_phantom(root / "GOOD-1", seed=5)
    write_phantom(outside / "SECRET-1", seed=6)
    (root / "escape").symlink_to(outside / "SECRET-1", target_is_directory=True)
    mixed = root / "MIXED-1"
    write_phantom(mixed, seed=7)
    seg = next(mixed.glob("*-seg.nii.gz"))
    seg.unlink()
    seg.symlink_to(next((outside / "SECRET-1").glob("*-seg.nii.gz")))
    engine = tiny_engine(base / "home")
    phantom = make_phantom(seed=5, shape=SMALL_GRID)
    with running_server(
        engine,
        tls_cert=str(certs["server.pem"]),
        tls_key=str(certs["server.key"]),
        tls_client_ca=str(certs["ca.pem"]),
        token=TOKEN,
        allowed_roots=(str(root),),
    ) as server:
        from dqe.models.case import discover_files

        good = read_bytes(discover_files(root / "GOOD-1"))
        yield Env(f"127.0.0.1:{server.port}", certs, root, outside, good, phantom.arrays(), engine)


def _4d(a: np.ndarray) -> np.ndarray:
    return np.stack([a, a], axis=-1)


def _labels7(seg: np.ndarray) -> np.ndarray:
    out = seg.copy()
    out[out == 2] = 7
    return out


def _nan_image(a: np.ndarray) -> np.ndarray:
    return np.full(a.shape, np.nan, dtype=np.float32)


def _half_label(seg: np.ndarray) -> np.ndarray:
    out = seg.astype(np.float32)
    out[out == 2] = 1.5
    return out


def _views(shape: tuple[int, ...], fill: float = 0.0, dtype: Any = np.float32) -> np.ndarray:
    return np.full(shape, fill, dtype=dtype)


Case_ = Callable[[Env], Any]
# (name, call, expected code, text the message must contain)
TABLE: list[tuple[str, Case_, str, str]] = [
    (
        "truncated gzip",
        lambda e: e.client().score_bytes(e.with_file("segmentation", e.good["segmentation"][:-200])),
        "INVALID_ARGUMENT",
        "segmentation",
    ),
    (
        "not NIfTI",
        lambda e: e.client().score_bytes(e.with_file("t1c", os.urandom(4096))),
        "INVALID_ARGUMENT",
        "t1c",
    ),
    (
        "gzip of non-NIfTI",
        lambda e: e.client().score_bytes(e.with_file("flair", __import__("gzip").compress(b"hello" * 200))),
        "INVALID_ARGUMENT",
        "flair",
    ),
    (
        "4-D image",
        lambda e: e.client().score_bytes(e.with_array("t2", _4d(e.arrays["t2"]))),
        "INVALID_ARGUMENT",
        "3-D",
    ),
    (
        "mismatched shapes",
        lambda e: e.client().score_bytes(e.with_array("t1", e.arrays["t1"][:-2])),
        "INVALID_ARGUMENT",
        "shape",
    ),
    (
        "labels {7}",
        lambda e: e.client().score_bytes(e.with_array("segmentation", _labels7(e.arrays["segmentation"]))),
        "INVALID_ARGUMENT",
        "{7}",
    ),
    (
        "non-integer label",
        lambda e: e.client().score_bytes(e.with_array("segmentation", _half_label(e.arrays["segmentation"]))),
        "INVALID_ARGUMENT",
        "1.5",
    ),
    (
        "empty mask",
        lambda e: e.client().score_bytes(e.with_array("segmentation", np.zeros(SMALL_GRID, np.uint8))),
        "INVALID_ARGUMENT",
        "no tumour",
    ),
    (
        "all-NaN volume",
        lambda e: e.client().score_bytes(e.with_array("flair", _nan_image(e.arrays["flair"]))),
        "INVALID_ARGUMENT",
        "flair",
    ),
    (
        "missing file bytes",
        lambda e: e.client().score_bytes(e.with_file("t2", b"")),
        "INVALID_ARGUMENT",
        "files.t2",
    ),
    (
        "path traversal",
        lambda e: e.client().score_paths("GOOD-1/../../outside/SECRET-1"),
        "PERMISSION_DENIED",
        "..",
    ),
    (
        "absolute path outside roots",
        lambda e: e.client().score_paths(e.outside / "SECRET-1"),
        "PERMISSION_DENIED",
        "outside the allowed roots",
    ),
    (
        "symlinked folder escape",
        lambda e: e.client().score_paths(e.root / "escape"),
        "PERMISSION_DENIED",
        "outside the allowed roots",
    ),
    (
        "symlinked file escape",
        lambda e: e.client().score_paths(e.root / "MIXED-1"),
        "PERMISSION_DENIED",
        "paths.segmentation",
    ),
    ("missing folder", lambda e: e.client().score_paths(e.root / "NOPE-1"), "NOT_FOUND", "does not exist"),
    (
        "missing file",
        lambda e: e.client().score_paths(
            **{f: e.root / "GOOD-1" / f"x-{f}.nii.gz" for f in ("t1c", "t1", "t2", "flair", "segmentation")}
        ),
        "NOT_FOUND",
        "does not exist",
    ),
    (
        "views wrong channels",
        lambda e: e.client().score_views(_views((3, 6, 240, 240))),
        "INVALID_ARGUMENT",
        "views.shape",
    ),
    (
        "views too small",
        lambda e: e.client().score_views(_views((3, 7, 16, 16))),
        "INVALID_ARGUMENT",
        "views.shape",
    ),
    (
        "views NaN",
        lambda e: e.client().score_views(_views((3, 7, 240, 240), np.nan)),
        "INVALID_ARGUMENT",
        "NaN",
    ),
    ("views byte count", lambda e: _short_views(e), "INVALID_ARGUMENT", "views.data"),
    ("views dtype unspecified", lambda e: _untyped_views(e), "INVALID_ARGUMENT", "views.dtype"),
    ("wrong token", lambda e: e.client(token="guess").model_info(), "UNAUTHENTICATED", "not valid"),
    ("no token", lambda e: e.client(token=None).model_info(), "UNAUTHENTICATED", "authorization"),
    (
        "no TLS client cert",
        lambda e: e.client(client_cert=None, client_key=None).model_info(),
        "UNAVAILABLE",
        "",
    ),
    (
        "client cert from another CA",
        lambda e: e.client(
            client_cert=str(e.certs["rogue.pem"]), client_key=str(e.certs["rogue.key"])
        ).model_info(),
        "UNAVAILABLE",
        "",
    ),
    (
        "plaintext client",
        lambda e: DQEClient(e.target, token=TOKEN, retries=0, deadline_s=10).model_info(),
        "UNAVAILABLE",
        "",
    ),
]


def _short_views(e: Env) -> Any:
    client = e.client()
    request = client.views_request(_views((3, 7, 240, 240)))
    request.views.data = request.views.data[:-4]
    return client._call(client.stub.ScoreViews, request)


def _untyped_views(e: Env) -> Any:
    client = e.client()
    request = client.views_request(_views((3, 7, 240, 240)))
    request.views.dtype = 0
    return client._call(client.stub.ScoreViews, request)


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 15
    assert len({name for name, *_ in TABLE}) == len(TABLE)


@pytest.mark.parametrize(("name", "call", "code", "text"), TABLE, ids=[t[0] for t in TABLE])
def test_malformed_input_gets_the_right_status(
    env: Env, name: str, call: Case_, code: str, text: str
) -> None:
    with pytest.raises(DQEError) as info:
        call(env)
    assert info.value.code == code, f"{name}: {info.value.code} {info.value.message}"
    assert text in info.value.message or text == (info.value.field or ""), info.value.message
    assert "Traceback" not in info.value.message
    # The server is still healthy and still scores correctly.
    with env.client() as client:
        assert client.health() == "SERVING"
        remote = client.score_bytes(env.good, case_id="good")
    assert remote.result.views == env.engine.score_case(Case.from_bytes(env.good)).views


def test_errors_name_field_in_metadata(env: Env) -> None:
    with pytest.raises(DQEError) as info:
        env.client().score_bytes(env.with_array("segmentation", _labels7(env.arrays["segmentation"])))
    assert info.value.field == "segmentation"
    assert info.value.kind == "InvalidInput"
    assert "expected a subset of {0, 1, 2, 3, 4}" in info.value.message
    with pytest.raises(DQEError) as empty:
        env.client().score_bytes(env.with_array("segmentation", np.zeros(SMALL_GRID, np.uint8)))
    assert empty.value.kind == "EmptySegmentation"


def test_health_needs_no_token_and_good_paths_work(env: Env) -> None:
    with env.client(token=None) as anonymous:
        assert anonymous.health() == "SERVING"
    with env.client() as client:
        remote = client.score_paths("GOOD-1")  # relative to the first root
        assert remote.result.case_id == "GOOD-1"
        assert remote.result.views == env.engine.score_case(Case.from_folder(env.root / "GOOD-1")).views
