"""The public router: plans in, decisions out."""

from __future__ import annotations

import gc
import heapq
import os
import random
import time
import weakref
from collections.abc import Callable, Iterable

import zoneinfo
from decimal import Decimal
from typing import NamedTuple

import attrs
import structlog

from . import _impl, numbers, smsreply
from .pins import PinPolicy
from .billing import CallRecord, apply_charges, bill_call
from .shared import Shared
from .calls import CallRegistry, open_calls
from .counters import CounterBackend, open_counters
from .decision import Charge, Decision
from .exceptions import BackendError, PlanError
from ._engine_py import Moment
from .compiler import cap_key, cap_label, numbered_caps
from .plans import Cap, NumberPlan, PlanSet, from_units
from .segments import PrefixTable, load_segments_cached

_log = structlog.get_logger("tel400.router")
_routers: weakref.WeakSet[Router] = weakref.WeakSet()


class CapUsage(NamedTuple):
    """One cap of a number now: the cap, its period's id, how much is used (``None`` per caller) and the limit.

    ``used`` and ``limit`` are in the cap's unit: calls, minutes or currency.
    """

    cap: Cap
    period: int
    used: Decimal | None
    limit: Decimal

    @property
    def label(self) -> str:
        """``metric/per/scope[/channel]``, as explain names the cap."""
        cap = self.cap
        return cap_label(cap.metric, cap.per, cap.scope, cap.channel)


