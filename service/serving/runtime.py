"""What a call needs from the running server: the loaded engine and batcher, and the call's deadline."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from dqe.models.errors import CallCancelled, DeadlineExpired, ModelNotReady
from dqe.service.serving.batcher import DynamicBatcher
from dqe.service.serving.paths import PathPolicy
from dqe.service.settings import ServerConfig

if TYPE_CHECKING:
    import grpc

    from dqe.service.engine import Engine

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Runtime:
    """What the servicer needs; the engine and batcher appear once the model is loaded and warm."""

    config: ServerConfig
    decode_pool: ThreadPoolExecutor
    paths: PathPolicy
    engine: Engine | None = None
    batcher: DynamicBatcher | None = None

    def ready(self) -> tuple[Engine, DynamicBatcher]:
        """The engine and batcher.

        Raises:
            ModelNotReady: still loading or warming up (clients should retry).
        """
        if self.engine is None or self.batcher is None:
            raise ModelNotReady("the model is loading or warming up; retry shortly", field="server")
        return self.engine, self.batcher


# gRPC reports "no deadline" as a huge time_remaining() (about 9.2e18 s, gpr_inf_future); anything beyond a
# year is treated as none, so it can never overflow a timeout downstream.
NO_DEADLINE_S = 365 * 24 * 3600.0


class CallInfo:
    """Deadline and liveness of the call being served.

    Args:
        context: the call (``None`` for in-process use: no deadline, always active).
        max_call_s: the server's own limit on one call's processing time (0 = none). A call without a
            deadline (most generated stubs and generic clients send none) runs "as long as it takes", up to
            this limit; a call with a deadline keeps the earlier of the two.
    """

    def __init__(self, context: grpc.ServicerContext | None, max_call_s: float = 0.0) -> None:
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining > NO_DEADLINE_S:
            remaining = None
        if max_call_s > 0:
            remaining = max_call_s if remaining is None else min(remaining, max_call_s)
        self.deadline = time.monotonic() + remaining if remaining is not None else None
        self._context = context

    def is_active(self) -> bool:
        return self._context is None or bool(self._context.is_active())

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, stage: str) -> None:
        """Raise if the deadline already passed or the caller left (work for it is dropped)."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExpired(
                f"the call's deadline passed before {stage}; work dropped", field="deadline"
            )
        if not self.is_active():
            raise CallCancelled(f"the caller went away before {stage}; work dropped")

    def wait(self, future: Future[T], stage: str) -> T:
        """``future.result()`` within the deadline (the future is cancelled when it runs out)."""
        try:
            return future.result(timeout=self.remaining())
        except FutureTimeout:
            future.cancel()
            raise DeadlineExpired(f"the call's deadline passed during {stage}", field="deadline") from None
