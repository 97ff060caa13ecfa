"""Router state that outlives a reload, shared by both engines: counters, randomness, statistics."""

from __future__ import annotations

import array
import threading
from collections import Counter

from . import pins
from .outcomes import OUTCOMES


_NONE: dict = {}  # what a number without kept states has (never written)


class Shared:
    """Router state that outlives a reload: counters, randomness, statistics."""

    def __init__(self, counters, rng, calls, pin_policy: pins.PinPolicy | None = None) -> None:
        self.counters = counters
        self.rng = rng
        #: The compiled engine's generator, seeded from ``rng`` when first needed.
        self.fast_rng = None
        self.calls = calls
        #: number -> array('q') of decisions by OUTCOMES position.  A number
        #: removed (Engine.remove) loses its statistics, so that adding and
        #: removing numbers in a loop cannot grow a process; a full reload
        #: drops none (those of numbers it no longer routes stay: docs/limits.md).
        self.outcomes: dict[str, array.array] = {}
        #: backend failures, by the policy that was applied.
        self.backend_errors: Counter[str] = Counter()
        #: round-robin states, kept over reloads and edits of other rules:
        #: number -> {(number, rule, targets, weights): state}.  Indexed by
        #: number so that compiling one number replaces only its own
        #: (tel400.compiler.Compiler.compile) and removing it drops them.
        self.round_robin: dict[str, dict[tuple, array.array]] = {}
        #: PIN checks, kept over reloads with the PINs they verified (a
        #: reload must not make every right PIN derive again): number ->
        #: {(number, pin, pin_hash): check}.  Like ``round_robin``, the engine
        #: in service's: only its numbers, and only their current plans'.
        self.pin_checks: dict[str, dict[tuple, pins.PinCheck]] = {}
        #: the PIN rules, the key derivations they allow at a time, and what
        #: they did: "busy" (no derivation slot) and ("number_locked", number).
        self.pin_policy = pin_policy or pins.PinPolicy()
        self.pin_slots = threading.BoundedSemaphore(self.pin_policy.derivations)
        self.pin_events: Counter = Counter()
        #: wrong PINs per number the counter backend could not count (pins.LocalWindows)
        self.pin_fallback = pins.LocalWindows()
        #: number -> NumberPlan | None, set by the router: where explain and
        #: dry runs of the compiled engine read the plan they trace (engines
        #: keep only the compiled form).
        self.plan_source = None

    def outcome_counts(self, label: str) -> array.array:
        counts = self.outcomes.get(label)
        if counts is None:
            counts = self.outcomes.setdefault(label, array.array("q", bytes(8 * len(OUTCOMES))))
        return counts

    def decision_counts(self) -> dict[tuple[str, str, str], int]:
        out = {}
        for label, counts in list(self.outcomes.items()):
            for (action, reason), count in zip(OUTCOMES, counts):
                if count:
                    out[(label, action, reason)] = count
        return out

    def round_robin_state(self, ident: tuple, n: int, carried: dict) -> array.array:
        """The state of a round-robin rule: kept if the rule is unchanged.

        ``ident`` is (number, rule, targets, weights); ``carried`` collects
        the number's states being compiled (ident -> state).  O(1).
        """
        state = self.round_robin.get(ident[0], _NONE).get(ident)
        if state is None or len(state) != n:
            state = array.array("q", bytes(8 * n))
        carried[ident] = state
        return state

    def pin_check(self, number: str, pin: str | None, pin_hash: str | None, carried: dict) -> pins.PinCheck:
        """The PIN check of a number: the kept one, with what it verified, if its PIN is unchanged.

        Like :meth:`round_robin_state`, it changes nothing here: ``carried``
        (the new engine's) is adopted only once the engine is compiled.
        """
        ident = (number, pin, pin_hash)
        check = self.pin_checks.get(number, _NONE).get(ident)
        if check is None:
            check = pins.PinCheck(pin, pin_hash)
        carried[ident] = check
        return check

