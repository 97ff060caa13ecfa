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
    """Exposes one router's statistics (and the process-wide calendar fallbacks)."""

    def __init__(self, router: Router) -> None:
        self._router = router

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

        yield CounterMetricFamily("tel400_reloads", "Plan reloads.", value=router.reloads)
        yield GaugeMetricFamily(
            "tel400_calls_in_progress", "Routed calls whose end has not been reported yet.",
            value=router.calls_in_progress,
        )
        yield CounterMetricFamily(
            "tel400_calls_dropped", "Calls forgotten unended (too old, or too many in progress).",
            value=router.calls_dropped,
        )
        fallback = CounterMetricFamily(
            "tel400_calendar_fallback",
            "Working-day lookups in years the official calendar does not cover (Monday-Friday used).",
            labels=["year"],
        )
        for year, count in sorted(workdays.FALLBACK_LOOKUPS.items()):
            fallback.add_metric([str(year)], count)
        yield fallback


def register(router: Router, registry: CollectorRegistry = REGISTRY) -> RouterCollector:
    """Register a collector for ``router`` and return it (unregister it with the registry)."""
    collector = RouterCollector(router)
    registry.register(collector)
    return collector
