"""tel400: call routing for Chinese 400 numbers.

Route by the caller's province, the time slot and the official working-day
calendar, a percentage split, a blacklist, PIN access and caps on calls,
minutes or cost; voice and SMS through the same number.

    >>> import tel400
    >>> plans = tel400.load_plans("examples/manual.toml")
    >>> router = tel400.Router(plans)
    >>> router.route("4001012345", "13901012345").action
    'bridge'
"""

from __future__ import annotations

from ._impl import IMPLEMENTATION
from ._common import check_at
from .calls import open_calls
from .counters import CounterBackend, MemoryCounters, open_counters
from .decision import REASONS, Charge, Decision, Step
from .exceptions import BackendError, NumberError, PlanError, SegmentError, Tel400Error
from .loading import load_plans, loads_plans
from .numbers import default_segments, locate, normalize, use_segments
from .plans import Action, Cap, CalendarSpec, NumberPlan, PlanSet, Rule, Target, Tariff
from .router import Router
from .segments import PrefixTable, load_segments
from .smsreply import SmsAdmission, SmsAnswer
from .stores import FileStore, PlanStore, RedisStore, SqliteStore, open_store
from .watch import PlanWatcher
from .workdays import OfficialCalendar

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "Action",
    "BackendError",
    "CalendarSpec",
    "Cap",
    "Charge",
    "CounterBackend",
    "Decision",
    "FileStore",
    "MemoryCounters",
    "NumberError",
    "NumberPlan",
    "OfficialCalendar",
    "PlanError",
    "PlanSet",
    "PlanStore",
    "PlanWatcher",
    "PrefixTable",
    "REASONS",
    "RedisStore",
    "Router",
    "Rule",
    "SegmentError",
    "SmsAdmission",
    "SmsAnswer",
    "SqliteStore",
    "Step",
    "Target",
    "Tariff",
    "Tel400Error",
    "__version__",
    "check_at",
    "default_segments",
    "load_plans",
    "load_segments",
    "loads_plans",
    "locate",
    "normalize",
    "open_calls",
    "open_counters",
    "open_store",
    "use_segments",
]
