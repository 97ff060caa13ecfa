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


# --- periods (issue #11 item 10) and the bound on entries (item 6) ---------------------------


def test_each_period_is_its_own_counter(impl):
    c = impl.MemoryCounters()
    assert [c.acquire([check("k", period=10)]) for _ in range(4)] == [-1, -1, -1, 0]
    assert c.acquire([check("k", period=9)]) == -1  # a call dated yesterday
    assert c.acquire([check("k", period=10)]) == 0  # today is still full
    assert c.acquire([check("k", period=11)]) == -1  # a call dated tomorrow
    assert c.acquire([check("k", period=10)]) == 0
    assert c.add("k", 9, 5, 3600) == 6  # a late charge to yesterday
    assert [c.value("k", p) for p in (9, 10, 11)] == [6, 3, 1]
    assert len(c) == 3
    c._check()


NUMBER_KEY = "tel400:{4001012345}:cap:calls:day:number:any:1"


def test_rotating_callers_stay_within_max_keys(impl):
    """100,000 callers through a table of 10,000 keys: it stays flat and every refusal is counted."""
    now = [0.0]
    c = impl.MemoryCounters(clock=lambda: now[0], max_keys=10_000)
    admitted = refused = 0
    for i in range(100_000):
        now[0] += 0.1  # the caller entries (3,600 s) expire 36,000 callers later
        checks = [CapCheck(NUMBER_KEY, 1, 10**9, 1, 10**6), CapCheck(f"{NUMBER_KEY}:caller:{i}", 1, 3, 1, 3600)]
        try:
            c.acquire(checks)
        except tel400.BackendError as exc:
            assert "memory counters: full (max_keys=10000" in str(exc)
            refused += 1
        else:
            admitted += 1
        if i % 1000 == 0:
            assert len(c) <= 10_000
    c._check()
    assert len(c) == 10_000 and 0 < refused < 100_000
    assert c.refused == {"cap": refused, "charge": 0, "pin": 0}
    assert c.usage() == {"keys": 10_000, "max_keys": 10_000, "refused": c.refused}
    assert c.value(NUMBER_KEY, 1) == admitted  # the number's count was never dropped to make room


def test_at_the_bound_held_counts_go_on_and_new_keys_are_refused(impl):
    c = impl.MemoryCounters(max_keys=3)
    for key in "abc":
        c.add(key, 1, 1, 3600)
    assert c.acquire([check("a", limit=9)]) == -1 and c.add("b", 1, 5, 3600) == 6  # held entries still count
    with pytest.raises(tel400.BackendError):
        c.acquire([check("a", limit=9), check("new", limit=9)])
    assert c.value("a", 1) == 2  # all or nothing: the refused call counted nowhere
    with pytest.raises(tel400.BackendError):
        c.add("new", 1, 60, 3600)  # a charge needing a key not held yet
    with pytest.raises(tel400.BackendError):
        c.add_pin_failure("p", 0, 3600)
    assert c.refused == {"cap": 1, "charge": 1, "pin": 1}
    assert c.acquire([check("new", limit=9)], dry_run=True) == -1  # a dry run never needs room
    c._check()


def test_held_keys_open_new_periods_beyond_the_bound_up_to_twice_it(impl):
    """Strangers who fill the table cannot stop a number's cap from counting after midnight."""
    c = impl.MemoryCounters(max_keys=4)
    assert c.acquire([check("number", period=1, limit=99), check("caller:0", period=1)]) == -1
    for i in range(1, 3):
        c.acquire([check("number", period=1, limit=99), check(f"caller:{i}", period=1)])
    assert len(c) == 4
    with pytest.raises(tel400.BackendError):  # a new caller: refused at the bound
        c.acquire([check("number", period=2, limit=99), check("caller:9", period=2)])
    # Midnight: the number's cap (held) opens its new period, with a caller already held.
    assert c.acquire([check("number", period=2, limit=99), check("caller:0", period=2)]) == -1
    assert c.add("caller:1", 1, 60, 3600) == 61  # a late charge to a held period
    assert c.add("caller:1", 2, 60, 3600) == 60  # a charge opening a held key's new period
    assert len(c) == 7
    c.acquire([check("number", period=3, limit=99)])
    assert len(c) == 8  # twice the bound: held keys too are refused now
    with pytest.raises(tel400.BackendError):
        c.acquire([check("number", period=4, limit=99)])
    with pytest.raises(tel400.BackendError):
        c.add("caller:2", 2, 60, 3600)
    assert c.refused == {"cap": 2, "charge": 1, "pin": 0}
    c._check()


