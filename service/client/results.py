"""``RemoteScore``: a server's answer, the same ``ScoreResult`` in-process scoring returns plus how it ran."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from dqe.models.result import ScoreResult
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service.wire import result_from_proto

logger = logging.getLogger(__name__)


@dataclass
class RemoteScore:
    """A server's answer: the same :class:`ScoreResult` in-process scoring returns, plus how it ran."""

    result: ScoreResult
    runtime: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""

    @property
    def mean_stars(self) -> float:
        return self.result.mean_stars

    @property
    def views(self) -> dict[str, float]:
        return self.result.views

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``dqe score`` prints locally (``engine`` = the server's backend)."""
        out = self.result.to_dict()
        out["engine"] = dict(self.runtime)
        return out

    @classmethod
    def from_proto(cls, msg: pb.ScoreResponse) -> RemoteScore:
        result, runtime = result_from_proto(msg)
        return cls(result=result, runtime=runtime, request_id=msg.request_id)
