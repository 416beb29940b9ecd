"""The decode buffer pool (issue 21): buffers are reused only once nothing refers to them, stay within their
limit, leave when idle, and decoding through the pool gives the same volumes as fresh buffers."""

from __future__ import annotations

import gc

import numpy as np

from dqe.models.buffers import BufferPool
from dqe.models.nifti import DecodeLimits, decode_nifti
from tests.grpc_support import nifti_bytes


def test_a_buffer_is_reused_only_when_nothing_refers_to_it() -> None:
    pool = BufferPool(10_000_000)
    a = pool.take(1000)
    b = pool.take(1000)
    assert a.base is not b.base
    base = id(a.base)  # an id, not the buffer: a reference to it would keep it busy
    held = np.ndarray((10, 10), dtype=np.uint8, buffer=a)  # an array built on the handed-out view
    del a
    c = pool.take(900)
    assert id(c.base) != base, "a buffer still used by an array was handed out again"
    c_base = id(c.base)
    del held, c
    d = pool.take(1000)  # only the first buffer is free and large enough now
    assert id(d.base) == base and c_base != base and pool.reused == 1
    view = memoryview(d)[:4]
    del d
    assert id(pool.take(1000).base) != base, "a buffer still used by a memoryview was handed out again"
    del view


def test_the_pool_stays_within_its_limit_and_drops_idle_buffers() -> None:
    pool = BufferPool(3000, idle_s=60.0)
    a, b, c = pool.take(1000), pool.take(1000), pool.take(1000)
    d = pool.take(1000)  # every pooled buffer busy and no room: a fresh one, not pooled
    assert pool.pooled_bytes == 3000 and pool.unpooled == 1 and d.base is None
    too_big = pool.take(5000)
    assert too_big.nbytes == 5000 and pool.pooled_bytes == 3000
    del a, b, c
    gc.collect()
    big = pool.take(2500)  # room made by dropping free buffers (the least recently used first)
    assert big.base is not None and pool.pooled_bytes <= 3000
    del big
    assert pool.trim(idle_s=0.0) > 0 and pool.pooled_bytes == 0


def test_a_small_request_does_not_take_a_much_larger_buffer() -> None:
    pool = BufferPool(1_000_000)
    large = pool.take(100_000)
    large_base = id(large.base)
    del large
    small = pool.take(1000)
    assert id(small.base) != large_base and pool.allocated == 2


def test_decoding_through_the_pool_matches_fresh_buffers() -> None:
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=(20, 18, 9)).astype(dt) for dt in (np.float32, np.float64, np.int16)]
    pool = BufferPool(50_000_000)
    volumes = []
    for _round in range(2):  # the second round reuses buffers the first round's volumes no longer hold
        for array in arrays:
            raw = nifti_bytes(array)
            fresh = decode_nifti(raw, "t1", limits=DecodeLimits(pool=BufferPool(0)))
            pooled = decode_nifti(raw, "t1", limits=DecodeLimits(pool=pool))
            np.testing.assert_array_equal(pooled.values(), fresh.values())
            np.testing.assert_array_equal(pooled.values(), array)
            volumes.append(pooled)
        for vol, array in zip(volumes, arrays, strict=True):  # live volumes are never overwritten
            np.testing.assert_array_equal(vol.values(), array)
        del vol, pooled
        volumes.clear()
    assert pool.reused >= len(arrays)
