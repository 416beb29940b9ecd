"""Any gRPC client works: the four RPCs as other languages' stubs and generic tools (grpcurl) call them.

A real server on 127.0.0.1:0 serves the real model. Every call here sets **no deadline and no metadata**
(the default of a plain generated stub). Requests are built two ways:

* raw generated stubs (``dqe.service._proto``), no SDK;
* JSON through protobuf's JSON mapping (``json_format.Parse``) into message classes built from the
  descriptors the server returns by reflection, as reflection-based tools do: lowerCamelCase and original
  proto field names, ``bytes`` as standard base64, ``int64`` as JSON strings, enums by name or number.

Scores must equal in-process scoring (``engine.score_case`` / ``engine.score_views``) exactly.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory

from dqe.models.case import Case
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from tests.conftest import real_cases
from tests.grpc_support import read_bytes, running_server, write_phantom

SERVICE = "dqe.v1.QualityEstimation"
FILE_FIELDS = ("t1c", "t1", "t2", "flair", "segmentation")


@pytest.fixture(scope="module")
def case_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A full-grid phantom case (240x240x155, BraTS 2023 names), as NiftiFiles field -> path."""
    return write_phantom(tmp_path_factory.mktemp("conf") / "CONF-0001", seed=11, shape=(240, 240, 155))


@pytest.fixture(scope="module")
def server(engine: Any) -> Iterator[Any]:
    with running_server(engine) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server: Any) -> Iterator[grpc.Channel]:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def local(engine: Any, case_paths: dict[str, Path]) -> Any:
    return engine.score_case(Case.from_files(**case_paths))


@pytest.fixture(scope="module")
def local_views(engine: Any, case_paths: dict[str, Path]) -> tuple[np.ndarray, tuple[int, int, int]]:
    views, com = engine.preprocess(Case.from_files(**case_paths))
    return np.stack(views).astype(np.float32), com


def assert_same(response: Any, expected: Any) -> None:
    """A ScoreResponse (generated or dynamic class) carries exactly the in-process stars."""
    assert response.mean_stars == expected.mean_stars
    assert {v.view: v.stars for v in response.views} == expected.views
    assert list(response.views) and [v.view for v in response.views] == list(expected.views)


# ---------------------------------------------------------------------------------------------- raw stubs
def test_score_case_raw_stub_no_deadline_no_metadata(channel, case_paths, local) -> None:
    stub = pb_grpc.QualityEstimationStub(channel)
    request = pb.ScoreCaseRequest(case_id="conf", files=pb.NiftiFiles(**read_bytes(case_paths)))
    response = stub.ScoreCase(request)
    assert_same(response, local)
    assert (response.center_of_mass.x, response.center_of_mass.y, response.center_of_mass.z) == tuple(
        local.center_of_mass
    )
    assert response.case_id == "conf"
    assert response.request_id  # the server made one up: no x-request-id metadata was sent


def test_score_views_raw_stub_no_deadline(channel, engine, local_views) -> None:
    views, com = local_views
    tensor = pb.Tensor(data=views.tobytes(), shape=list(views.shape), dtype=pb.DTYPE_FLOAT32)
    response = pb_grpc.QualityEstimationStub(channel).ScoreViews(pb.ScoreViewsRequest(views=tensor))
    assert_same(response, engine.score_views(views))
    assert not response.HasField("center_of_mass")


def test_score_batch_raw_stub_no_deadline(channel, case_paths, engine, local, local_views) -> None:
    views, _ = local_views
    items = [
        pb.ScoreBatchRequest(case=pb.ScoreCaseRequest(case_id="a", files=pb.NiftiFiles(**read_bytes(case_paths)))),
        pb.ScoreBatchRequest(views=pb.ScoreViewsRequest(case_id="b", views=pb.Tensor(
            data=views.tobytes(), shape=list(views.shape), dtype=pb.DTYPE_FLOAT32))),
    ]  # fmt: skip
    answers = sorted(pb_grpc.QualityEstimationStub(channel).ScoreBatch(iter(items)), key=lambda r: r.index)
    assert [(a.index, a.case_id, a.WhichOneof("outcome")) for a in answers] == [
        (0, "a", "result"),
        (1, "b", "result"),
    ]
    assert_same(answers[0].result, local)
    assert_same(answers[1].result, engine.score_views(views))


def test_get_model_info_raw_stub_no_deadline(channel, engine) -> None:
    info = pb_grpc.QualityEstimationStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    text = json_format.MessageToJson(info)
    assert engine.model_sha256 in text
    assert engine.model_id in text


# ---------------------------------------------------------------------------------------------- reflection
def reflection_pool(channel: grpc.Channel) -> descriptor_pool.DescriptorPool:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


