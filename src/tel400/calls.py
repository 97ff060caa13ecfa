"""Calls in progress, remembered from routing until their end is reported.

Minutes and cost are charged when a call ends, to the period in which it
was routed; the router keeps what it needs (see
:class:`tel400._common.CallRecord`) under the call's id.  Ends that never
arrive (a lost BYE) must not grow memory forever: records older than
``max_age_s`` are dropped, oldest first, and so is the oldest record when
``max_calls`` is reached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class CallRegistry:
    """Thread-safe map of call id → call record, bounded in size and age."""

    def __init__(self, *, max_calls: int = 200_000, max_age_s: float = 12 * 3600, clock=time.monotonic) -> None:
        self._calls: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.max_calls = max_calls
        self.max_age_s = max_age_s
        self._clock = clock
        #: records dropped unended (age or size), for the metrics collector.
        self.dropped = 0

    def remember(self, record) -> None:
        now = self._clock()
        record.remembered_at = now
        call_id = record.call_id
        with self._lock:
            calls = self._calls
            calls.pop(call_id, None)
            calls[call_id] = record
            while calls:
                oldest = next(iter(calls.values()))
                if len(calls) <= self.max_calls and now - oldest.remembered_at < self.max_age_s:
                    break
                calls.popitem(last=False)
                self.dropped += 1

    def pop(self, call_id):
        with self._lock:
            return self._calls.pop(str(call_id), None)

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id) -> bool:
        return str(call_id) in self._calls