class Router:
    """Routes calls to 400 numbers by a :class:`~tel400.PlanSet`.

    Args:
        plans: the plans to route by.
        counters: a :class:`~tel400.counters.CounterBackend` or a URL
            (``"memory://"``, the default).
        prefixes: the prefix table for callers' provinces; by default the
            plan set's ``segments`` laid over the built-in table, or the
            process default (:func:`tel400.use_segments`).
        seed: seed for the random choices of ``weighted`` rules (tests and
            simulations); ``None`` seeds from the OS.  Children forked after
            the router was made are reseeded so they do not repeat each other.
        calls: the registry that remembers calls in progress for
            :meth:`call_ended`: a :class:`~tel400.calls.CallRegistry` or a
            URL for :func:`tel400.calls.open_calls` (``"memory://"``, the
            default; ``"sqlite:///path"`` or ``"redis://..."`` to share calls
            between processes, so that an end reaching any of them charges
            the call once).  Its bounds (200,000 calls, 12 hours, by
            default) also bound the durations accepted.
        implementation: ``"cython"`` or ``"python"`` to pick an engine
            (tests and debugging); ``None`` uses ``tel400.IMPLEMENTATION``.
        pin_policy: the PIN lockouts and how many hashed PINs are checked
            at a time (:class:`tel400.pins.PinPolicy`; default: 5 wrong PINs
            per caller per hour, 20 per number per 10 minutes, 2 at a time).
        plan_source: where the router reads a number's plan back when it
            does not hold it: a callable number -> :class:`~tel400.NumberPlan`
            or ``None`` (a store's ``load_number``; :meth:`from_store` passes
            it).  With it the router keeps only the compiled form of
            ``plans``; :meth:`plan_of`, :attr:`plans` and ``explain`` read
            through it.  ``None``: the router holds ``plans`` itself.

    A router is safe to share between threads.  :meth:`reload` swaps the
    plans atomically while other threads route; :meth:`update` replaces
    single numbers.
    """

    def __init__(
        self,
        plans: PlanSet,
        counters: CounterBackend | str | None = None,
        *,
        prefixes: PrefixTable | None = None,
        seed: int | None = None,
        calls: CallRegistry | str | None = None,
        implementation: str | None = None,
        pin_policy: PinPolicy | None = None,
        plan_source: Callable[[str], NumberPlan | None] | None = None,
    ) -> None:
        if not isinstance(plans, PlanSet):
            raise TypeError(f"plans: expected a PlanSet (see tel400.load_plans), got {type(plans).__name__}")
        self._impl = _impl.get(implementation)
        self._seed = seed
        self._prefixes = prefixes
        backend = open_counters(counters, memory=self._impl.MemoryCounters)
        if pin_policy is not None and not isinstance(pin_policy, PinPolicy):
            raise TypeError(f"pin_policy: expected a tel400.pins.PinPolicy, got {type(pin_policy).__name__}")
        if plan_source is not None and not callable(plan_source):
            raise TypeError(f"plan_source: expected a callable number -> NumberPlan | None, got {type(plan_source).__name__}")
        self._shared = Shared(backend, random.Random(seed), open_calls(calls), pin_policy)
        #: what answering SMS needs beyond routing, by number (smsreply.SmsPrograms)
        self._sms_programs = smsreply.SmsPrograms()
        #: SMS answers so far by reason (sms_answer_counts)
        self._sms_counts: dict[str, int] = {}
        self._engine = self._compile(plans)
        self._hold(plans, plan_source)
        _frozen_after_load(len(plans.numbers))
        self.reloads = 0
        #: calls of :meth:`update` that changed entries (a cache of anything
        #: read from the plans is current while reloads and updates stand)
        self.updates = 0
        #: the store version the plans were read at (:meth:`from_store`, the
        #: watcher); ``None`` for plans given as a PlanSet.
        self.plans_version = None
        _routers.add(self)

    @classmethod
    def from_store(cls, store, counters: CounterBackend | str | None = None, **router_kwargs) -> Router:
        """A router for the plans in ``store``, read number by number.

        The store is streamed (``store.iter_plans``) and each number is
        compiled as it arrives, so no more than one batch of
        :class:`~tel400.NumberPlan` objects is alive at a time; the router
        keeps only the compiled form and reads plans back through
        ``store.load_number`` (``plan_source``).  A number whose stored plan
        is invalid is left out and reported by the store
        (``store.quarantined``, a ``plan_quarantined`` log line), as by
        :meth:`~tel400.stores.PlanStore.load`; so is one an engine cannot
        compile.  :attr:`plans_version` is the store's version read before
        streaming: a :class:`~tel400.PlanWatcher` given it takes any change
        made meanwhile.

        Args:
            store: a :class:`~tel400.stores.PlanStore`, or a path or URL for
                :func:`~tel400.open_store` (opened for reading).
            counters, router_kwargs: as for :class:`Router`.

        Raises:
            PlanError: the store's top-level settings are invalid.
            BackendError: the store cannot be read.

        Cost: O(numbers × rules) time; memory O(compiled numbers) plus one
        batch of plans.  The loaded tables are then frozen out of the cyclic
        garbage collector (see :func:`_frozen_after_load`).
        """
        store = _opened(store)
        version = store.version()
        settings = store.settings()
        router = cls(settings, counters, plan_source=store.load_number,
                     **router_kwargs)
        _stream_into(router._engine, store, router._impl, settings)
        router.plans_version = version
        _frozen_after_load(router.number_count)
        _log.debug("plans_loaded", numbers=router.number_count, source=store.url, version=str(version))
        return router

    @property
    def implementation(self) -> str:
        """``"cython"`` or ``"python"``: which engine routes (see ``tel400.IMPLEMENTATION``)."""
        return self._impl.name

    def _compile(self, plans: PlanSet):
        """An engine for ``plans``, built number by number (see :func:`_put_in_batches`), adopted."""
        settings = attrs.evolve(plans, numbers=())
        engine = _compiled(self._impl, settings, self._prefixes_for(plans), self._shared)
        _put_in_batches(engine, plans.numbers, self._impl, plans)
        return self._adopt(engine)

    def _prefixes_for(self, plans: PlanSet) -> PrefixTable:
        return self._prefixes if self._prefixes is not None else _prefixes_of(plans)

    def _hold(self, plans: PlanSet, plan_source) -> None:
        """Keep ``plans`` (no ``plan_source``) or only their settings and where to read plans back."""
        self._settings = attrs.evolve(plans, numbers=())
        if plan_source is None:
            self._held: dict[str, NumberPlan] | None = {plan.number: plan for plan in plans.numbers}
            self._whole: PlanSet | None = plans
            plan_source = self._held.get
        else:
            self._held = self._whole = None
        self._shared.plan_source = plan_source

    def _adopt(self, engine):
        """Make the router's shared state the compiled ``engine``'s; the caller then routes by it."""
        # Adopted only once compiled: a failed reload keeps the old positions
        # and the old PIN checks (with the PINs they verified).
        self._shared.round_robin = engine.rr_states
        self._shared.pin_checks = engine.pin_checks
        # The engine's own bound method, stored on the instance so that a call
        # to router.route skips this class's wrapper (a Python frame, ~60 ns).
        # Rebinding it is one atomic store, like the engine reference itself.
        # A subclass that overrides route() keeps its own.
        if type(self).route is Router.route:
            self.route = engine.route
        return engine

    # -- routing ----------------------------------------------------------

    def route(self, dialed, caller, at=None, channel="voice", pin=None, call_id=None, explain=False) -> Decision:
        """Decide what happens to one call or message.

        Args:
            dialed: the number called, in any written form (``"4001012345"``,
                ``"400-101-2345"``, ``"+86 4001012345"``, ``"106574001012345"``
                for SMS).
            caller: the caller's number in any form; ``None``, ``""``,
                ``"anonymous"`` or garbage mean a caller without a usable
                number (a defined decision, never an exception).
            at: when: an aware ``datetime``, a POSIX time, a naive
                ``datetime`` (read in the plan's zone), or ``None`` for now.
            channel: ``"voice"`` or ``"sms"``.
            pin: the PIN the caller keyed, if the plan asks for one.
            call_id: the switch's id for the call; needed to charge minutes
                and cost caps with :meth:`call_ended`.
            explain: attach the trace of every check to ``Decision.explain``.

        Returns:
            The :class:`~tel400.Decision`.  A connecting decision has been
            counted against the plan's caps.

        Raises:
            ValueError: ``channel`` is not ``voice`` or ``sms``, or ``at`` is
                not a finite time.  Bad numbers never raise.

        Cost: O(rules tried + caps + targets); independent of the number of
        plans and of the size of the prefix table (one binary search).
        """
        return self._engine.route(dialed, caller, at, channel, pin, call_id, explain)

    def explain(self, dialed, caller, at=None, channel="voice", pin=None) -> Decision:
        """What :meth:`route` would decide, with the trace, changing nothing.

        Nothing is counted, no PIN failure is recorded and round robin does
        not advance; a ``weighted`` pick is still random.
        """
        return self._engine.route(dialed, caller, at, channel, pin, None, True, True)

    # -- SMS --------------------------------------------------------------

    def answer_sms(self, dialed, sender, text, at=None, explain=False) -> smsreply.SmsAnswer:
        """Decide what to do with one incoming SMS: an auto-reply, an opt-out or opt-in, or nothing.

        Args:
            dialed: the number texted (``"106574001012345"``, ``"4001012345"``…).
            sender: the sender's number in any form (withheld and garbage
                are answered, never raised on).
            text: the message's text (only its first
                ``tel400.limits.SMS_MATCH_CHARS`` characters are compared).
            at: as for :meth:`route`.
            explain: fill ``trace`` with readable lines and count nothing
                (a dry run, like :meth:`explain`; ``route`` is then an
                explained decision).

        Returns:
            The :class:`~tel400.SmsAnswer`.  The order of checks and the
            guards are in docs/sms.md ("Auto-replies").  A reply returned
            has been counted against the sender's reply allowance and the
            number's SMS caps; the message routed onward (``route``) as
            :meth:`route` counts it.  For ``opt_out``/``opt_in`` the adapter
            changes its store and sends ``reply`` only when the state changed.

        Raises:
            ValueError: ``text`` is not a string, or ``at`` is not a finite time.

        Cost: O(auto-replies x keywords x text) at most; one counter
        acquire per reply; one plan read and compile when the number's SMS
        program is not kept (``tel400.limits.SMS_PROGRAMS``).
        """
        return smsreply.answer(self, dialed, sender, text, at, explain)

    def admit_sms(self, number, recipient, parts, at=None) -> smsreply.SmsAdmission:
        """Count ``parts`` SMS parts sent from ``number`` to ``recipient`` against the number's SMS caps.

        The caps with ``channel = "sms"`` count them, atomically and all or
        nothing: a calls cap each part as one, a cost cap the parts at the
        tariff's ``sms_part``; minutes caps ignore SMS.  A counter backend
        that fails applies the plan's ``on_backend_error``.

        Returns:
            The :class:`~tel400.SmsAdmission`: ``admitted`` and ``reason``
            (``ok``, ``cap_exceeded``, ``unknown_number``, ``backend_error``)
            and the parts' ``cost``.

        Raises:
            ValueError: ``parts`` is not 1 to ``tel400.smstext.MAX_PARTS``, or ``at`` is bad.

        Cost: one counter acquire over the number's SMS caps.
        """
        return smsreply.admit(self, number, recipient, parts, at)

    def sms_answer_counts(self) -> dict[str, int]:
        """SMS answers so far by reason (``ok``, ``flood_limited``, …; explained ones not counted)."""
        return dict(self._sms_counts)

    def cap_usage(self, number, at=None) -> list[CapUsage]:
        """How much of each of a number's caps is used in the period containing ``at`` (default now).

        Read from the counter backend, nothing changed.  A per-caller cap has
        one counter per caller, so its ``used`` is ``None``.  An unknown
        number has no caps (``[]``).

        Raises:
            BackendError: the counter store failed.

        Cost: one counter read per number-wide cap.
        """
        plan = self.plan_of(number)
        if plan is None:
            return []
        moment = Moment(at, zoneinfo.ZoneInfo(plan.timezone), None)
        out = []
        for cap, occurrence in numbered_caps(plan.caps):
            period = moment.period(cap.per)
            used = None
            if cap.scope == "number":
                used = from_units(cap.metric, self.counters.value(cap_key(plan.number, cap, occurrence), period))
            out.append(CapUsage(cap, period, used, cap.limit))
        return out

    def call_ended(self, call_id, duration_s: float, target: str | None = None, *,
                   record: str | None = None) -> Charge | None:
        """Report a routed call's end: charges its minutes and cost caps.

        Args:
            call_id: the id given to :meth:`route`.
            duration_s: the talk time in seconds (billed in whole increments
                of the plan's tariff, 60 s by default).
            target: the target that answered, if not the first one; it
                decides local or long-distance rates.
            record: what :meth:`export_call` returned, when the call ends in
                another process than the one that routed it (Kamailio's
                workers); then this router need not know the call.

        Returns:
            The :class:`~tel400.Charge`, or ``None`` if the call is unknown
            (never routed with this id, already ended, or expired).

        Raises:
            ValueError: ``duration_s`` is negative, not a finite number, or
                longer than the longest call (the call registry's
                ``max_age_s``, 12 h by default), or ``record`` is not one
                :meth:`export_call` made.  The call is then still waiting
                for its end: a corrected report charges it.
            BackendError: the counter backend refused part of the charge
                (Redis down, ``memory://`` full).  The call is still waiting
                for its end, with only the charges not yet added: the
                switch's retry adds those, never twice what was added.  A
                call whose charge keeps failing is forgotten at the call
                registry's ``max_age_s`` after it was routed (counted in
                :attr:`calls_dropped`).  Also raised when a shared call
                registry (SQLite, Redis) fails: the call waits as well.

        The call is forgotten only once its charge has been added; it keeps
        its place meanwhile, so two reports of one end charge it once.  An
        ended call given as ``record`` whose charge fails is remembered by
        this router for the retry.

        Cost: O(minutes and cost caps of the call).
        """
        calls = self._shared.calls
        _check_duration(duration_s, calls.max_age_s)
        found = calls.get(call_id)
        if found is None:
            if record is None:
                _log.debug("call_end_unknown", call_id=str(call_id))
                return None
            found = CallRecord.from_token(record)
            if found.call_id != str(call_id):
                raise ValueError("record: it belongs to another call")
            charge, adds = bill_call(found, duration_s, target, self._engine.prefixes)
            rest = self._add_charges(found, adds)
            if rest is not None:
                calls.remember(rest)
                raise self._charge_failed(found)
            return charge
        charge, adds = bill_call(found, duration_s, target, self._engine.prefixes)
        if not calls.claim(call_id, found):
            return None  # another report of this end came first
        rest = found  # if adding raises anything else, the whole call waits for the retry
        try:
            rest = self._add_charges(found, adds)
        except BaseException:
            calls.settle(call_id, found, rest)
            raise
        try:
            calls.settle(call_id, found, rest)
        except BackendError:
            if rest is not None:
                raise
            # Charged in full: that is the answer. The claim left in a shared registry keeps other
            # reports of this end away until its lease, and the call goes at its age.
            _log.warning("call_settle_failed", call_id=found.call_id, number=found.number,
                         why="the call registry failed after the charge was added; the charge stands")
        if rest is not None:
            raise self._charge_failed(found)
        return charge

    def _add_charges(self, found: CallRecord, adds: tuple) -> CallRecord | None:
        """Add a bill to the counters: ``None`` when all was added, else the call with what is left."""
        failed = apply_charges(adds, self._shared.counters)
        if not failed:
            return None
        self._shared.backend_errors["charge_retry"] += 1
        return found.with_charges(tuple(c for c in found.charges if c[1] in failed))

    def _charge_failed(self, found: CallRecord) -> BackendError:
        _log.warning("call_charge_failed", call_id=found.call_id, number=found.number,
                     why="the counter backend refused the charge; the call waits for the retry")
        return BackendError(f"call {found.call_id}: the charge could not be added (counter backend unavailable); "
                            "the call waits for its end to be reported again")

    def export_call(self, call_id) -> str | None:
        """Hand a routed call over to whoever will report its end.

        Removes the call from this router and returns it as a short string
        (JSON) to keep with the call, e.g. in a Kamailio dialog variable;
        :meth:`call_ended` in any process of the same deployment takes it
        back as ``record=``.  ``None`` if the call is unknown.
        """
        found = self._shared.calls.pop(call_id)
        return None if found is None else found.to_token()

    # -- plans ------------------------------------------------------------

    def reload(self, plans: PlanSet) -> None:
        """Route by new plans from now on.

        The new plans are compiled first; calls being routed meanwhile use
        the old ones; then one reference is swapped.  Counters, PIN lockouts,
        calls in progress and the round-robin position of unchanged rules
        carry over.  If compiling fails, the old plans stay and the error
        propagates.  The router then holds ``plans`` (a router made by
        :meth:`from_store` stops reading plans back from its store).

        Raises:
            PlanError: a number's plan cannot be compiled by this router's
                engine (validation bounds every value both engines hold, so
                this means a plan that bypassed validation); the message names
                the number.

        Cost: O(numbers × rules); the new tables are then frozen out of the
        cyclic garbage collector (:func:`_frozen_after_load`).
        """
        if not isinstance(plans, PlanSet):
            raise TypeError(f"plans: expected a PlanSet, got {type(plans).__name__}")
        engine = self._compile(plans)
        self._engine = engine
        self._hold(plans, None)
        self.plans_version = None
        self.reloads += 1
        _frozen_after_load(len(plans.numbers))
        _log.info("plans_reloaded", numbers=len(plans.numbers), source=plans.source)

    def update(self, plans: Iterable[NumberPlan] = (), *, removed: Iterable[str] = ()) -> None:
        """Replace the plans of some numbers, leaving every other number's entry alone.

        Each given plan (validated with this router's settings:
        :func:`tel400.plans.validate_number`) is compiled; only when all are
        compiled do they become what their numbers are routed by.  Then the
        numbers in ``removed`` stop being routed (``unknown_number``).  A
        call routed meanwhile sees each number's old entry or its new one.
        Counters, PIN lockouts and round-robin positions of unchanged rules
        carry over, as with :meth:`reload`; an edited number's positions and
        PIN checks for rules and PINs it no longer has are dropped, and a
        removed number's statistics (:meth:`decision_counts`) go with it.

        Raises:
            PlanError: a plan cannot be compiled by this router's engine;
                the message names the number, and no entry has changed.
            TypeError: an item of ``plans`` is not a NumberPlan.

        Cost: O(the given plans' rules + removed numbers), independent of
        how many numbers the router routes.
        """
        plans = list(plans)
        for plan in plans:
            if not isinstance(plan, NumberPlan):
                raise TypeError(f"plans: expected NumberPlan items, got {type(plan).__name__}")
        gone = [numbers.normalize(number) for number in removed]
        engine = self._engine
        previous = {plan.number: _kept_of(engine, plan.number) for plan in plans}
        put: list[str] = []
        try:
            for plan in plans:
                _put(engine, plan, self._impl, self._settings)
                put.append(plan.number)
        except BaseException:
            for number in put:  # all or nothing: back to the entries calls were routed by
                _restore_entry(engine, number, previous[number])
            raise
        for number in gone:
            engine.remove(number)
        if plans or gone:
            self.updates += 1
        if self._held is not None:
            for plan in plans:
                self._held[plan.number] = plan
            for number in gone:
                self._held.pop(number, None)
            self._whole = None

    def _reload_from_store(self, store, *, version):
        """Rebuild every entry from ``store``, streamed like :meth:`from_store`, and swap.

        ``version``: the store's version, read before this call.  A number
        the store leaves out as invalid (``store.quarantined``) keeps its
        current entry, if it has one: its last good plan.  Returns the
        retired engine and the numbers kept so.  Cost: as :meth:`from_store`.
        """
        settings = store.settings()
        engine = _compiled(self._impl, settings, self._prefixes_for(settings), self._shared)
        _stream_into(engine, store, self._impl, settings)
        old = self._engine
        kept = []
        for number in store.quarantined:
            kept_old = _kept_of(old, number)
            if kept_old[0] is not None and _entry_of(engine, number) is None:
                _restore_entry(engine, number, kept_old)
                kept.append(number)
        self._engine = self._adopt(engine)
        self._hold(settings, store.load_number)
        self.plans_version = version
        self.reloads += 1
        _frozen_after_load(self.number_count)
        _log.info("plans_reloaded", numbers=self.number_count, source=store.url, version=str(version))
        return old, kept

    def _routes(self, number: str) -> bool:
        """Whether the (normalised) ``number`` has an entry.  O(1)."""
        return _entry_of(self._engine, number) is not None

    def plan_of(self, number) -> NumberPlan | None:
        """The plan ``number`` (any written form) is routed by, or ``None``.

        Read from the plans the router holds, or through its
        ``plan_source`` (the store: :meth:`from_store`).

        Raises:
            PlanError: the plan source holds an invalid plan for the number.
            BackendError: the plan source (a store) cannot be read now.

        Cost: O(1) for held plans; one store read otherwise.
        """
        wanted = _impl.normalize_or_none(number) if isinstance(number, str) else None
        if wanted is None:
            return None
        return self._shared.plan_source(wanted)

    @property
    def plans(self) -> PlanSet:
        """The plan set being routed by.

        For a router that holds its plans (built from a PlanSet): O(1), or
        O(numbers) once after an :meth:`update`.  For a router built by
        :meth:`from_store`: every routed number's plan is read back from
        the store, O(numbers) store reads at every access (a number whose
        stored plan is now invalid is left out); prefer :meth:`plan_of` and
        :attr:`number_count`.
        """
        if self._held is not None:
            if self._whole is None:
                self._whole = attrs.evolve(self._settings, numbers=tuple(self._held.values()))
            return self._whole
        found = []
        for number in self.routed_numbers():
            try:
                plan = self._shared.plan_source(number)
            except PlanError:
                continue
            if plan is not None:
                found.append(plan)
        return attrs.evolve(self._settings, numbers=tuple(found))

    @property
    def settings(self) -> PlanSet:
        """The top-level settings routed by (blacklist, prompts, calendar, segments), with no numbers."""
        return self._settings

    @property
    def number_count(self) -> int:
        """How many numbers are routed.  O(1)."""
        return len(_numbers_of(self._engine))

    def routed_numbers(self) -> list[str]:
        """The numbers routed, sorted; no plan is read.  O(numbers × log numbers)."""
        return sorted(_numbers_of(self._engine))

    def routed_numbers_after(self, after: str = "", limit: int = 1000) -> list[str]:
        """The first ``limit`` routed numbers sorting after ``after``, sorted: one page of :meth:`routed_numbers`.

        The keys are copied in one step (a few ms at a million), then
        selected in Python code, which gives the interpreter to other
        threads meanwhile: run it in a thread, not on an event loop.
        O(numbers × log limit); no plan is read.
        """
        return heapq.nsmallest(limit, filter(after.__lt__, list(_numbers_of(self._engine))))

    @property
    def prefixes(self) -> PrefixTable:
        """The prefix table callers are located with."""
        return self._engine.prefixes

    @property
    def counters(self) -> CounterBackend:
        return self._shared.counters

    @property
    def longest_call_s(self) -> float:
        """The longest call, in seconds: :meth:`call_ended` refuses a longer duration.

        It is the call registry's ``max_age_s`` (12 h by default): a call
        older than that is forgotten anyway.  A switch that measures a call's
        length itself (Kamailio's dialog timeout, FreeSWITCH's billsec) clamps
        to it, so that a call cut at the limit is still charged.
        """
        return self._shared.calls.max_age_s

    @property
    def waits_on_io(self) -> bool:
        """Whether a decision or a call's end may wait on I/O: Redis counters, or a call registry
        other processes share (SQLite, Redis).  Servers with an event loop (tel400-http, tel400-esl)
        then run them in a thread, so that one slow round trip holds no other call."""
        return bool(getattr(self._shared.counters, "waits_on_io", False)) or self._shared.calls.shared

    @property
    def call_registry(self):
        """The registry of calls in progress (:func:`tel400.calls.open_calls`); ``.shared`` when
        other processes share it, so that each of its operations is I/O."""
        return self._shared.calls

    @property
    def calls_in_progress(self) -> int:
        return len(self._shared.calls)

    @property
    def calls_dropped(self) -> int:
        """Calls forgotten before their end was reported: older than the registry's ``max_age_s``."""
        return self._shared.calls.dropped

    @property
    def calls_refused(self) -> int:
        """Calls admitted but not remembered: the registry held ``max_calls`` calls (their ends are unknown)."""
        return self._shared.calls.refused

    def decision_counts(self) -> dict[tuple[str, str, str], int]:
        """Decisions so far by (number, action, reason); unknown numbers as ``unknown``."""
        return self._shared.decision_counts()

    @property
    def pin_policy(self) -> PinPolicy:
        """The PIN lockouts and derivation bound this router applies."""
        return self._shared.pin_policy

    def pin_event_counts(self) -> dict:
        """PIN checks answered ``backend_error`` for want of a derivation slot (``"busy"``),
        and number-wide lockouts by number (``("number_locked", number)``)."""
        return dict(self._shared.pin_events)

    def backend_error_counts(self) -> dict[str, int]:
        """Counter backend failures so far, by the policy that was applied."""
        return dict(self._shared.backend_errors)

    def reseed(self) -> None:
        """Draw new random seeds: call it in each process a C program forks
        without telling Python (Kamailio's child_init); :func:`os.fork`
        children are reseeded by themselves."""
        self._reseed()

    def _reseed(self) -> None:
        shared = self._shared
        if self._seed is None:
            shared.rng.seed(os.urandom(16))
        else:
            shared.rng.seed(f"{self._seed}:{os.getpid()}")
        if shared.fast_rng is not None:
            shared.fast_rng.seed(shared.rng.getrandbits(64))


