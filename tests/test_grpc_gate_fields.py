"""The gate's new wire fields (issue 18): per-region results, p-values, alpha, combination, predicted Dice,
evidence slices, consensus Dice, calibration; ``ScoreOptions.alpha``. Old clients keep working.

A real server on 127.0.0.1:0 serves the real model. The conformal values (alpha echo, p-values, predicted
Dice, calibration) come from the gate configuration built in the development branch of the gate; here a thin
wrapper around the server's gate fills them with synthetic values so that every field is exercised, while
the per-region results and evidence slices are the real ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dqe.models.qc.types import Check, EvidenceSlice, GateResult, PredictedDice, RegionResult, Verdict
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from dqe.service.wire import gate_from_proto, gate_to_proto
from tests.grpc_support import read_bytes, rpc_code, running_server, write_phantom
from tests.test_grpc_conformance import JsonClient, case_json

CALIBRATION = {
    "size": 39,
    "min_alpha": 0.025,
    "sites": ["CBICA", "TCGA"],
    "description": "synthetic",
    "loso": True,
}


def _synthetic_gate() -> GateResult:
    checks = [
        Check(
            "boundary_fit_wt",
            0.4,
            0.2,
            False,
            "review",
            "moved copy fits better",
            "mm",
            "wt",
            "boundary_fit",
            0.01,
        ),
        Check("stars", 4.2, 3.0, True, "review", "stars fine", "stars"),
    ]
    region = RegionResult(
        "wt",
        Verdict.REVIEW,
        0.02,
        checks[:1],
        PredictedDice("wt", 0.81, 0.7, 0.9, 0.9),
        [EvidenceSlice("axial", 60, 3.5), EvidenceSlice("coronal", 120, 1.25)],
        0.77,
    )
    return GateResult(
        Verdict.REVIEW,
        0.5,
        ["review: boundary_fit_wt: moved copy fits better"],
        checks,
        3.0,
        12.5,
        alpha=0.05,
        p_value=0.02,
        combination="bonferroni",
        regions=[region, RegionResult("tc", Verdict.PASS)],
        calibration=CALIBRATION,
    )


def test_wire_round_trip_keeps_every_new_field() -> None:
    gate = _synthetic_gate()
    back = gate_from_proto(pb.QCGate.FromString(gate_to_proto(gate).SerializeToString()))
    assert back == gate
    # unset stays unset: no p-value, no consensus, no predicted Dice, no alpha
    plain = GateResult(Verdict.PASS, 0.9, [], [Check("x", 1.0, 0.0, True, "info", "m")], 3.0)
    msg = gate_to_proto(plain)
    assert not msg.HasField("alpha") and not msg.HasField("p_value") and not msg.checks[0].HasField("p_value")
    assert gate_from_proto(msg) == plain


def _old_schema_response_class() -> Any:
    """``ScoreResponse`` as a client built from the proto before issue 18 sees it: the new fields and
    messages removed from the descriptor (same field numbers for everything that existed)."""
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    new_fields = {
        "QCCheck": {"region", "family", "p_value"},
        "QCGate": {"alpha", "p_value", "combination", "regions", "calibration"},
        "ScoreOptions": {"alpha"},
    }
    new_messages = {"PredictedDice", "EvidenceSlice", "QCRegion", "QCCalibration"}
    keep = [m for m in fdp.message_type if m.name not in new_messages]
    del fdp.message_type[:]
    fdp.message_type.extend(keep)
    for m in fdp.message_type:
        drop = new_fields.get(m.name, set())
        fields = [f for f in m.field if f.name not in drop]
        del m.field[:]
        m.field.extend(fields)
        if m.name in new_fields:  # their only oneofs are the synthetic ones of the new `optional` fields
            del m.oneof_decl[:]
    fdp.name = "old/" + fdp.name
    fdp.package = "old.dqe.v1"
    for m in fdp.message_type:
        for f in m.field:
            if f.type_name.startswith(".dqe.v1."):
                f.type_name = ".old" + f.type_name
    for s in fdp.service:
        for meth in s.method:
            meth.input_type = ".old" + meth.input_type
            meth.output_type = ".old" + meth.output_type
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("old.dqe.v1.ScoreResponse"))


def test_the_real_gates_calibration_reaches_the_wire_fields() -> None:
    """The gate's own calibration record (``n``, ``smallest_alpha``, ``source``) fills the typed fields, not
    only ``extra``: a client reads the smallest alpha it may ask for from ``QCCalibration.min_alpha``."""
    from dqe.models.qc.config import GateConfig
    from dqe.models.qc.gate import calibration_for

    cal = calibration_for(GateConfig())
    assert cal is not None
    gate = dataclasses.replace(_synthetic_gate(), calibration=cal.summary())
    msg = gate_to_proto(gate).calibration
    assert msg.size == cal.n and msg.min_alpha == pytest.approx(1.0 / (cal.n + 1))
    assert list(msg.sites) == list(cal.sites) and msg.description == cal.source


def test_old_client_parses_a_response_with_the_new_fields() -> None:
    old_cls = _old_schema_response_class()
    assert "regions" not in old_cls.DESCRIPTOR.fields_by_name["gate"].message_type.fields_by_name
    response = pb.ScoreResponse(case_id="c", mean_stars=4.5, gate=gate_to_proto(_synthetic_gate()))
    old = old_cls.FromString(response.SerializeToString())
    assert old.case_id == "c" and old.mean_stars == 4.5
    assert old.gate.verdict == pb.VERDICT_REVIEW and old.gate.gate_score == 0.5
    assert [c.name for c in old.gate.checks] == ["boundary_fit_wt", "stars"]
    assert old.gate.checks[0].severity == pb.SEVERITY_REVIEW and old.gate.checks[0].unit == "mm"
    assert list(old.gate.reasons) == ["review: boundary_fit_wt: moved copy fits better"]
    # an old client that re-sends what it got loses nothing: unknown fields are kept
    again = pb.ScoreResponse.FromString(old.SerializeToString())
    assert gate_from_proto(again.gate) == _synthetic_gate()


# ---------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def case_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_phantom(tmp_path_factory.mktemp("gatefields") / "GATE-0001", seed=12, shape=(240, 240, 155))


@pytest.fixture(scope="module")
def server(engine: Any) -> Iterator[tuple[Any, list[float]]]:
    """A server with ``DQE_ALPHA`` = 0.2 whose gate echoes its configuration's alpha with synthetic
    conformal fields; the list collects the alpha of every gated call."""
    import dqe.service.serving.servicer as servicer

    real = servicer.gate_with_evidence
    seen: list[float] = []

    def gate(case, result, cfg=None, **kw):
        out, full = real(case, result, cfg, **kw)
        seen.append(cfg.alpha)
        checks = [dataclasses.replace(c, p_value=0.5) for c in out.checks]
        regions = [dataclasses.replace(r, consensus_dice=None) for r in out.regions]
        synthetic = dataclasses.replace(
            out,
            checks=checks,
            regions=regions,
            alpha=cfg.alpha,
            p_value=0.5,
            combination="bonferroni",
            calibration=CALIBRATION,
        )
        return synthetic, full

    mp = pytest.MonkeyPatch()
    mp.setattr(servicer, "gate_with_evidence", gate)
    try:
        with running_server(engine, alpha=0.2) as srv:
            yield srv, seen
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def channel(server: Any) -> Iterator[grpc.Channel]:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{server[0].port}", options=options) as ch:
        yield ch


def _request(paths: dict[str, Path], alpha: float | None = None) -> pb.ScoreCaseRequest:
    opts = pb.ScoreOptions(run_gate=True)
    if alpha is not None:
        opts.alpha = alpha
    return pb.ScoreCaseRequest(case_id="g", files=pb.NiftiFiles(**read_bytes(paths)), options=opts)


def test_score_case_returns_regions_evidence_and_alpha(channel, server, case_paths) -> None:
    stub = pb_grpc.QualityEstimationStub(channel)
    response = stub.ScoreCase(_request(case_paths, alpha=0.1))
    gate = response.gate
    assert [r.region for r in gate.regions] == ["wt", "tc", "et"]
    assert gate.HasField("alpha") and gate.alpha == pytest.approx(0.1) and server[1][-1] == pytest.approx(0.1)
    assert gate.combination == "bonferroni" and gate.p_value == 0.5
    assert gate.calibration.size == 39 and list(gate.calibration.sites) == ["CBICA", "TCGA"]
    assert json.loads(gate.calibration.extra["loso"]) is True
    assert all(c.HasField("p_value") for c in gate.checks)
    wt = gate.regions[0]
    assert wt.evidence_slices, "the real evidence map of the phantom has slices"
    assert {s.axis for s in wt.evidence_slices} <= {"axial", "coronal", "sagittal"}
    assert all(0 <= s.index < 240 and s.strength > 0 for s in wt.evidence_slices)
    assert not wt.HasField("consensus_dice")  # single case: no consensus


def test_unset_alpha_is_the_servers_default_and_bad_alpha_is_invalid(channel, server, case_paths) -> None:
    stub = pb_grpc.QualityEstimationStub(channel)
    response = stub.ScoreCase(_request(case_paths))
    assert response.gate.alpha == pytest.approx(0.2) and server[1][-1] == pytest.approx(0.2)
    for bad in (0.0, 1.0, 1.5, -0.1, 0.01):  # 0.01: below the shipped calibration's 1/(n+1)
        code, details, _ = rpc_code(lambda bad=bad: stub.ScoreCase(_request(case_paths, alpha=bad)))
        assert code == "INVALID_ARGUMENT" and "alpha" in details, (bad, details)


def test_sdk_results_carry_the_new_fields(server, case_paths) -> None:
    from dqe.service.client import DQEClient

    with DQEClient(f"127.0.0.1:{server[0].port}", deadline_s=120) as client:
        remote = client.score_files(**case_paths, run_gate=True, alpha=0.3)
    gate = remote.result.gate
    assert gate is not None and gate.alpha == pytest.approx(0.3)
    assert [r.region for r in gate.regions] == ["wt", "tc", "et"]
    assert gate.regions[0].evidence_slices and gate.calibration["size"] == 39
    as_dict = remote.to_dict()["gate"]
    assert as_dict["regions"][0]["evidence_slices"][0]["axis"] in ("axial", "coronal", "sagittal")


@pytest.mark.parametrize("camel", [True, False], ids=["lowerCamelCase", "proto_names"])
def test_json_via_reflection_sees_the_new_fields(channel, case_paths, camel: bool) -> None:
    body = case_json(case_paths, camel)
    body["options"] = {("runGate" if camel else "run_gate"): True, "alpha": 0.15}
    _, as_json = JsonClient(channel).unary("ScoreCase", body)
    gate = as_json["gate"]
    assert gate["alpha"] == pytest.approx(0.15)
    assert [r["region"] for r in gate["regions"]] == ["wt", "tc", "et"]
    assert gate["regions"][0]["evidenceSlices"][0]["axis"] in ("axial", "coronal", "sagittal")


def test_score_batch_items_carry_regions_and_item_errors_for_bad_alpha(channel, case_paths) -> None:
    stub = pb_grpc.QualityEstimationStub(channel)
    items = [
        pb.ScoreBatchRequest(case=_request(case_paths, alpha=0.25)),
        pb.ScoreBatchRequest(case=_request(case_paths, alpha=2.0)),
    ]
    answers = {a.index: a for a in stub.ScoreBatch(iter(items))}
    assert sorted(answers) == [0, 1]
    ok = answers[0].result.gate
    assert ok.alpha == pytest.approx(0.25) and [r.region for r in ok.regions] == ["wt", "tc", "et"]
    assert answers[1].WhichOneof("outcome") == "error"
    assert answers[1].error.code == "INVALID_ARGUMENT" and answers[1].error.field == "alpha"
