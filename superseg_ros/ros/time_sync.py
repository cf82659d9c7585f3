"""Approximate time synchronisation of N message streams, in plain Python (no rclpy, no DDS).

A stand-in for message_filters.ApproximateTimeSynchronizer(fs, queue_size, slop,
allow_headerless=False) that is fed by hand instead of by subscribers, so it can be tested without
ROS and used where message_filters is not installed:

    sync = ApproximateTimeSync(num_inputs=2, queue_size=10, slop=0.05, callback=on_pair)
    image_sub callback:        sync.add(0, image_msg)           # stamp from msg.header.stamp
    camera_info_sub callback:  sync.add(1, info_msg)
    node diagnostics:          sync.dropped, sync.matched
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from typing import Any, Callable

_NS = 1_000_000_000


def stamp_to_ns(stamp) -> int:
    """A builtin_interfaces/Time-like object (sec, nanosec) or seconds (int/float) -> int ns."""
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return int(stamp.sec) * _NS + int(stamp.nanosec)
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        raise TypeError("stamp must be seconds or a Time (sec, nanosec), "
                        f"got {type(stamp).__name__}")
    if not math.isfinite(stamp):
        raise ValueError(f"stamp must be a finite number of seconds, got {stamp}")
    return round(stamp * _NS)


class ApproximateTimeSync:
    """Calls `callback(msg_0, ..., msg_{N-1})` with one message per input whose stamps lie within
    `slop` seconds of each other.

    Behaviour (that of message_filters' Python ApproximateTimeSynchronizer, except where noted):
    - Each input has a queue keyed by stamp (nanoseconds). A message with a stamp already queued on
      that input replaces the queued one. A queue longer than `queue_size` drops its oldest stamp.
    - A match is only searched for when a message arrives, and it must include that message: for
      every other input the queued stamps within `slop` of the new stamp are candidates, closest
      first; combinations are tried in that order (itertools.product, first input varying slowest)
      and the first whose max - min stamp difference is within `slop` is emitted.
    - Emitted messages leave their queues.
    Deliberate differences, both documented upstream behaviour that loses or misorders frames:
    - The slop test is inclusive (max - min <= slop); upstream's final test is strict, so slop=0
      never matched anything. Here slop=0 is an exact-time synchroniser.
    - After a match, every input also drops its queued messages older than the one it just
      emitted, and later arrivals on an input that are not newer than its last emitted stamp are
      dropped at once (message_filters' C++ policies do the same; the Python one keeps them until
      the queue overflows). So callbacks never go back in time, and a frame that lost its partner
      is discarded as soon as a newer set matches.
    - A message without header.stamp and without an explicit stamp raises ValueError unless
      allow_headerless=True (then `clock()` is its stamp); upstream logs a warning and drops it.
    Every discarded message (replaced, overflowed, purged or late) counts in `dropped` and
    `dropped_by_input`; `matched` counts emitted sets. Choose slop below half the frame period,
    or a frame may pair with its neighbour's partner.

    Thread-safe: queues are updated under a lock; the callback runs after the lock is released
    (so it may call add() again), in the thread whose add() completed the set.
    """

    def __init__(self, num_inputs: int, queue_size: int, slop: float,
                 callback: Callable[..., Any] | None = None, allow_headerless: bool = False,
                 clock: Callable[[], float] = time.time):
        if int(num_inputs) < 1:
            raise ValueError(f"num_inputs must be >= 1, got {num_inputs}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not slop >= 0:  # also rejects NaN
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        self.num_inputs = int(num_inputs)
        self.queue_size = int(queue_size)
        self.slop = float(slop)
        self.callback = callback
        self.allow_headerless = allow_headerless
        self.clock = clock
        self._slop_ns = round(self.slop * _NS)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Empty the queues and zero the counters (e.g. after a bag loops or time jumps back)."""
        with self._lock:
            self._queues: list[dict[int, Any]] = [{} for _ in range(self.num_inputs)]
            self._last_emitted: list[int | None] = [None] * self.num_inputs
            self.dropped_by_input = [0] * self.num_inputs
            self.matched = 0

    @property
    def dropped(self) -> int:
        """Messages discarded without being emitted, over all inputs."""
        return sum(self.dropped_by_input)

    def queued(self) -> list[int]:
        """How many messages wait on each input."""
        with self._lock:
            return [len(q) for q in self._queues]

    def add(self, index: int, msg: Any, stamp=None) -> tuple | None:
        """Queue `msg` on input `index`; returns the emitted set (after calling back) or None.

        `stamp`: seconds (float/int) or a Time-like (sec, nanosec); None reads msg.header.stamp.
        """
        if not 0 <= index < self.num_inputs:
            raise IndexError(f"input index {index} out of range 0..{self.num_inputs - 1}")
        t = self._stamp_ns(msg, stamp)
        with self._lock:
            emitted = self._add_locked(index, msg, t)
        if emitted is not None and self.callback is not None:
            self.callback(*emitted)
        return emitted

    def _stamp_ns(self, msg, stamp) -> int:
        if stamp is not None:
            return stamp_to_ns(stamp)
        header_stamp = getattr(getattr(msg, "header", None), "stamp", None)
        if header_stamp is not None:
            return stamp_to_ns(header_stamp)
        if self.allow_headerless:
            return stamp_to_ns(self.clock())
        raise ValueError(f"{type(msg).__name__} has no header.stamp; pass stamp= or construct "
                         "the synchroniser with allow_headerless=True")

    def _add_locked(self, index: int, msg, t: int) -> tuple | None:
        queue = self._queues[index]
        last = self._last_emitted[index]
        if last is not None and t <= last:
            self.dropped_by_input[index] += 1  # late: its set's time has passed
            return None
        if t in queue:
            self.dropped_by_input[index] += 1  # same stamp again: the newer message wins
        queue[t] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self.dropped_by_input[index] += 1
        if t not in queue:
            return None  # the new message was the oldest and overflowed at once

        candidates = []
        for i, other in enumerate(self._queues):
            if i == index:
                candidates.append([t])
                continue
            near = sorted((abs(s - t), s) for s in other if abs(s - t) <= self._slop_ns)
            if not near:
                return None
            candidates.append([s for _, s in near])
        for combo in itertools.product(*candidates):
            if max(combo) - min(combo) <= self._slop_ns:
                return self._emit(combo)
        return None

    def _emit(self, combo: tuple[int, ...]) -> tuple:
        msgs = []
        for i, (queue, t) in enumerate(zip(self._queues, combo)):
            msgs.append(queue.pop(t))
            older = [s for s in queue if s < t]
            for s in older:
                del queue[s]
            self.dropped_by_input[i] += len(older)
            self._last_emitted[i] = t
        self.matched += 1
        return tuple(msgs)


# The name message_filters uses; the constructor differs (num_inputs instead of subscribers).
ApproximateTimeSynchronizer = ApproximateTimeSync


def message_filters_available() -> bool:
    """True when the real message_filters package imports (the node may then prefer it)."""
    try:
        import message_filters  # noqa: F401
    except Exception:  # ImportError, or a broken install failing on import
        return False
    return True