def test_reflection_lists_the_service_and_its_file(channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    listed = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert SERVICE in {s.name for s in listed.list_services_response.service}
    by_symbol = next(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)])
        )
    )
    protos = by_symbol.file_descriptor_response.file_descriptor_proto
    assert protos, by_symbol
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in protos]
    mine = [
        f for f in files if f.package == "dqe.v1" and any(s.name == "QualityEstimation" for s in f.service)
    ]
    assert len(mine) == 1, [f.name for f in files]
    by_name = next(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_by_filename=mine[0].name)])
        )
    )
    assert by_name.file_descriptor_response.file_descriptor_proto
    methods = {m.name for m in reflection_pool(channel).FindServiceByName(SERVICE).methods}
    assert methods == {"ScoreCase", "ScoreViews", "ScoreBatch", "GetModelInfo", "ScoreStudy"}


class JsonClient:
    """What grpcurl does: descriptors from reflection, requests from JSON, responses back to JSON."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.service = reflection_pool(channel).FindServiceByName(SERVICE)

    def _types(self, method: str) -> tuple[Any, Any]:
        m = self.service.methods_by_name[method]
        return message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type)

    def unary(self, method: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        req_cls, resp_cls = self._types(method)
        request = json_format.Parse(json.dumps(body), req_cls())
        call = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        response = call(request)  # no timeout, no metadata
        return response, json.loads(json_format.MessageToJson(response))

    def stream(self, method: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        req_cls, resp_cls = self._types(method)
        call = self.channel.stream_stream(
            f"/{SERVICE}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        requests = [json_format.Parse(json.dumps(b), req_cls()) for b in bodies]
        return [json.loads(json_format.MessageToJson(r)) for r in call(iter(requests))]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def case_json(paths: dict[str, Path], camel: bool) -> dict[str, Any]:
    files = {k: b64(v) for k, v in read_bytes(paths).items()}
    assert set(files) == set(FILE_FIELDS)
    return {("caseId" if camel else "case_id"): "json-case", "files": files, "options": {}}


def views_json(views: np.ndarray, com: tuple[int, int, int] | None, camel: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        ("caseId" if camel else "case_id"): "json-views",
        # int64 as JSON strings (what proto3 JSON emits), enum by name (camel) or by number (original)
        "views": {
            "data": b64(views.tobytes()),
            "shape": [str(n) for n in views.shape],
            "dtype": "DTYPE_FLOAT32" if camel else 1,
        },
    }
    if com is not None:
        body["centerOfMass" if camel else "center_of_mass"] = dict(zip("xyz", com, strict=True))
    return body


@pytest.mark.parametrize("camel", [True, False], ids=["lowerCamelCase", "proto_names"])
def test_score_case_from_json(channel, case_paths, local, camel: bool) -> None:
    response, as_json = JsonClient(channel).unary("ScoreCase", case_json(case_paths, camel))
    assert_same(response, local)
    assert as_json["meanStars"] == local.mean_stars
    assert as_json["caseId"] == "json-case"


@pytest.mark.parametrize("camel", [True, False], ids=["lowerCamelCase", "proto_names"])
def test_score_views_from_json(channel, engine, local_views, camel: bool) -> None:
    views, com = local_views
    response, as_json = JsonClient(channel).unary("ScoreViews", views_json(views, com, camel))
    assert_same(response, engine.score_views(views))
    assert as_json["centerOfMass"] == dict(zip("xyz", com, strict=True))


@pytest.mark.parametrize("camel", [True, False], ids=["lowerCamelCase", "proto_names"])
def test_score_batch_from_json(channel, case_paths, engine, local, local_views, camel: bool) -> None:
    views, _ = local_views
    answers = JsonClient(channel).stream(
        "ScoreBatch", [{"case": case_json(case_paths, camel)}, {"views": views_json(views, None, camel)}]
    )
    by_index = {int(a.get("index", 0)): a for a in answers}  # uint64 0 is omitted, others are strings
    assert sorted(by_index) == [0, 1]
    assert by_index[0]["result"]["meanStars"] == local.mean_stars
    assert by_index[1]["result"]["meanStars"] == engine.score_views(views).mean_stars


def test_get_model_info_from_json(channel, engine) -> None:
    _, as_json = JsonClient(channel).unary("GetModelInfo", {})
    assert engine.model_sha256 in json.dumps(as_json)


def test_unknown_json_field_is_rejected_client_side(channel) -> None:
    """A typo in a JSON request fails in the JSON mapping (as grpcurl reports it), never on the server."""
    with pytest.raises(json_format.ParseError, match="caseID"):
        JsonClient(channel).unary("ScoreCase", {"caseID": "typo"})


@pytest.mark.real_data
@pytest.mark.slow
def test_real_case_raw_stub_and_json_equal_in_process(channel, engine) -> None:
    name, paths = real_cases()[0]
    expected = engine.score_case(Case.from_files(**paths))
    raw = pb_grpc.QualityEstimationStub(channel).ScoreCase(
        pb.ScoreCaseRequest(case_id=name, files=pb.NiftiFiles(**read_bytes(paths)))
    )
    assert_same(raw, expected)
    response, _ = JsonClient(channel).unary("ScoreCase", case_json(paths, camel=True))
    assert_same(response, expected)
