"""A bounded pool of decode buffers reused across requests, so decoding does not pay for fresh memory.

Every inflated NIfTI file needs one buffer of exactly the size its header declares (17.9 MB for an int16
240 x 240 x 155 volume, 71 MB for float64). Fresh buffers of that size are page-faulted in on first touch, and
numpy madvises allocations of 4 MiB and more to transparent huge pages, so a fresh buffer can stall in the kernel's
direct compaction: measured in issue 21, ``Case.from_files`` on a float case 110 ms median but 0.9-1.3 s in one
call of six. A buffer taken from this pool was touched before.

A buffer is free again when nothing but the pool refers to it: the arrays handed out are views of it, so the
volumes, cases and slices built on them keep it busy for as long as they live, with no explicit release (and no
way to hand out memory still in use). The pool holds at most ``limit_bytes`` in all; beyond that it drops free
buffers, and when every buffer is busy it hands out a fresh, unpooled one.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

# A free buffer up to this many times larger than asked for is reused (instead of allocating the exact size).
MAX_WASTE_FACTOR = 2
# References to a free buffer seen by _is_free: the pool's list, the caller's loop variable, the parameter and
# getrefcount's own argument. Any array, volume or memoryview built on a handed-out view adds one.
_FREE_REFS = 4


class BufferPool:
    """Reusable ``uint8`` buffers, at most ``limit_bytes`` pooled in all.

    Args:
        limit_bytes: most bytes the pool keeps (busy and free buffers together); 0 disables pooling.
        idle_s: :meth:`trim` drops free buffers unused for this many seconds.
    """

    def __init__(self, limit_bytes: int, idle_s: float = 30.0) -> None:
        self.limit = int(limit_bytes)
        self.idle_s = idle_s
        self._buffers: list[np.ndarray] = []
        self._last_used: dict[int, float] = {}
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0
        self.unpooled = 0

    @property
    def pooled_bytes(self) -> int:
        return sum(b.nbytes for b in self._buffers)

    def take(self, nbytes: int) -> np.ndarray:
        """A ``uint8`` array of ``nbytes`` (contents undefined), a view of a pooled buffer when one is free or
        the pool has room, else a fresh array."""
        with self._lock:
            self._trim_locked(time.monotonic())
            fitting = [
                b for b in self._free_locked() if nbytes <= b.nbytes <= MAX_WASTE_FACTOR * max(nbytes, 1)
            ]
            best = min(fitting, key=lambda b: b.nbytes, default=None)
            del fitting
            if best is None:
                best = self._allocate_locked(nbytes)
                if best is None:
                    self.unpooled += 1
                    return np.empty(nbytes, dtype=np.uint8)
            else:
                self.reused += 1
            self._last_used[id(best)] = time.monotonic()
            return best[:nbytes]

    def _allocate_locked(self, nbytes: int) -> np.ndarray | None:
        if nbytes > self.limit:
            return None
        free = sorted(self._free_locked(), key=lambda b: self._last_used[id(b)])
        while self.pooled_bytes + nbytes > self.limit and free:
            self._drop_locked(free.pop(0))
        if self.pooled_bytes + nbytes > self.limit:
            return None
        buf = np.empty(nbytes, dtype=np.uint8)
        self._buffers.append(buf)
        self.allocated += 1
        return buf

    def trim(self, idle_s: float | None = None) -> int:
        """Drop the free buffers unused for ``idle_s`` seconds (default: the pool's); returns bytes dropped."""
        with self._lock:
            return self._trim_locked(time.monotonic(), self.idle_s if idle_s is None else idle_s)

    def _trim_locked(self, now: float, idle_s: float | None = None) -> int:
        idle = self.idle_s if idle_s is None else idle_s
        stale = [b for b in self._free_locked() if now - self._last_used.get(id(b), now) >= idle]
        for buf in stale:
            self._drop_locked(buf)
        return sum(b.nbytes for b in stale)

    def _free_locked(self) -> list[np.ndarray]:
        """The pooled buffers nothing else refers to (see :func:`_is_free`; counted from this frame's loop)."""
        free = []
        for buf in self._buffers:
            if _is_free(buf):
                free.append(buf)
        return free

    def _drop_locked(self, buf: np.ndarray) -> None:
        self._last_used.pop(id(buf), None)
        self._buffers = [b for b in self._buffers if b is not buf]


def _is_free(buf: np.ndarray) -> bool:
    """Whether only the pool refers to ``buf`` (every view handed out holds a reference to it)."""
    return sys.getrefcount(buf) <= _FREE_REFS


DEFAULT_POOL = BufferPool(512 * 1024 * 1024)
"""The pool :func:`dqe.models.nifti.decode_nifti` uses when its limits name none (in-process scoring)."""
