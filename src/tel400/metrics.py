"""Prometheus metrics, read from counters the hot path already keeps.

A decision costs one dict increment; this collector turns those counts into
metrics only when Prometheus scrapes, so metrics add nothing per call.

    from prometheus_client import REGISTRY
    tel400.metrics.register(router)            # or register(router, my_registry)
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, CollectorRegistry

from . import workdays
from .router import Router


class RouterCollector:
    """Exposes one router's statistics (and the process-wide calendar fallbacks),
    its counter backend's and, if given, its plan watcher's."""

    def __init__(self, router: Router, watcher=None) -> None:
        self._router = router
        self._watcher = watcher

    def collect(self):
        router = self._router
        decisions = CounterMetricFamily(
            "tel400_decisions", "Route decisions by 400 number, action and reason.",
            labels=["number", "action", "reason"],
        )
        for (number, action, reason), count in sorted(router.decision_counts().items()):
            decisions.add_metric([number, action, reason], count)
        yield decisions

        errors = CounterMetricFamily(
            "tel400_backend_errors", "Counter backend failures, by the on_backend_error policy applied.",
            labels=["policy"],
        )
        for policy, count in sorted(router.backend_error_counts().items()):
            errors.add_metric([policy], count)
        yield errors

        sms = CounterMetricFamily(
            "tel400_sms_replies", "Incoming SMS answered (Router.answer_sms), by reason: ok (a reply sent), "
            "no_match, not_replied, flood_limited, cap_exceeded, blacklisted, unknown_number, backend_error.",
            labels=["reason"],
        )
        for reason, count in sorted(router.sms_answer_counts().items()):
            sms.add_metric([reason], count)
        yield sms

        yield from self._pin_metrics(router.pin_event_counts())
        yield CounterMetricFamily("tel400_reloads", "Plan reloads (every number compiled again).", value=router.reloads)
        yield CounterMetricFamily("tel400_plan_updates", "Plan changes applied to single numbers (Router.update).",
                                  value=router.updates)
        yield GaugeMetricFamily(
            "tel400_calls_in_progress", "Routed calls whose end has not been reported yet.",
            value=router.calls_in_progress,
        )
        yield CounterMetricFamily(
            "tel400_calls_dropped", "Calls forgotten unended: older than the longest call.",
            value=router.calls_dropped,
        )
        yield CounterMetricFamily(
            "tel400_calls_unremembered",
            "Calls admitted but not remembered (too many in progress): their ends are unknown, their minutes "
            "and cost uncharged.",
            value=router.calls_refused,
        )
        fallback = CounterMetricFamily(
            "tel400_calendar_fallback",
            "Working-day lookups in years the official calendar does not cover (Monday-Friday used).",
            labels=["year"],
        )
        for year, count in sorted(workdays.FALLBACK_LOOKUPS.items()):
            fallback.add_metric([str(year)], count)
        yield fallback
        yield from self._backend_metrics(router.counters)
        if self._watcher is not None:
            w = self._watcher
            yield CounterMetricFamily("tel400_plan_changes_refused", "Plan changes refused as invalid (running plans kept).",
                                      value=w.refusals)
            yield CounterMetricFamily("tel400_plan_store_errors", "Plan store reads that failed.", value=w.errors)
            yield GaugeMetricFamily("tel400_plans_quarantined",
                                    "Numbers whose stored plan is invalid: not routed, or routed by their last good "
                                    "plan (see the plan_quarantined log lines).", value=len(w.quarantined))

    @staticmethod
    def _pin_metrics(events):
        lockouts = CounterMetricFamily(
            "tel400_pin_number_lockouts",
            "Times a 400 number was locked for every caller by wrong PINs from all callers.",
            labels=["number"],
        )
        for key, count in sorted((k, v) for k, v in events.items() if isinstance(k, tuple)):
            lockouts.add_metric([key[1]], count)
        yield lockouts
        yield CounterMetricFamily(
            "tel400_pin_checks_busy",
            "Hashed PINs not checked (answered backend_error): every derivation slot busy.",
            value=events.get("busy", 0),
        )

    @staticmethod
    def _backend_metrics(counters):
        failures = getattr(counters, "failures", None)  # redis://
        if failures is not None:
            family = CounterMetricFamily(
                "tel400_counter_backend_failures", "Counter backend calls that failed, by kind.", labels=["kind"]
            )
            for kind, count in sorted(failures.items()):
                family.add_metric([kind], count)
            yield family
        usage = getattr(counters, "usage", None)  # memory://
        if usage is not None:
            held = usage()
            yield GaugeMetricFamily("tel400_counter_keys", "Counters and PIN windows held in memory.", value=held["keys"])
            yield GaugeMetricFamily("tel400_counter_keys_max", "The bound on them (memory://?max_keys=N).",
                                    value=held["max_keys"])
            refused = CounterMetricFamily(
                "tel400_counter_keys_refused",
                "New counters refused at the bound, by kind (cap, charge, pin); the plan's on_backend_error applied.",
                labels=["kind"],
            )
            for kind, count in sorted(held["refused"].items()):
                refused.add_metric([kind], count)
            yield refused
        late = getattr(counters, "late_replies", None)  # redis://
        if late is not None:
            family = CounterMetricFamily(
                "tel400_counter_late_replies",
                "Timed-out counter scripts by what became of them (given_back, not_counted, lost).",
                labels=["outcome"],
            )
            for outcome, count in sorted(late.items()):
                family.add_metric([outcome], count)
            yield family
            yield GaugeMetricFamily(
                "tel400_counter_breaker_open", "1 while the counter backend's circuit breaker is open or probing.",
                value=int(counters.breaker.state != "closed"),
            )
        stats = getattr(counters, "stats", None)  # shm://
        if stats is not None:
            table = stats()
            yield GaugeMetricFamily("tel400_shm_slots", "Slots in the shared counter table.", value=table["slots"])
            yield GaugeMetricFamily("tel400_shm_slots_used", "Slots holding a counter.", value=table["used"])
            yield CounterMetricFamily("tel400_shm_table_full", "Counters refused because the table was full.",
                                      value=table["full_events"])


def register(router: Router, registry: CollectorRegistry = REGISTRY, *, watcher=None) -> RouterCollector:
    """Register a collector for ``router`` (and its ``watcher``) and return it."""
    collector = RouterCollector(router, watcher)
    registry.register(collector)
    return collector
