"""Keeping a router's plans in step with their store.

A :class:`PlanWatcher` asks the store what changed since the version the
router's plans came from (:meth:`~tel400.stores.PlanStore.changes_since`,
cheap) at most every ``interval_s`` seconds, and applies it:

* the store names the changed numbers: each is read alone
  (``store.load_number``) and :meth:`tel400.Router.update` replaces only
  those entries (a number gone from the store stops being routed).  The
  work is proportional to the changed numbers' plans, not to the plan set.
* the top-level settings changed, or the store cannot tell (a file store,
  a version older than its change log): everything is read again, streamed
  number by number into a new engine that is swapped in at the end (as
  :meth:`tel400.Router.from_store` does); the router then reads plans back
  from the store instead of holding them.

Use it one of two ways:

* ``watcher.start()``: a daemon thread polls in the background.  It restarts
  itself in children forked with :func:`os.fork` (``multiprocessing``,
  gunicorn).
* ``watcher.poll()`` from the request path: a clock comparison when nothing
  is due, so it can run on every call.  This is the way for processes a C
  program forks without telling Python (Kamailio's workers): a one-number
  change then costs that worker one store read and one compile between two
  requests.

A change that does not validate is refused: the router keeps its plans, the
refusal is logged once per bad version (``plan_change_refused``, with the
PlanError text) and counted; the next good version is taken as usual.  The
unit of refusal is the number: a number whose stored plan became invalid
keeps the plan the router had for it (``plan_change_refused`` with the
number), while the changes to every other number are taken; a number the
router never had a good plan for stays unrouted and listed in
:attr:`PlanWatcher.quarantined`.  A store that cannot be reached is retried
at the next interval.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

import structlog

from . import _impl
from .exceptions import BackendError, NumberError, PlanError
from .stores import PlanStore, open_store

_log = structlog.get_logger("tel400.watch")
_watchers: weakref.WeakSet[PlanWatcher] = weakref.WeakSet()

#: Seconds a background watcher waits after swapping in a fully reloaded
#: engine before taking the old one apart: every call that picked the old
#: engine up has long finished its lookup by then.
RETIRE_GRACE_S = 1.0


class PlanWatcher:
    """Reloads ``router`` from ``store`` when the store's version changes.

    Args:
        router: the :class:`~tel400.Router` to keep current.
        store: a :class:`~tel400.stores.PlanStore`, or a path or URL for
            :func:`~tel400.stores.open_store`.
        interval_s: how often to ask the store (0.5 s: a change reaches every
            process within about a second).
        version: the version the router's plans came from, if known (then the
            first poll does not reload the same plans again); by default the
            router's ``plans_version`` (set by :meth:`tel400.Router.from_store`).
    """

    def __init__(self, router, store: PlanStore | str, *, interval_s: float = 0.5, version=None,
                 clock=time.monotonic) -> None:
        self.router = router
        self.store = open_store(store) if not isinstance(store, PlanStore) else store
        self.interval_s = interval_s
        self._clock = clock
        self._due = 0.0
        self._version = version if version is not None else getattr(router, "plans_version", None)
        self._retired = None  # an engine a full reload replaced, for the background thread to take apart
        self._refused_version = None  # the store version refusals were last logged for
        self._refused_numbers: set[str | None] = set()  # ... and the numbers (None: the whole change)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.reloads = 0
        #: the numbers the last poll that changed something applied; ``None``
        #: after a full reload (every number may have changed)
        self.applied: frozenset[str] | None = None
        self.refusals = 0
        self.errors = 0
        _watchers.add(self)

    def poll(self, *, force: bool = False, wait_s: float = 0.0) -> bool:
        """Reload if the store changed and the interval has passed; ``True`` if it reloaded.

        Args:
            force: poll now, whatever the interval says.
            wait_s: if another thread of this process is polling right now,
                wait up to this long for it to finish, then poll (0: return
                ``False`` at once).  A writer that must route by its own
                change when this returns (the HTTP admin API) waits; the
                request path does not.

        A refused change and an unreachable store are logged and counted
        (:attr:`refusals`, :attr:`errors`), not raised: the router keeps its
        plans.  A changed name that is not a number is skipped.
        """
        now = self._clock()
        if not force and now < self._due:
            return False
        taken = self._lock.acquire(timeout=wait_s) if wait_s > 0 else self._lock.acquire(blocking=False)
        if not taken:
            return False  # another thread of this process is polling right now
        try:
            self._due = now + self.interval_s
            return self._check()
        finally:
            self._lock.release()

    def _check(self) -> bool:
        changes = None
        try:
            changes = self.store.changes_since(self._version)
            if changes.everything:
                applied = self._reload_everything(changes.version)
            elif changes.numbers:
                applied = self._apply(changes.numbers, changes.version)
            else:
                self._version = changes.version
                return False
        except NumberError as exc:  # a store named a changed "number" that is none: refuse the change
            self._refuse(None if changes is None else changes.version, str(exc), number=None)
            return False
        except PlanError as exc:
            self._refuse(None if changes is None else changes.version, str(exc), number=exc.number)
            return False
        except BackendError as exc:
            self.errors += 1
            _log.warning("plan_store_unavailable", store=self.store.url, error=str(exc))
            return False
        if applied:
            self.reloads += 1
        return applied

    def _apply(self, changed: frozenset[str], version) -> bool:
        """Read each changed number alone and replace only its entry.  O(the changed plans).

        A number whose stored plan is now invalid keeps its current entry
        (refused, logged with the number); the others are applied together.
        """
        plans, removed = [], []
        for number in sorted(changed):
            if _impl.normalize_or_none(number) != number:
                continue  # not a number (a file's numbers[i]): nothing routes by it
            try:
                plan = self.store.load_number(number)
            except PlanError as exc:
                self._quarantine(number, str(exc))
                if self.router._routes(number):
                    self._refuse(version, str(exc), number=number)
                continue
            self._quarantine(number, None)
            if plan is None:
                removed.append(number)
            else:
                plans.append(plan)
        while True:
            try:
                self.router.update(plans, removed=removed)
                break
            except PlanError as exc:  # an engine cannot hold it: that number keeps its entry
                self._refuse(version, str(exc), number=exc.number)
                kept = [plan for plan in plans if plan.number != exc.number]
                if len(kept) == len(plans):  # an error naming no given number: refuse them all
                    raise
                plans = kept
        self._version = self.router.plans_version = version
        if not (plans or removed):
            return False
        self.applied = frozenset(plan.number for plan in plans) | frozenset(removed)
        _log.info("plans_updated", store=self.store.url, changed=len(self.applied),
                  numbers=",".join(sorted(self.applied)[:10]), version=str(version))
        return True

    def _reload_everything(self, version) -> bool:
        """Stream the whole store into a new engine and swap it; numbers left out keep their entries."""
        old, kept = self.router._reload_from_store(self.store, version=version)
        for number in kept:
            self._refuse(version, self.store.quarantined[number], number=number)
        self._version = version
        self.applied = None
        if self._thread is not None and threading.current_thread() is self._thread:
            self._retired = old  # taken apart by _run, outside the poll lock
        return True

    def _quarantine(self, number: str, error: str | None) -> None:
        """Record (or, with ``None``, clear) a number whose stored plan is invalid.  O(quarantined)."""
        others = {n: e for n, e in self.store.quarantined.items() if n != number}
        self.store.quarantined = others if error is None else {**others, number: error}

    def _take_apart_retired(self) -> None:
        """Let the engine a full reload replaced go without stalling routing.

        Dropping the last reference to a large engine frees it in one C call;
        the background thread instead waits out the calls that may still be
        using it and then takes it apart number by number (the interpreter
        changes hands in between).  On the request path (``poll()``) the
        old engine is simply dropped.
        """
        old, self._retired = self._retired, None
        if old is None or self._stop.wait(RETIRE_GRACE_S):
            return
        from .router import _dismantle

        _dismantle(old)

    def _refuse(self, version, error: str, *, number: str | None) -> None:
        """Count and log a refused change (of one number, or ``None``: of all) once per store version."""
        if version != self._refused_version:
            self._refused_version, self._refused_numbers = version, set()
        if number in self._refused_numbers:
            return
        self._refused_numbers.add(number)
        self.refusals += 1
        _log.error("plan_change_refused", store=self.store.url, error=error, number=number,
                   kept=self.router.number_count)

    @property
    def quarantined(self) -> dict[str, str]:
        """Numbers the store holds that are not routed by their stored plan, with the reason.

        Each is either not routed at all (no good plan was ever loaded for
        it in this process) or routed by the last good plan; see the module
        documentation.  Exported as the ``tel400_plans_quarantined`` gauge.
        """
        return dict(self.store.quarantined)

    # -- background thread --------------------------------------------------------

    def start(self) -> PlanWatcher:
        """Poll in a daemon thread; returns ``self``."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tel400-plan-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll(force=True)
                self._take_apart_retired()
            except Exception:  # never let the thread die: the next interval tries again
                self.errors += 1
                _log.exception("plan_watcher_failed", store=self.store.url)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._thread is not None:  # threads do not survive a fork: start ours again
            self._thread = None
            self.start()


def _restart_after_fork() -> None:
    for watcher in list(_watchers):
        watcher._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)
