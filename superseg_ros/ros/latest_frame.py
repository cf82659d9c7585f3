"""A one-slot mailbox: the worker always gets the newest frame, never a backlog.

When the network is slower than the camera, frames that arrive while one is being processed
replace each other; each replaced frame is counted as skipped. Latency stays bounded by one
processing time instead of growing with a queue.
"""

from __future__ import annotations

import threading


class LatestFrame:
    def __init__(self):
        self._item = None
        self._cond = threading.Condition()
        self._closed = False
        self.skipped = 0

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.skipped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float | None = None):
        """The newest item, or None on timeout or after close()."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