def _check_duration(duration_s, longest: float) -> None:
    # compared, not converted: NaN fails the comparison, and an int too large for a float cannot overflow it
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not 0 <= duration_s <= longest:
        raise ValueError(f"duration_s: expected seconds from 0 to {longest:g} (the longest call), got {duration_s!r}")


def _reseed_after_fork() -> None:
    for router in list(_routers):
        router._reseed()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


# -- compiling -------------------------------------------------------------------

#: What an engine raises on a value it cannot hold (a C long that overflows,
#: a zone file that cannot be read, a rate too large for a decimal).
_COMPILE_FAILURES = (ArithmeticError, ValueError, TypeError, LookupError, OSError, MemoryError)


def compile_check(plans: PlanSet) -> None:
    """Compile ``plans`` as a router of either implementation would, and keep nothing.

    Stores call it before writing, so that nothing is stored that a router
    of either implementation could not load.  Both engines compile a number
    with the one shared step (:mod:`tel400.compiler`): the reference
    executes its output as is and the compiled engine packs it into C
    structs.  Compiling with the compiled engine, when this process has it,
    therefore checks both; the reference engine compiles only where there
    is no compiled one.  (A store import of a million numbers spends about
    half as long here as when both compiled: ~3 µs per rule with the compiled
    build's rule builder, docs/performance.md "Compilation".)

    Raises:
        PlanError: naming the number whose plan an engine cannot compile.

    Cost: one compilation (about a millisecond for a plan of ordinary size;
    docs/performance.md gives a plan at every bound).
    """
    prefixes = _prefixes_of(plans)
    engines = _impl.ENGINES
    for impl in [engines["cython"]] if "cython" in engines else engines.values():
        shared = Shared(impl.MemoryCounters(), random.Random(0), CallRegistry())
        _compiled(impl, plans, prefixes, shared)


