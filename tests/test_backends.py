"""The memory counter backend and the calls registry."""

from __future__ import annotations

import threading

import pytest

import tel400
from tel400.calls import CallRegistry
from tel400.counters import CapCheck, CounterBackend, open_counters


def check(key="k", period=1, limit=3, increment=1):
    return CapCheck(key, period, limit, increment, 3600)


def test_acquire_is_all_or_nothing(impl):
    c = impl.MemoryCounters()
    assert c.acquire([check("a", limit=2), check("b", limit=1)]) == -1
    assert c.acquire([check("a", limit=2), check("b", limit=1)]) == 1
    assert c.value("a", 1) == 1 and c.value("b", 1) == 1  # the failed call counted nowhere
    assert c.acquire([check("a", limit=2)], dry_run=True) == -1
    assert c.value("a", 1) == 1


def test_periods_reset_and_zero_increments_only_check(impl):
    c = impl.MemoryCounters()
    c.add("m", 5, 100, 60)
    assert c.acquire([check("m", period=5, limit=100, increment=0)]) == 0
    assert c.acquire([check("m", period=6, limit=100, increment=0)]) == -1
    assert c.value("m", 6) == 0


def test_exact_under_threads(impl):
    c = impl.MemoryCounters()
    admitted = []

    def worker():
        n = 0
        for _ in range(2000):
            n += c.acquire([check("x", limit=5000)]) == -1
        admitted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 5000 and c.value("x", 1) == 5000


def test_expired_entries_are_evicted_as_writes_go_on(impl):
    now = [1000.0]
    c = impl.MemoryCounters(clock=lambda: now[0])
    for i in range(50):
        c.add(f"caller{i}", 1, 1, 60)
        c.add_pin_failure(f"pin{i}", now[0], 60)
    assert len(c) == 100
    now[0] += 61
    for i in range(60):
        c.add(f"fresh{i}", 1, 1, 60)
    assert len(c) == 60  # every expired entry went, two per write
    assert c.value("caller0", 1) == 0 and c.value("fresh0", 1) == 1


def test_a_renewed_entry_is_not_evicted_by_its_old_expiry(impl):
    now = [0.0]
    c = impl.MemoryCounters(clock=lambda: now[0])
    c.add("k", 1, 5, 60)
    now[0] = 59
    c.add("k", 2, 7, 60)  # a new period: expires at 119
    now[0] = 61
    c.add("other", 1, 1, 60)
    assert c.value("k", 2) == 7


def test_pin_window(impl):
    c = impl.MemoryCounters()
    assert c.add_pin_failure("p", 0, 3600) == 1
    assert c.add_pin_failure("p", 10, 3600) == 2
    assert c.pin_failures("p", 3599, 3600) == 2
    assert c.pin_failures("p", 3600, 3600) == 0
    assert c.add_pin_failure("p", 3600, 3600) == 1
    c.clear_pin_failures("p")
    assert c.pin_failures("p", 3601, 3600) == 0


def test_open_counters(impl):
    from tel400 import _impl

    assert isinstance(open_counters(None), _impl.MemoryCounters)  # the active implementation's
    assert isinstance(open_counters("memory://", memory=impl.MemoryCounters), impl.MemoryCounters)
    assert isinstance(impl.MemoryCounters(), CounterBackend)
    backend = impl.MemoryCounters()
    assert open_counters(backend) is backend
    with pytest.raises(ValueError, match="unsupported"):
        open_counters("carrier-pigeon://loft")
    with pytest.raises(TypeError):
        open_counters(42)


def test_router_accepts_a_url(impl):
    plans = tel400.PlanSet.from_dict({"numbers": [{"number": "4001012345"}]})
    router = tel400.Router(plans, "memory://", implementation=impl.name)
    assert isinstance(router.counters, impl.MemoryCounters)


def record(call_id):
    from tel400._common import CallRecord

    return CallRecord(call_id, "4001012345", None, 0, (), "voice", 0.0, None, (), True)


def test_call_registry_bounds():
    now = [0.0]
    reg = CallRegistry(max_calls=3, max_age_s=100, clock=lambda: now[0])
    stored = [reg.remember(record(f"c{i}")) for i in range(5)]
    assert stored == [True, True, True, False, False]  # full: the new calls, not the oldest, are refused
    assert len(reg) == 3 and reg.refused == 2 and reg.dropped == 0 and "c0" in reg and "c4" not in reg
    assert reg.remember(record("c1"))  # an id already remembered is replaced, full or not
    now[0] = 150
    reg.remember(record("late"))
    assert len(reg) == 1 and reg.dropped == 3 and reg.pop("late") is not None and reg.pop("late") is None


@pytest.mark.parametrize("bad", [{"max_calls": 0}, {"max_calls": 1.5}, {"max_age_s": 0}, {"max_age_s": float("inf")},
                                 {"max_age_s": 7 * 86400 + 1}, {"max_age_s": True}])
def test_call_registry_bounds_are_checked(bad):
    with pytest.raises(ValueError):
        CallRegistry(**bad)
