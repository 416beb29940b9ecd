"""``DQEClient``: the SDK of ``dqe.v1.QualityEstimation`` (deadlines, retries on another replica, TLS, token)."""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np

import dqe.models.errors as errors
from dqe.models.contract import FIELDS, PreprocessingContract
from dqe.models.errors import DQEError, InvalidInput
from dqe.models.preprocess import build_views
from dqe.models.qc.alpha import with_alpha
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from dqe.service.client.errors import RemoteError, error_from_rpc, item_error
from dqe.service.client.feed import BatchFeed
from dqe.service.client.results import RemoteScore
from dqe.service.client.targets import channel_target, service_config
from dqe.service.wire import tensor_from_views

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def _read_pem(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class DQEClient:
    """Client of ``dqe.v1.QualityEstimation``.

    Args:
        target: ``host:port``, several comma-separated, or a resolver target such as ``dns:///name:port``
            (see :func:`channel_target`); calls are spread with ``round_robin``.
        tls: use TLS (implied by ``ca_cert``); without ``ca_cert`` the system roots verify the server.
        ca_cert: PEM (path or bytes) of the CA that signed the server certificate.
        client_cert, client_key: PEM (paths or bytes) for mutual TLS.
        server_name: expected name in the server certificate when it differs from the target host.
        token: bearer token sent as ``authorization: Bearer <token>``.
        deadline_s: overall deadline per call, retries included, in seconds.
        retries: extra attempts of a call on UNAVAILABLE or a server-side CANCELLED (see ``_retryable``);
            for ``score_batch``, new streams in a row that answered nothing.
        backoff_s: first backoff; doubles per attempt (with +-20 % jitter).
        max_message_mb: largest request/response, in MiB.
        health_check: send new calls only to replicas whose health is SERVING (gRPC client-side health
            checking of ``dqe.v1.QualityEstimation``); ``None`` = on when ``target`` names several replicas.

    Raises:
        InvalidInput: ``target`` is malformed (field ``server``).
        OSError: a TLS file cannot be read.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        ca_cert: str | bytes | None = None,
        client_cert: str | bytes | None = None,
        client_key: str | bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
        deadline_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        max_message_mb: int = 512,
        health_check: bool | None = None,
    ) -> None:
        resolved = channel_target(target)
        self.target = target
        self.channel_target = resolved.target
        self.health_checked = resolved.balanced if health_check is None else health_check
        self.deadline_s = deadline_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._token = token
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_mb * MIB),
            ("grpc.max_send_message_length", max_message_mb * MIB),
            ("grpc.service_config", service_config(self.health_checked)),
        ]
        if resolved.authority:
            options.append(("grpc.default_authority", resolved.authority))
        if tls or ca_cert is not None or client_cert is not None:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(ca_cert),
                private_key=_read_pem(client_key),
                certificate_chain=_read_pem(client_cert),
            )
            self.channel = grpc.secure_channel(resolved.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(resolved.target, options=options)
        self.stub = pb_grpc.QualityEstimationStub(self.channel)
        self._contract: PreprocessingContract | None = None
        self._closed = False

    def __enter__(self) -> DQEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self.channel.close()

    # ------------------------------------------------------------------ plumbing
    def _metadata(self) -> list[tuple[str, str]]:
        md = [("x-request-id", uuid.uuid4().hex[:16])]
        if self._token:
            md.append(("authorization", f"Bearer {self._token}"))
        return md

    def _retryable(self, err: grpc.RpcError) -> bool:
        """Whether a failed call may be sent again: UNAVAILABLE (replica starting, draining or gone), or
        CANCELLED by the server (it stopped before answering: a shutdown past its grace). This client never
        cancels a call it still waits for, so CANCELLED here is the server's, unless :meth:`close` ran."""
        code = err.code() if callable(getattr(err, "code", None)) else None  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED:
            return not self._closed
        return bool(code == grpc.StatusCode.UNAVAILABLE)

    def _call(self, method: Callable[..., Any], request: Any, deadline_s: float | None = None) -> Any:
        """One unary call, retried (see :meth:`_retryable`) with backoff inside one deadline; with several
        replicas ``round_robin`` sends the retry to one that is up. Returns the one response.

        Raises:
            DQEError: the server's error (see :func:`error_from_rpc`), or the last one once retries are spent.
        """
        budget = self.deadline_s if deadline_s is None else deadline_s
        end = time.monotonic() + budget
        metadata = self._metadata()  # one request id for every attempt, so server logs tie them together
        attempt = 0
        while True:
            remaining = end - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001), metadata=metadata)
            except grpc.RpcError as err:
                if not self._retryable(err) or attempt >= self.retries:
                    raise error_from_rpc(err) from None
                pause = self._backoff(attempt)
                if time.monotonic() + pause >= end:
                    raise error_from_rpc(err) from None
                logger.info(
                    "%s: %s (%s); retry %d in %.2f s",
                    self.target,
                    err.code().name,  # type: ignore[attr-defined]
                    err.details(),  # type: ignore[attr-defined]
                    attempt + 1,
                    pause,
                )
                time.sleep(pause)
                attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt + 1``: ``backoff_s * 2**attempt``, +-20 % jitter."""
        return self.backoff_s * (2**attempt) * random.uniform(0.8, 1.2)

    # ------------------------------------------------------------------ request builders
    @staticmethod
    def options(run_gate: bool = False, alpha: float | None = None) -> pb.ScoreOptions:
        """``ScoreOptions``; ``alpha`` unset (``None``) leaves the server's default significance level."""
        opts = pb.ScoreOptions(run_gate=run_gate)
        if alpha is not None:
            opts.alpha = float(alpha)
        return opts

    @staticmethod
    def bytes_request(
        files: Mapping[str, bytes], case_id: str = "", run_gate: bool = False, alpha: float | None = None
    ) -> pb.ScoreCaseRequest:
        """A ``ScoreCaseRequest`` carrying the five files' bytes (keys: t1c, t1, t2, flair, segmentation)."""
        return pb.ScoreCaseRequest(
            case_id=case_id,
            files=pb.NiftiFiles(**{f: files.get(f, b"") for f in FIELDS}),
            options=DQEClient.options(run_gate, alpha),
        )

    @staticmethod
    def paths_request(
        case_dir: str | os.PathLike[str] | None = None,
        *,
        case_id: str = "",
        run_gate: bool = False,
        alpha: float | None = None,
        **files: str | os.PathLike[str] | None,
    ) -> pb.ScoreCaseRequest:
        """A ``ScoreCaseRequest`` naming files on the server (``case_dir`` and/or the five fields)."""
        unknown = set(files) - set(FIELDS)
        if unknown:
            raise InvalidInput(
                f"unknown file fields {sorted(unknown)}; expected {list(FIELDS)}", field=sorted(unknown)[0]
            )
        paths = pb.ServerPaths(case_dir=str(case_dir or ""), **{k: str(v) for k, v in files.items() if v})
        return pb.ScoreCaseRequest(case_id=case_id, paths=paths, options=DQEClient.options(run_gate, alpha))

    @staticmethod
    def views_request(
        views: np.ndarray, case_id: str = "", center_of_mass: tuple[int, int, int] | None = None
    ) -> pb.ScoreViewsRequest:
        """A ``ScoreViewsRequest`` for a ``(3, 7, H, W)`` float32 or float16 array."""
        msg = pb.ScoreViewsRequest(case_id=case_id, views=tensor_from_views(views))
        if center_of_mass is not None:
            x, y, z = (int(c) for c in center_of_mass)
            msg.center_of_mass.CopyFrom(pb.CenterOfMass(x=x, y=y, z=z))
        return msg

    # ------------------------------------------------------------------ scoring
    def score_bytes(
        self,
        files: Mapping[str, bytes],
        *,
        case_id: str = "",
        run_gate: bool = False,
        alpha: float | None = None,
        deadline_s: float | None = None,
    ) -> RemoteScore:
        """Score a case from the bytes of its five NIfTI files (gzip or not); ``alpha``: the gate's level
        (``None``: the server's default)."""
        request = self.bytes_request(files, case_id, run_gate, alpha)
        response = self._call(self.stub.ScoreCase, request, deadline_s)
        return RemoteScore.from_proto(response)

    def score_files(
        self,
        t1c: str | os.PathLike[str],
        t1: str | os.PathLike[str],
        t2: str | os.PathLike[str],
        flair: str | os.PathLike[str],
        segmentation: str | os.PathLike[str],
        *,
        case_id: str = "",
        run_gate: bool = False,
        local_slicing: bool = False,
        alpha: float | None = None,
        deadline_s: float | None = None,
    ) -> RemoteScore:
        """Score local files: sent as bytes, or (``local_slicing``) sliced here and sent as views.

        With ``local_slicing`` the case is decoded and validated locally, only the ``(3, 7, H, W)`` views
        (about 4.8 MB) travel, and the QC gate (if asked for) runs locally.
        """
        paths = {"t1c": t1c, "t1": t1, "t2": t2, "flair": flair, "segmentation": segmentation}
        case_id = case_id or Path(segmentation).name.split(".")[0]
        if local_slicing:
            return self._score_locally_sliced(paths, case_id, run_gate, deadline_s, alpha)
        data = {}
        for name, p in paths.items():
            try:
                data[name] = Path(p).read_bytes()
            except FileNotFoundError:
                raise errors.NotFound(f"{name}: file {str(p)!r} does not exist", field=name) from None
        return self.score_bytes(data, case_id=case_id, run_gate=run_gate, alpha=alpha, deadline_s=deadline_s)

    def score_paths(
        self,
        case_dir: str | os.PathLike[str] | None = None,
        *,
        case_id: str = "",
        run_gate: bool = False,
        alpha: float | None = None,
        deadline_s: float | None = None,
        **files: str | os.PathLike[str] | None,
    ) -> RemoteScore:
        """Score files on the server's storage (inside its ``--allowed-root`` folders)."""
        request = self.paths_request(case_dir, case_id=case_id, run_gate=run_gate, alpha=alpha, **files)
        return RemoteScore.from_proto(self._call(self.stub.ScoreCase, request, deadline_s))

    def score_views(
        self,
        views: np.ndarray,
        *,
        case_id: str = "",
        center_of_mass: tuple[int, int, int] | None = None,
        deadline_s: float | None = None,
    ) -> RemoteScore:
        """Score pre-extracted ``(3, 7, H, W)`` views (float32 exact; float16 halves the bytes)."""
        request = self.views_request(views, case_id, center_of_mass)
        return RemoteScore.from_proto(self._call(self.stub.ScoreViews, request, deadline_s))

    def score_batch(
        self,
        requests: Iterable[pb.ScoreCaseRequest | pb.ScoreViewsRequest],
        *,
        deadline_s: float | None = None,
    ) -> Iterator[tuple[int, RemoteScore | DQEError]]:
        """Stream many cases; yields ``(index, RemoteScore or the item's error)`` as results arrive.

        ``index`` is the item's position in ``requests``; every index is yielded exactly once. When the stream
        breaks with UNAVAILABLE (the replica died or is draining), a new stream (with ``round_robin``, on a
        replica that is up) carries only the items not answered yet, then the rest of ``requests``; an item the
        server answered with an UNAVAILABLE item error is sent again the same way. Answers that arrive twice are
        dropped. Other item errors (a bad case) are answers and are not retried. Retries share the deadline and
        stop after ``retries`` attempts in a row that answered nothing; items still refused then are yielded
        with their last error.

        Raises:
            DQEError: the stream failed otherwise (auth, deadline, UNAVAILABLE with the retries spent).
            Exception: whatever iterating ``requests`` raised (the stream is cancelled).
        """
        budget = self.deadline_s if deadline_s is None else deadline_s
        end = time.monotonic() + budget
        feed = BatchFeed(requests)
        refused: dict[int, DQEError] = {}  # items answered UNAVAILABLE, to send again
        metadata = self._metadata()
        fruitless = 0
        while True:
            messages, order = feed.new_attempt()
            stream = self.stub.ScoreBatch(
                messages, timeout=max(end - time.monotonic(), 0.001), metadata=metadata
            )
            progressed = False
            failure: grpc.RpcError | None = None
            try:
                for msg in stream:
                    if not 0 <= msg.index < len(order):
                        raise RemoteError(
                            f"server answered item {msg.index} of a stream of {len(order)}", code="INTERNAL"
                        )
                    index = order[msg.index]
                    outcome: RemoteScore | DQEError
                    if msg.WhichOneof("outcome") == "result":
                        outcome = RemoteScore.from_proto(msg.result)
                    else:
                        outcome = item_error(msg.error)
                        if outcome.code == "UNAVAILABLE":
                            refused[index] = outcome
                            continue
                    if not feed.answer(index):
                        logger.warning("dropped a second answer for batch item %d", index)
                        continue
                    refused.pop(index, None)
                    progressed = True
                    yield index, outcome
            except grpc.RpcError as err:
                if feed.source_error is not None:
                    raise feed.source_error from None
                failure = err
            finally:
                stream.cancel()  # no-op once finished; frees the call if the caller stopped early
            if feed.done():
                return
            if failure is not None and not self._retryable(failure):
                raise error_from_rpc(failure) from None
            fruitless = 0 if progressed else fruitless + 1
            pause = self._backoff(max(fruitless - 1, 0))
            if fruitless > self.retries or time.monotonic() + pause >= end:
                if failure is not None:
                    raise error_from_rpc(failure) from None
                for index, refusal in sorted(refused.items()):  # the stream ended; these were refused
                    if feed.answer(index):
                        yield index, refusal
                if feed.done():
                    return
                raise RemoteError(
                    f"batch stream ended with {len(feed.pending)} items unanswered", code="UNAVAILABLE"
                )
            logger.info(
                "batch stream to %s %s; resuming %d unanswered items in %.2f s",
                self.target,
                f"broke: {failure.code().name} ({failure.details()})"  # type: ignore[attr-defined]
                if failure is not None
                else "refused items",
                len(feed.pending),
                pause,
            )
            time.sleep(pause)

    # ------------------------------------------------------------------ info
    def model_info(self, deadline_s: float | None = None) -> dict[str, Any]:
        """The server's model: id, checksums, contract (as a dict), runtime and limits."""
        msg = self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest(), deadline_s)
        return {
            "model_id": msg.model_id,
            "onnx_sha256": msg.onnx_sha256,
            "weights_sha256": msg.weights_sha256,
            "contract": json.loads(msg.contract_json) if msg.contract_json else {},
            "card": json.loads(msg.card_json) if msg.card_json else {},
            "backend": msg.runtime.backend,
            "providers": list(msg.runtime.providers),
            "precision": msg.runtime.precision,
            "max_batch_size": msg.max_batch_size,
            "max_receive_message_bytes": msg.max_receive_message_bytes,
            "server_paths_enabled": msg.server_paths_enabled,
        }

    def contract(self) -> PreprocessingContract:
        """The server model's preprocessing contract (cached)."""
        if self._contract is None:
            self._contract = PreprocessingContract.from_dict(self.model_info()["contract"])
        return self._contract

    def health(self, service: str = "", deadline_s: float = 5.0) -> str:
        """The server's health status name (``SERVING``, ``NOT_SERVING``, ``SERVICE_UNKNOWN``); not retried.
        With several replicas it is the status of the one the call lands on; with health checking on, replicas
        that are not SERVING get no calls, so the answer is SERVING or ModelNotReady: probe each replica with a
        single-target client instead.

        Raises:
            DQEError: the server cannot be reached (UNAVAILABLE -> ModelNotReady).
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=deadline_s)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return "SERVICE_UNKNOWN"
            raise error_from_rpc(err) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # ------------------------------------------------------------------ local slicing
    def _score_locally_sliced(
        self,
        paths: Mapping[str, str | os.PathLike[str]],
        case_id: str,
        run_gate: bool,
        deadline_s: float | None,
        alpha: float | None = None,
    ) -> RemoteScore:
        from dqe.models.case import Case  # lazy: decoding stack (nibabel, scipy) only where a case is decoded

        contract = self.contract()
        t0 = time.perf_counter()
        case = Case.from_files(**paths, case_id=case_id, contract=contract)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        views, com = build_views(case.images, case.labels, contract)
        t2 = time.perf_counter()
        if len({v.shape for v in views}) != 1:
            raise InvalidInput(
                f"views of grid {case.shape} differ in shape {[v.shape for v in views]}; send the files instead",
                field="views",
            )
        remote = self.score_views(np.stack(views), case_id=case_id, center_of_mass=com, deadline_s=deadline_s)
        result = remote.result
        result.warnings = list(case.warnings) + result.warnings
        result.timings_ms.update({"local_decode": (t1 - t0) * 1e3, "local_preprocess": (t2 - t1) * 1e3})
        if run_gate:
            try:
                from dqe.models.qc.explain import (  # lazy: NIfTI stack (scipy) loads only when a case is gated
                    gate_with_evidence,  # lazy: decoding stack (nibabel, scipy) only where a case is decoded
                )
            except ImportError as exc:
                result.warnings.append(f"QC gate is not installed here ({exc}); gate fields left empty")
            else:
                t3 = time.perf_counter()
                result.gate, _ = gate_with_evidence(case, result, with_alpha(alpha))
                result.timings_ms["local_gate"] = (time.perf_counter() - t3) * 1e3
        return remote