# -- one number at a time -----------------------------------------------------------
# The router reaches into an engine's table of compiled numbers (by_number)
# only through these helpers, and changes it only through the engine (the
# compiled engine keeps an index of it in step).

def _entry_of(engine, number: str):
    """The compiled entry ``number`` is routed by in ``engine``, or ``None``."""
    return engine.by_number.get(number)


def _kept_of(engine, number: str) -> tuple:
    """What ``engine`` keeps for ``number``: its entry (or ``None``), round-robin states, PIN checks."""
    return engine.by_number.get(number), engine.rr_states.get(number), engine.pin_checks.get(number)


def _restore_entry(engine, number: str, kept: tuple) -> None:
    """Put back what :func:`_kept_of` returned (no entry: the number is removed).  O(1).

    The states go back with the entry whose selectors and PIN gate hold
    them, so that the next compile of the number finds them again.
    """
    entry, rr_states, pin_checks = kept
    if entry is None:
        engine.remove(number)
        return
    engine.put_entry(number, entry)
    for by_number, states in ((engine.rr_states, rr_states), (engine.pin_checks, pin_checks)):
        if states:
            by_number[number] = states
        else:
            by_number.pop(number, None)


def _numbers_of(engine):
    """The numbers ``engine`` routes (a live view: copy before iterating while it may change)."""
    return engine.by_number.keys()