def test_wrong_pins_from_rotating_callers_stay_within_max_keys(impl):
    now = [0.0]
    c = impl.MemoryCounters(clock=lambda: now[0], max_keys=1000)
    refused = 0
    for i in range(20_000):
        now[0] += 1
        try:
            c.add_pin_failure(f"tel400:{{4001012345}}:pin:{i}", now[0], 3600)
        except tel400.BackendError:
            refused += 1
    c._check()
    assert len(c) == 1000 and c.refused["pin"] == refused > 0


def test_pin_windows_reopened_or_cleared_keep_one_expiry_item(impl):
    now = [0.0]
    c = impl.MemoryCounters(clock=lambda: now[0])
    for i in range(5000):
        now[0] += 1
        assert c.add_pin_failure("p", i * 3600.0, 3600) == 1  # every try opens a new window
        c.add_pin_failure("q", now[0], 3600)
        c.clear_pin_failures("q")
    c._check()  # the expiry queue stays within 2 items per entry (+64)
    assert len(c) == 1


def test_max_keys_from_the_url_and_checked(impl):
    c = open_counters("memory://?max_keys=5", memory=impl.MemoryCounters)
    assert c.max_keys == 5 and c.url == "memory://?max_keys=5"
    assert open_counters("memory://", memory=impl.MemoryCounters).max_keys == tel400.counters.DEFAULT_MAX_KEYS
    for bad in ("0", "-1", "lots", "²"):
        with pytest.raises(ValueError, match="max_keys must be a whole number"):
            open_counters(f"memory://?max_keys={bad}", memory=impl.MemoryCounters)
    with pytest.raises(ValueError, match="max_keys must be a whole number"):
        impl.MemoryCounters(max_keys=0)


def test_the_plans_policy_applies_at_the_bound(impl, make_router):
    plans = {"numbers": [{
        "number": "4001012345", "rules": [{"targets": ["1"]}], "on_backend_error": "reject",
        "caps": [{"metric": "calls", "per": "day", "limit": 1, "scope": "caller"}],
    }]}
    router = make_router(plans, impl.MemoryCounters(max_keys=2))
    assert [router.route("4001012345", c).reason for c in ("13901010001", "13901010002")] == ["ok", "ok"]
    assert router.route("4001012345", "13901010003").reason == "backend_error"
    assert router.route("4001012345", "13901010001").reason == "cap_exceeded"  # held counts still apply
    assert router.backend_error_counts() == {"reject": 1}
    assert router.counters.refused["cap"] == 1


def test_refusals_are_logged_at_most_once_a_minute(impl):
    from structlog.testing import capture_logs

    from tel400.counters import RefusalLog

    c = impl.MemoryCounters(max_keys=1)
    c.add("a", 1, 1, 3600)
    with capture_logs() as logs:
        for i in range(50):
            with pytest.raises(tel400.BackendError):
                c.add(f"k{i}", 1, 1, 3600)
    lines = [e for e in logs if e["event"] == "counter_keys_refused"]
    assert len(lines) == 1 and lines[0]["charge"] == 1 and lines[0]["log_level"] == "warning"
    assert c.refused["charge"] == 50
    now = [0.0]
    log = RefusalLog("memory", "max_keys=1", 60, clock=lambda: now[0])
    with capture_logs() as logs:
        for kind in ("cap", "cap", "pin", "charge"):
            log.note(kind)
        now[0] = 61
        log.note("cap")
    assert [(e.get("cap"), e.get("pin"), e.get("charge")) for e in logs] == [(1, None, None), (2, 1, 1)]


def test_a_simulation_is_never_cut_short_by_the_bound():
    """tel400 simulate routes synthetic callers (a counter each): its counters grow with the run."""
    from tel400.simulate import _simulation_counters

    plans = tel400.PlanSet.from_dict({"numbers": [{
        "number": "4001012345", "rules": [{"targets": ["1"]}], "on_backend_error": "reject",
        "caps": [{"metric": "calls", "per": "day", "limit": 5, "scope": "caller"}],
    }]})
    assert _simulation_counters(plans, 10**6).max_keys == 2 * 10**6
    assert _simulation_counters(plans, 10).max_keys == tel400.counters.DEFAULT_MAX_KEYS
