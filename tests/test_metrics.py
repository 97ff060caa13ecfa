"""Prometheus metrics read from the router's own counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

import tel400
import tel400.metrics
from tel400 import workdays

from .conftest import at, one_number


def test_metrics_follow_decisions_and_calendar_fallbacks(make_router):
    router = make_router(
        one_number(rules=[{"days": "workday", "targets": ["1"]}], caps=[{"metric": "minutes", "per": "day", "limit": 10}])
    )
    registry = CollectorRegistry()
    tel400.metrics.register(router, registry)
    router.route("4001012345", "13901012345", at=at(2026, 11, 24), call_id="a")
    router.route("4001012345", "13901012345", at=at(2026, 11, 28))
    router.route("4009999999", "13901012345")
    router.route("4001012345", "13901012345", at=at(2043, 1, 5), call_id="b")
    router.reload(router.plans)
    router.update([router.plan_of("4001012345")])
    text = generate_latest(registry).decode()
    assert 'tel400_decisions_total{action="bridge",number="4001012345",reason="ok"} 2.0' in text
    assert 'tel400_decisions_total{action="reject",number="4001012345",reason="closed"} 1.0' in text
    assert 'tel400_decisions_total{action="reject",number="unknown",reason="unknown_number"} 1.0' in text
    assert "tel400_reloads_total 1.0" in text and "tel400_plan_updates_total 1.0" in text
    assert "tel400_calls_in_progress 2.0" in text
    assert f'tel400_calendar_fallback_total{{year="2043"}} {float(workdays.FALLBACK_LOOKUPS[2043])}' in text
    router.call_ended("a", 30)
    assert "tel400_calls_in_progress 1.0" in generate_latest(registry).decode()


def test_calls_forgotten_or_not_remembered_are_counted(make_router):
    from tel400.calls import CallRegistry

    now = [0.0]
    router = make_router(one_number(rules=[{"targets": ["1"]}]),
                         calls=CallRegistry(max_calls=2, max_age_s=60, clock=lambda: now[0]))
    registry = CollectorRegistry()
    tel400.metrics.register(router, registry)
    for call_id in ("a", "b", "c", "d"):
        router.route("4001012345", "13901012345", call_id=call_id)
    now[0] = 60
    router.route("4001012345", "13901012345", call_id="e")  # a and b expire
    text = generate_latest(registry).decode()
    assert "tel400_calls_unremembered_total 2.0" in text and "tel400_calls_dropped_total 2.0" in text


def test_pin_metrics(make_router):
    from tel400 import pins

    router = make_router(one_number(rules=[{"targets": ["1"]}], pin="4821"),
                         pin_policy=pins.PinPolicy(number_failures=2, number_window_s=60))
    registry = CollectorRegistry()
    tel400.metrics.register(router, registry)
    assert "tel400_pin_checks_busy_total 0.0" in generate_latest(registry).decode()
    t0 = at(2026, 11, 24).timestamp()
    for i in range(5):
        router.route("4001012345", f"1390101234{i}", pin="0000", at=t0 + i)
    router.route("4001012345", "13901012349", pin="0000", at=t0 + 60)
    router.route("4001012345", "13901012348", pin="0000", at=t0 + 61)
    text = generate_latest(registry).decode()
    assert 'tel400_pin_number_lockouts_total{number="4001012345"} 2.0' in text
    assert 'tel400_decisions_total{action="reject",number="4001012345",reason="pin_locked"} 5.0' in text


def test_backend_and_watcher_metrics(tmp_path, redis_url):
    registry = CollectorRegistry()
    plans = tel400.PlanSet.from_dict(one_number(rules=[{"targets": ["1"]}], caps=[{"metric": "calls", "per": "day", "limit": 9}]))
    path = tmp_path / "p.json"
    path.write_text('{"numbers": [{"number": "4001012345", "rules": [{"time": "25:00-26:00", "targets": ["1"]}]}]}')
    router = tel400.Router(plans, "redis://127.0.0.1:1/0?timeout_ms=5")
    watcher = tel400.PlanWatcher(router, str(path), interval_s=0)
    watcher.poll()
    tel400.metrics.register(router, registry, watcher=watcher)
    router.route("4001012345", "13901012345")
    text = generate_latest(registry).decode()
    assert 'tel400_counter_backend_failures_total{kind="connection"} 1.0' in text
    assert "tel400_plan_changes_refused_total 1.0" in text
    from tel400 import _impl

    if "cython" in _impl.ENGINES:
        shm_router = tel400.Router(plans, f"shm://{tmp_path}/c?slots=1024")
        shm_router.route("4001012345", "13901012345")
        shm_registry = CollectorRegistry()
        tel400.metrics.register(shm_router, shm_registry)
        text = generate_latest(shm_registry).decode()
        assert "tel400_shm_slots 1024.0" in text and "tel400_shm_slots_used 1.0" in text


def test_memory_counter_bound_metrics(impl, make_router):
    plans = one_number(rules=[{"targets": ["1"]}], caps=[{"metric": "calls", "per": "day", "limit": 1, "scope": "caller"}])
    router = make_router(plans, impl.MemoryCounters(max_keys=2))
    registry = CollectorRegistry()
    tel400.metrics.register(router, registry)
    for caller in ("13901010001", "13901010002", "13901010003", "13901010004"):
        router.route("4001012345", caller)
    text = generate_latest(registry).decode()
    assert "tel400_counter_keys 2.0" in text and "tel400_counter_keys_max 2.0" in text
    assert 'tel400_counter_keys_refused_total{kind="cap"} 2.0' in text
    assert 'tel400_counter_keys_refused_total{kind="charge"} 0.0' in text