def _dismantle(engine) -> None:
    """Free a retired engine's entries one at a time instead of in one C call.

    Only for an engine no call can still be using (PlanWatcher waits
    first): a call that had picked it up would find its numbers gone.
    """
    table = engine.by_number
    while table:
        engine.drop_entry(next(reversed(table)))  # the last first, as popitem: nothing moves


def _put(engine, plan: NumberPlan, impl, settings: PlanSet) -> None:
    """``engine.put(plan)``; a value the engine cannot hold becomes a PlanError naming the number."""
    try:
        engine.put(plan)
    except PlanError:
        raise
    except _COMPILE_FAILURES as exc:
        raise PlanError(f"the {impl.name} engine cannot compile this plan: {type(exc).__name__}: {exc}",
                        source=settings.source, number=plan.number) from exc


#: Plans read from a store at a time in a streamed load (the NumberPlans alive at once).
STREAM_BATCH = 100
#: Numbers compiled between two freezes of a load.  Each freeze first walks
#: what is not frozen yet: about 100 plans and their compiled form, some
#: 5,000 objects at 5 rules (1-2 ms); a batch of 1,000 plans made it 49,000
#: objects and 7-9 ms.
FREEZE_EVERY = 100


def _stream_into(engine, store, impl, settings: PlanSet) -> None:
    """Compile every plan of ``store`` into ``engine``, one batch of plans alive at a time.

    A plan the engine cannot compile is left out like an invalid one: added
    to ``store.quarantined`` and logged (``plan_quarantined``) once the
    stream ends, after the store has reported its own (a complete
    ``iter_plans`` replaces ``quarantined`` at its end).
    """
    uncompiled: dict[str, PlanError] = {}
    for batch in store.iter_plans(batch=STREAM_BATCH):
        _put_in_batches(engine, batch, impl, settings, refused=uncompiled)
        del batch  # the plans die here: only the compiled form stays
        time.sleep(0)  # offer the interpreter to the threads that route
    store._quarantine(uncompiled, adding=True)


