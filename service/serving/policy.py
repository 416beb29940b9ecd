"""The method-policy table: what each RPC of the server gets (admission, body budget, deadline, auth), declared once.

Every method the server registers must have an entry in :data:`METHODS`; :func:`check_table` runs when the server
is built and refuses to start when one is missing, so a new RPC can never run without admission because of its
name. Adding an RPC is one entry here (plus its servicer method): the client-streaming ``ScoreStudy`` (DICOM
instances) was added as ``MethodPolicy(scoring=True, queue="decodes", lenient_stream=True)``.

Fields name the :class:`dqe.service.serving.runtime.Runtime` slots a call takes; the servicer still releases a
``ScoreCase``'s decode and receiving slots as soon as its decoding is over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

QE = "dqe.v1.QualityEstimation"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


@dataclass(frozen=True)
class MethodPolicy:
    """How the server admits and runs calls to one method.

    Attributes:
        auth: the call must carry the bearer token (when the server has one).
        control: answered on the control pool, never behind scoring calls (health, model info).
        scoring: holds one of the ``max_scoring_calls`` handler-thread slots from arrival to end.
        queue: the :class:`Runtime` slots taken when the call arrives, before its request is read
            (``"decodes"``, ``"streams"``); full = RESOURCE_EXHAUSTED at once, the request never read.
        turn: the :class:`Runtime` slots an admitted unary call waits for before its request is read
            (``"receiving"``, ``"receiving_views"``), leased for ``receive_lease_s``; the body budget.
        turn_stage: what the call waits for, for the deadline message.
        predict_wait: refuse at once when the decoding queued ahead would outlast the call's deadline.
        lenient_stream: stream items that do not parse reach the servicer as ``Undecodable`` (answered per item).
        in_flight: counted in the in-flight gauge (long-lived health watches are not).
    """

    auth: bool = True
    control: bool = False
    scoring: bool = False
    queue: str | None = None
    turn: str | None = None
    turn_stage: str = "its request was received"
    predict_wait: bool = False
    lenient_stream: bool = False
    in_flight: bool = True


METHODS: Mapping[str, MethodPolicy] = {
    f"/{QE}/ScoreCase": MethodPolicy(
        scoring=True,
        queue="decodes",
        turn="receiving",
        turn_stage="its request was received (the server is busy decoding)",
        predict_wait=True,
    ),
    f"/{QE}/ScoreViews": MethodPolicy(scoring=True, turn="receiving_views"),
    f"/{QE}/ScoreBatch": MethodPolicy(scoring=True, queue="streams", lenient_stream=True),
    # A DICOM study's instances (client stream): a decode slot on arrival, like ScoreCase; the received bytes
    # count against max_pending_mb in the servicer; an instance that does not parse ends the call with
    # INVALID_ARGUMENT (the servicer reads Undecodable items).
    f"/{QE}/ScoreStudy": MethodPolicy(scoring=True, queue="decodes", lenient_stream=True),
    f"/{QE}/GetModelInfo": MethodPolicy(control=True),
    f"/{HEALTH}/Check": MethodPolicy(auth=False, control=True),
    f"/{HEALTH}/List": MethodPolicy(auth=False, control=True),
    f"/{HEALTH}/Watch": MethodPolicy(auth=False, in_flight=False),
    f"/{REFLECTION}/ServerReflectionInfo": MethodPolicy(),
}

# What a method missing from the table gets at run time (check_table keeps our own services out of this case):
# the token, no control pool, and no admission.
UNLISTED = MethodPolicy()


class MissingPolicy(RuntimeError):
    """A registered RPC has no entry in the method-policy table (a programming error, found at start-up)."""


def policy_for(method: str, table: Mapping[str, MethodPolicy] = METHODS) -> MethodPolicy:
    """The policy of ``method`` (``/package.Service/Method``)."""
    return table.get(method, UNLISTED)


def check_table(methods: Iterable[str], table: Mapping[str, MethodPolicy] = METHODS) -> None:
    """Refuse to start when a registered method has no policy, or a policy names slots that do not exist.

    Args:
        methods: full method names (``/package.Service/Method``) the server registers.

    Raises:
        MissingPolicy: the first method without an entry, or an entry naming unknown slots.
    """
    missing = sorted(set(methods) - set(table))
    if missing:
        raise MissingPolicy(
            f"RPC {missing[0]} has no entry in dqe.service.serving.policy.METHODS (admission, auth and budgets "
            "are declared there); add one"
        )
    slots = {"decodes", "streams", "receiving", "receiving_views"}
    for method, policy in table.items():
        for name in (policy.queue, policy.turn):
            if name is not None and name not in slots:
                raise MissingPolicy(
                    f"{method}: its policy names slots {name!r}; expected one of {sorted(slots)}"
                )


def service_methods(descriptor: object) -> list[str]:
    """Full method names of a protobuf ``ServiceDescriptor``."""
    return [f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods]  # type: ignore[attr-defined]
