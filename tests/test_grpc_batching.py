"""The dynamic batcher on its own: batches across submitters, bounds, deadlines, shapes, failures, drain."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dqe.models.errors import InvalidInput, ModelNotReady, Overloaded
from dqe.service.serving.batcher import DeadlineExpired, DynamicBatcher


class Recorder:
    """``run`` that returns the first pixel of each view (so results can be checked) and records batches."""

    def __init__(self, hold: threading.Event | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.hold = hold
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.hold is not None:
            self.hold.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.batches.append(int(batch.shape[0]))
        return batch[:, 0, 0, 0].copy()


def views(n: int, value: float, hw: int = 4) -> np.ndarray:
    out = np.zeros((n, 2, hw, hw), dtype=np.float32)
    out[:, 0, 0, 0] = value + np.arange(n)
    return out


def test_concurrent_submits_share_batches_and_results_stay_with_their_request() -> None:
    hold = threading.Event()
    run = Recorder(hold)
    batcher = DynamicBatcher(run, max_batch_size=12, max_queue_delay_s=0.05, max_queue=100)
    try:
        first = batcher.submit(views(3, 0.0))  # occupies the runner while the rest queue up
        time.sleep(0.1)
        futures = [batcher.submit(views(3, 100.0 * (i + 1))) for i in range(8)]
        hold.set()
        assert list(first.result(5).stars) == [0.0, 1.0, 2.0]
        for i, f in enumerate(futures):
            out = f.result(5)
            np.testing.assert_array_equal(out.stars, 100.0 * (i + 1) + np.arange(3))
            assert out.batch_size <= 12
    finally:
        batcher.close(5)
    assert run.batches[0] == 3
    assert max(run.batches[1:]) == 12, run.batches  # the queued requests were batched together, capped at 12
    assert sum(run.batches) == 27


def test_many_threads_results_identical_to_direct_calls() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=16, max_queue_delay_s=0.002, max_queue=1000, workers=2)
    try:
        with ThreadPoolExecutor(16) as pool:
            got = list(
                pool.map(lambda i: batcher.submit(views(3, float(i * 10))).result(10).stars, range(200))
            )
    finally:
        batcher.close(5)
    for i, stars in enumerate(got):
        np.testing.assert_array_equal(stars, float(i * 10) + np.arange(3))
    assert sum(run.batches) == 600
    assert batcher.stats.max_batch_seen <= 16


def test_views_of_different_shapes_never_share_a_batch() -> None:
    shapes: list[tuple[int, ...]] = []

    def run(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return np.zeros(batch.shape[0], dtype=np.float32)

    batcher = DynamicBatcher(run, max_batch_size=32, max_queue_delay_s=0.05)
    try:
        futures = [batcher.submit(views(2, 0.0, hw=4 + (i % 2))) for i in range(6)]
        for f in futures:
            f.result(5)
    finally:
        batcher.close(5)
    assert {s[2:] for s in shapes} == {(4, 4), (5, 5)}
    assert sum(s[0] for s in shapes) == 12


def test_full_queue_raises_overloaded() -> None:
    hold = threading.Event()
    batcher = DynamicBatcher(Recorder(hold), max_batch_size=3, max_queue_delay_s=0.0, max_queue=6)
    try:
        running = batcher.submit(views(3, 0.0))
        time.sleep(0.1)  # the first request is running (held); the next two fill the queue
        queued = [batcher.submit(views(3, 1.0)), batcher.submit(views(3, 2.0))]
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit(views(3, 3.0))
        assert batcher.stats.rejected_full == 1
        hold.set()
        for f in [running, *queued]:
            f.result(5)
    finally:
        hold.set()
        batcher.close(5)


def test_expired_work_is_dropped_not_run() -> None:
    hold = threading.Event()
    run = Recorder(hold)
    dropped: list[str] = []
    batcher = DynamicBatcher(run, max_batch_size=3, max_queue_delay_s=0.0, on_drop=dropped.append)
    try:
        busy = batcher.submit(views(3, 0.0))
        time.sleep(0.1)
        expired = batcher.submit(views(3, 5.0), deadline=time.monotonic() + 0.05)
        gone = batcher.submit(views(3, 7.0), is_active=lambda: False)
        time.sleep(0.15)
        hold.set()
        busy.result(5)
        with pytest.raises(DeadlineExpired):
            expired.result(5)
        with pytest.raises(Exception, match="went away"):
            gone.result(5)
    finally:
        hold.set()
        batcher.close(5)
    assert run.batches == [3]  # neither dropped request reached the model
    assert sorted(dropped) == ["cancelled", "deadline"]


def test_run_failure_reaches_every_request_of_the_batch_and_batcher_survives() -> None:
    calls = {"n": 0}

    def run(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("backend exploded")
        return np.ones(batch.shape[0], dtype=np.float32)

    batcher = DynamicBatcher(run, max_batch_size=8, max_queue_delay_s=0.05)
    try:
        bad = [batcher.submit(views(2, 0.0)) for _ in range(2)]
        for f in bad:
            with pytest.raises(RuntimeError, match="exploded"):
                f.result(5)
        assert list(batcher.submit(views(2, 0.0)).result(5).stars) == [1.0, 1.0]
    finally:
        batcher.close(5)


def test_close_drains_queued_work_then_refuses() -> None:
    run = Recorder(delay_s=0.05)
    batcher = DynamicBatcher(run, max_batch_size=3, max_queue_delay_s=0.0)
    futures = [batcher.submit(views(3, float(i))) for i in range(4)]
    batcher.close(5)
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(ModelNotReady, match="shutting down"):
        batcher.submit(views(3, 0.0))


def test_submit_validates_input() -> None:
    batcher = DynamicBatcher(Recorder())
    try:
        with pytest.raises(InvalidInput, match="float32"):
            batcher.submit(np.zeros((3, 2, 4, 4), dtype=np.float64))
        with pytest.raises(InvalidInput):
            batcher.submit(np.zeros((0, 2, 4, 4), dtype=np.float32))
    finally:
        batcher.close(5)