def _put_in_batches(engine, plans, impl, settings: PlanSet, *, refused: dict[str, PlanError] | None = None) -> None:
    """Compile ``plans`` into ``engine`` one at a time, freezing every FREEZE_EVERY numbers.

    One C call per number, never one for the whole set: another thread
    waiting to route gets the interpreter within the switch interval, and a
    collection of the cyclic GC meanwhile walks at most FREEZE_EVERY
    numbers' objects, not everything compiled so far.  With ``refused``, a
    plan the engine cannot compile is left out and its PlanError put there
    by number; without, the PlanError propagates.
    """
    for i, plan in enumerate(plans, 1):
        try:
            _put(engine, plan, impl, settings)
        except PlanError as exc:
            if refused is None:
                raise
            refused[plan.number] = exc
        if i % FREEZE_EVERY == 0:
            _frozen_after_load(i)


def _frozen_after_load(loaded: int) -> None:
    """After a load of ``loaded`` numbers, move everything alive now out of the cyclic GC's generations.

    A loaded plan set is many long-lived objects (with the reference engine
    dozens per number; with the compiled engine about one, most being
    untracked as they are packed).  Left in the oldest generation, every
    full collection walks all of them while holding the interpreter:
    measured before this, a reload of 10,000 numbers in a thread stalled
    route() in another thread for 1.2 s (issue 12 measured 6.3 s at
    100,000).  Frozen objects are never walked again; they are still freed
    by reference counting when a reload drops them (compiled plans form no
    cycles).  Loads call this every FREEZE_EVERY numbers, so each
    collection walks only what was made since the last one.

    The collection first reclaims the cyclic garbage among the objects not
    yet frozen, so no unreachable cycle is frozen.  The price: objects of
    the application that are part of a reference cycle and alive at that
    moment (another thread's request in flight) are frozen with the plans
    and, should they become garbage later, never collected: a few objects
    per freeze, at most ``loaded / FREEZE_EVERY`` freezes per load, and
    loads are rare (start, a change of the top-level settings).  A load of
    fewer than FREEZE_EVERY numbers (an application's small plan set, the
    tests) therefore freezes nothing: it leaves the process's collector
    untouched.  Unfreezing is never needed.
    """
    if loaded < FREEZE_EVERY:
        return
    gc.collect()
    gc.freeze()


