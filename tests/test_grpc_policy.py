"""Unit tests of the serving layer's admission primitives, the method-policy table and PathPolicy (issue 21),
without a server: slots and tickets, leases, decode budgets, the start-up check of the table, and path
confinement against symlinks and ``..``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from dqe.models.errors import (
    CallCancelled,
    DeadlineExpired,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
)
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service.serving.paths import PathPolicy
from dqe.service.serving.policy import (
    METHODS,
    UNLISTED,
    MethodPolicy,
    MissingPolicy,
    check_table,
    policy_for,
    service_methods,
)
from dqe.service.serving.runtime import CallInfo, DecodeBudget, Reservation, Slots


class _Context:
    """The two ServicerContext methods CallInfo reads."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining
        self.active = True

    def time_remaining(self) -> float | None:
        return self.remaining

    def is_active(self) -> bool:
        return self.active


# ---------------------------------------------------------------------------------------------- slots
def test_slots_refuse_beyond_the_limit_and_tickets_release_once() -> None:
    slots = Slots(2, "things", "max_things")
    a, b = slots.take(), slots.take()
    with pytest.raises(Overloaded, match="max_things"):
        slots.take()
    a.release()
    a.release()  # idempotent: a second release must not free a slot it does not hold
    assert slots.held == 1
    c = slots.take()
    with pytest.raises(Overloaded):
        slots.take()
    b.release()
    c.release()
    assert slots.held == 0


def test_a_waiting_taker_gets_the_slot_when_it_is_released() -> None:
    slots = Slots(1, "things", "max_things")
    first = slots.take()
    threading.Timer(0.2, first.release).start()
    t0 = time.monotonic()
    second = slots.take_waiting(CallInfo(_Context(5.0)), "its turn")
    assert 0.15 < time.monotonic() - t0 < 3 and slots.held == 1
    second.release()


def test_a_waiting_taker_stops_at_its_deadline_or_when_its_caller_leaves() -> None:
    slots = Slots(1, "things", "max_things")
    held = slots.take()
    with pytest.raises(DeadlineExpired):
        slots.take_waiting(CallInfo(_Context(0.3)), "its turn")
    context = _Context(10.0)
    threading.Timer(0.2, lambda: setattr(context, "active", False)).start()
    with pytest.raises(CallCancelled):
        slots.take_waiting(CallInfo(context), "its turn")
    held.release()
    assert slots.held == 0


def test_a_lease_not_kept_in_time_goes_to_the_next_caller() -> None:
    slots = Slots(1, "things", "max_things")
    stalled = slots.take_waiting(CallInfo(None), "its turn", lease_s=0.3)
    t0 = time.monotonic()
    nxt = slots.take_waiting(CallInfo(_Context(5.0)), "its turn", lease_s=0.3)
    assert 0.25 < time.monotonic() - t0 < 3
    nxt.keep()  # kept: no longer revocable
    stalled.release()  # the revoked ticket's release does not free the slot the next caller holds
    assert slots.held == 1
    with pytest.raises(DeadlineExpired):
        slots.take_waiting(CallInfo(_Context(0.5)), "its turn", lease_s=0.1)
    nxt.release()


def test_decode_budget_refuses_what_does_not_fit_and_what_never_can() -> None:
    budget = DecodeBudget(1000, "decoding", "decode_budget_mb")
    one, two = Reservation(budget), Reservation(budget)
    one.reserve(600)
    with pytest.raises(Overloaded, match="decode_budget_mb"):
        two.reserve(500)
    with pytest.raises(InvalidInput):
        two.reserve(1001)
    two.reserve(400)
    assert budget.used == 1000 and budget.peak == 1000
    one.release()
    one.release()
    assert budget.used == 400
    two.release()
    assert budget.used == 0


# ---------------------------------------------------------------------------------------------- policy table
def test_every_rpc_the_server_registers_has_a_policy() -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    services = (
        pb.DESCRIPTOR.services_by_name["QualityEstimation"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )
    check_table(m for s in services for m in service_methods(s))
    scoring = {m for m, p in METHODS.items() if p.scoring}
    assert scoring == {
        f"/dqe.v1.QualityEstimation/{n}" for n in ("ScoreCase", "ScoreViews", "ScoreBatch", "ScoreStudy")
    }
    assert not policy_for("/grpc.health.v1.Health/Check").auth
    assert policy_for("/dqe.v1.QualityEstimation/GetModelInfo").control
    assert not policy_for("/grpc.health.v1.Health/Watch").in_flight


def test_a_new_rpc_without_an_entry_fails_at_start_up_not_at_run_time() -> None:
    new = "/dqe.v1.QualityEstimation/ScoreSeries"  # a hypothetical RPC the table does not know
    with pytest.raises(MissingPolicy, match="ScoreSeries"):
        check_table([*METHODS, new])
    check_table([*METHODS, new], {**METHODS, new: MethodPolicy(scoring=True, queue="decodes")})
    with pytest.raises(MissingPolicy, match="slots"):
        check_table([new], {new: MethodPolicy(queue="decoders")})
    assert policy_for("/other.Service/Method") is UNLISTED and UNLISTED.auth


# ---------------------------------------------------------------------------------------------- PathPolicy
@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "case").mkdir(parents=True)
    outside.mkdir()
    (root / "case" / "a.nii.gz").write_bytes(b"inside")
    (outside / "secret.nii.gz").write_bytes(b"secret")
    return root, outside


def _read(policy: PathPolicy, path: str) -> bytes:
    fd = policy.open_file(path, "paths.t1")
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_path_policy_reads_inside_its_roots(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    policy = PathPolicy([root])
    assert _read(policy, str(root / "case" / "a.nii.gz")) == b"inside"
    assert _read(policy, "case/a.nii.gz") == b"inside"  # relative to the first root
    (root / "link.nii.gz").symlink_to("case/a.nii.gz")  # a symlink that stays inside
    assert _read(policy, str(root / "link.nii.gz")) == b"inside"


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda root, out: str(out / "secret.nii.gz"), PermissionDenied),
        (lambda root, out: f"{root}/case/../../outside/secret.nii.gz", PermissionDenied),
        (
            lambda root, out: (root / "esc").symlink_to(out / "secret.nii.gz") or str(root / "esc"),
            PermissionDenied,
        ),
        (
            lambda root, out: (root / "up").symlink_to("../outside") or str(root / "up/secret.nii.gz"),
            PermissionDenied,
        ),
        (lambda root, out: str(root / "case" / "missing.nii.gz"), NotFound),
        (lambda root, out: str(root / "case"), InvalidInput),  # a folder, not a regular file
        (lambda root, out: str(root / "a\x00b"), InvalidInput),
        (lambda root, out: (root / "loop").symlink_to("loop") or str(root / "loop"), InvalidInput),
    ],
)
def test_path_policy_refuses_what_leaves_its_roots_or_is_not_a_file(
    roots: tuple[Path, Path], make, error: type[Exception]
) -> None:
    root, outside = roots
    path = make(root, outside)
    with pytest.raises(error):
        _read(PathPolicy([root]), path)


def test_path_policy_disabled_without_roots(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    with pytest.raises(PermissionDenied, match="allowed-root"):
        _read(PathPolicy([]), str(root / "case" / "a.nii.gz"))
