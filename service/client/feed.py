"""Resumable ``ScoreBatch`` input: items are held until answered, so a broken stream is resumed on another replica with only the unanswered ones."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

from dqe.service._proto import quality_estimation_pb2 as pb

logger = logging.getLogger(__name__)


class BatchFeed:
    """The items of one ``score_batch`` call, shared by the streams (attempts) that carry them.

    Items are pulled lazily from the caller's iterable and kept only until answered, so memory holds the items
    in flight (bounded by the server's window and HTTP/2 flow control), not the whole batch. A new attempt first
    replays the unanswered items, then continues with the iterable; the previous attempt's request generator
    stops pulling from the iterable once a new attempt has started, so no item is pulled by a dead stream
    after the replay list was taken (which would lose it).
    """

    def __init__(self, requests: Iterable[pb.ScoreCaseRequest | pb.ScoreViewsRequest]) -> None:
        self._source = iter(requests)
        self._pull_lock = threading.Lock()  # held while pulling from the caller's iterable
        self._lock = threading.Lock()  # guards pending / answered
        self._attempt = 0
        self._next_index = 0
        self.exhausted = False
        self.source_error: BaseException | None = None
        self.pending: dict[int, pb.ScoreBatchRequest] = {}  # original index -> sent, not yet answered
        self.answered: set[int] = set()

    @staticmethod
    def _wrap(item: pb.ScoreCaseRequest | pb.ScoreViewsRequest) -> pb.ScoreBatchRequest:
        if isinstance(item, pb.ScoreViewsRequest):
            return pb.ScoreBatchRequest(views=item)
        return pb.ScoreBatchRequest(case=item)

    def done(self) -> bool:
        with self._lock:
            return self.exhausted and not self.pending

    def new_attempt(self) -> tuple[Iterator[pb.ScoreBatchRequest], list[int]]:
        """The request messages of a new stream and its index map (stream position -> original index)."""
        with self._pull_lock, self._lock:
            self._attempt += 1
            replay = sorted(self.pending.items())
        order: list[int] = []
        return self._messages(self._attempt, replay, order), order

    def _messages(
        self, attempt: int, replay: list[tuple[int, pb.ScoreBatchRequest]], order: list[int]
    ) -> Iterator[pb.ScoreBatchRequest]:
        for index, msg in replay:
            order.append(index)
            yield msg
        while True:
            with self._pull_lock:
                if attempt != self._attempt or self.exhausted:
                    return
                try:
                    item = next(self._source)
                except StopIteration:
                    self.exhausted = True
                    return
                except BaseException as exc:  # the caller's iterable failed: end the stream, report it
                    self.source_error = exc
                    self.exhausted = True
                    raise
                msg = self._wrap(item)
                with self._lock:
                    index = self._next_index
                    self._next_index += 1
                    self.pending[index] = msg
                order.append(index)
            yield msg

    def answer(self, index: int) -> bool:
        """Mark ``index`` answered; False if it already was (a duplicate, which is dropped)."""
        with self._lock:
            if index in self.answered:
                return False
            self.answered.add(index)
            self.pending.pop(index, None)
            return True