def _opened(store):
    from .stores import PlanStore, open_store  # stores import this module for compile_check

    return store if isinstance(store, PlanStore) else open_store(store, create=False)


def _prefixes_of(plans: PlanSet) -> PrefixTable:
    return load_segments_cached(plans.segments) if plans.segments else numbers.default_segments()


def _compiled(impl, plans: PlanSet, prefixes, shared):
    """``impl``'s engine for ``plans``; a value it cannot hold becomes a PlanError naming the number."""
    try:
        return impl.Engine(plans, prefixes, shared)
    except PlanError:
        raise
    except _COMPILE_FAILURES as exc:
        raise _compile_error(impl, plans, prefixes, shared, exc) from exc


def _compile_error(impl, plans: PlanSet, prefixes, shared, exc: BaseException) -> PlanError:
    """The error of the first number that fails alone (only on the failure path: O(numbers) compiles)."""
    for plan in plans.numbers:
        try:
            impl.Engine(attrs.evolve(plans, numbers=(plan,)), prefixes, shared)
        except _COMPILE_FAILURES as alone:
            exc = alone
            return PlanError(f"the {impl.name} engine cannot compile this plan: {type(exc).__name__}: {exc}",
                             source=plans.source, number=plan.number)
    return PlanError(f"the {impl.name} engine cannot compile these plans: {type(exc).__name__}: {exc}",
                     source=plans.source)
