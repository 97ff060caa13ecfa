from ..plans import NumberPlan
from ..shared import Shared
from ..decision import Decision
from ..plans import NumberPlan, PlanSet
from ..segments import PrefixTable

class Engine:
    settings: PlanSet
    compiler: object
    prefixes: PrefixTable
    shared: Shared
    rr_states: dict[str, dict[tuple, object]]
    pin_checks: dict[str, dict[tuple, object]]
    by_number: dict[str, object]
    #: number -> (the entry traced, its reference-engine tracer), least recently used first
    tracers: dict[str, tuple[object, object]]
    def __init__(self, plans: PlanSet, prefixes: PrefixTable, shared: Shared) -> None: ...
    def route(
        self,
        dialed: object,
        caller: object,
        at: object = None,
        channel: str = "voice",
        pin: str | None = None,
        call_id: object = None,
        explain: bool = False,
        dry_run: bool = False,
    ) -> Decision: ...
    def put(self, plan: NumberPlan) -> None: ...
    def remove(self, number: str) -> None: ...
    def put_entry(self, number: str, entry: object) -> None: ...
    def drop_entry(self, number: str) -> None: ...
    def _check(self) -> int: ...
