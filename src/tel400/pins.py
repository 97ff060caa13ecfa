"""PIN access: constant-time checks, salted hashes, and the lockout rules.

A plan gives its PIN either in clear (``pin = "1234"``) or as a salted hash
(``pin_hash = "scrypt:32768:8:1$salt$hex"`` or
``"pbkdf2:sha256:600000$salt$hex"``: the formats of Werkzeug's
``generate_password_hash``, so existing tooling can produce them;
``tel400 pin-hash`` makes one too).  A hash's cost is bounded
(:data:`MAX_SCRYPT_WORK`, :data:`MAX_PBKDF2_WORK`): a plan cannot make every
try take seconds.

Comparisons never depend on where the first wrong digit is: a clear PIN is
compared as a SHA-256 digest with :func:`hmac.compare_digest`, a hashed one
through its key-derivation function.  Deriving a scrypt key takes tens of
milliseconds, far too long to do per call, so each verified candidate's
outcome is remembered under a keyed digest (a per-process random key, never
the PIN itself) in a small LRU, and the right PIN in a slot of its own that
wrong guesses cannot evict: a caller pays the derivation once per distinct
PIN tried.  The router keeps each number's :class:`PinCheck` over reloads
while its PIN is unchanged (``tel400.shared.Shared.pin_checks``), so a plan
change anywhere does not make every right PIN derive again.  Derivations run at most :attr:`PinPolicy.derivations` at a time
per router; a check that would need one more is answered at once
(:class:`PinCheckBusy`, the decision ``reject``/``backend_error``).

:class:`PinGate` is the PIN step of the decision order, the one both engines
call: wrong PINs lock one caller out of one number (:data:`LOCKOUT_FAILURES`
per :data:`LOCKOUT_WINDOW_S`), and the number itself for every caller
(:data:`NUMBER_LOCKOUT_FAILURES` per :data:`NUMBER_LOCKOUT_WINDOW_S`), so
that rotating caller ids does not buy more guesses.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import os
import re
import threading
from collections import OrderedDict

import attrs
import structlog

from .decision import Step
from .exceptions import BackendError

PIN_RE = re.compile(r"\A[0-9]{4,8}\Z")

#: Wrong PINs from one caller to one number that lock the caller out …
LOCKOUT_FAILURES = 5
#: … counted over this many seconds from the first failure, which is also
#: how long the lockout lasts.
LOCKOUT_WINDOW_S = 3600
#: Wrong PINs to one number from all callers together that lock the number
#: for every caller, the right PIN included …
NUMBER_LOCKOUT_FAILURES = 20
#: … counted over this many seconds from the first failure, which is also
#: how long the number stays locked.
NUMBER_LOCKOUT_WINDOW_S = 600
#: Key derivations one router runs at a time; a PIN check that needs one
#: more is answered ``backend_error`` at once instead of waiting.
MAX_DERIVATIONS = 2

#: The most work a scrypt ``pin_hash`` may ask for, as N*r*p: twice
#: ``tel400 pin-hash``'s default (2**15 * 8 * 1), ~100-250 ms a try on one
#: core of a 2020s server.  Memory is 128*N*r bytes, so it is bounded too
#: (64 MiB at most).
MAX_SCRYPT_WORK = 1 << 19
#: The most work a pbkdf2 ``pin_hash`` may ask for: iterations times blocks
#: of output (a block is the digest's size), by digest; about as long as
#: :data:`MAX_SCRYPT_WORK` (sha512 costs ~2.4 times sha256 per iteration).
MAX_PBKDF2_WORK = {"sha256": 600_000, "sha512": 250_000}
_DIGEST_SIZE = {"sha256": 32, "sha512": 64}

_HASH_RE = re.compile(
    r"\A(?:scrypt:(?P<n>[0-9]+):(?P<r>[0-9]+):(?P<p>[0-9]+)"
    r"|pbkdf2:(?P<digest>sha256|sha512):(?P<iterations>[0-9]+))"
    r"\$(?P<salt>[^$\x00-\x20]{1,128})\$(?P<hash>[0-9a-f]{32,256})\Z"
)
_PROCESS_KEY = os.urandom(32)
_log = structlog.get_logger("tel400.pins")


def _digest(pin: str) -> bytes:
    return hashlib.sha256(pin.encode()).digest()


def check_hash_format(pin_hash: str) -> None:
    """Raise ``ValueError`` unless ``pin_hash`` is a supported salted hash of bounded cost.

    Cost: O(length); no derivation is run.
    """
    m = _HASH_RE.match(pin_hash)
    if not m:
        raise ValueError(
            "expected 'scrypt:N:r:p$salt$hexhash' or 'pbkdf2:sha256:iterations$salt$hexhash'"
        )
    if len(m.group("hash")) % 2:
        raise ValueError("the hash part has an odd number of hex digits")
    if m.group("n"):
        n, r, p = int(m.group("n")), int(m.group("r")), int(m.group("p"))
        if n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise ValueError("scrypt parameters: N a power of two, r and p at least 1")
        if n * r * p > MAX_SCRYPT_WORK:
            raise ValueError(
                f"scrypt N*r*p is {n * r * p}, at most {MAX_SCRYPT_WORK} (every PIN try would take too long; "
                "'tel400 pin-hash' makes 32768:8:1)"
            )
        return
    iterations, digest = int(m.group("iterations")), m.group("digest")
    if iterations < 1:
        raise ValueError("pbkdf2 needs at least one iteration")
    blocks = -(-len(m.group("hash")) // 2 // _DIGEST_SIZE[digest])
    if iterations * blocks > MAX_PBKDF2_WORK[digest]:
        per_block = MAX_PBKDF2_WORK[digest] // blocks
        raise ValueError(
            f"pbkdf2:{digest} iterations: at most {per_block} for a {len(m.group('hash')) // 2}-byte hash "
            f"({blocks} blocks of output; at most {MAX_PBKDF2_WORK[digest]} for one block): "
            "every PIN try would take too long"
        )


def _derive(pin_hash: str, candidate: str) -> bytes:
    m = _HASH_RE.match(pin_hash)
    assert m is not None  # checked when the plan was loaded
    salt = m.group("salt").encode()
    if m.group("n"):
        n, r, p = int(m.group("n")), int(m.group("r")), int(m.group("p"))
        return hashlib.scrypt(
            candidate.encode(), salt=salt, n=n, r=r, p=p, maxmem=132 * n * r * p + (1 << 20),
            dklen=len(m.group("hash")) // 2,
        )
    return hashlib.pbkdf2_hmac(
        m.group("digest"), candidate.encode(), salt, int(m.group("iterations")),
        dklen=len(m.group("hash")) // 2,
    )


def make_hash(pin: str, *, n: int = 1 << 15, r: int = 8, p: int = 1) -> str:
    """A salted scrypt hash of a PIN, in the format :class:`PinCheck` reads."""
    if not PIN_RE.match(pin):
        raise ValueError("a PIN is 4 to 8 digits")
    salt = os.urandom(12).hex()
    key = hashlib.scrypt(pin.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p + (1 << 20), dklen=32)
    return f"scrypt:{n}:{r}:{p}${salt}${key.hex()}"


class PinCheckBusy(Exception):
    """A hashed PIN needed a key derivation while every derivation slot was taken."""


class PinCheck:
    """Checks candidates against one plan's PIN, clear or hashed.

    Cost: O(1) for a clear PIN; one key derivation per distinct candidate
    for a hashed one (then O(1) from the cache; the right PIN, once
    verified, stays cached whatever else is tried).
    """

    __slots__ = ("_clear_digest", "_hash", "_expected", "_cache", "_lock", "_right")

    _CACHE_SIZE = 256

    def __init__(self, pin: str | None = None, pin_hash: str | None = None) -> None:
        if (pin is None) == (pin_hash is None):
            raise ValueError("give exactly one of pin and pin_hash")
        self._clear_digest = _digest(pin) if pin is not None else None
        self._hash = pin_hash
        self._expected = bytes.fromhex(pin_hash.rsplit("$", 1)[1]) if pin_hash else b""
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()
        self._right: bytes | None = None  # the right PIN's token, kept apart from the LRU

    def same_pin(self, other: PinCheck) -> bool:
        """Whether ``other`` checks the same PIN (or PIN hash) as this.  O(1)."""
        return (self._clear_digest, self._hash) == (other._clear_digest, other._hash)

    def __call__(self, candidate: str, slots: threading.Semaphore | None = None) -> bool:
        """Whether ``candidate`` is the PIN, in time independent of its digits.

        Args:
            candidate: what the caller keyed.
            slots: taken (without waiting) for a key derivation; ``None``
                derives without a bound.

        Raises:
            PinCheckBusy: a derivation was needed and no slot was free.
        """
        if not isinstance(candidate, str) or not PIN_RE.match(candidate):
            return False
        if self._clear_digest is not None:
            return hmac.compare_digest(_digest(candidate), self._clear_digest)
        token = hmac.new(_PROCESS_KEY, candidate.encode(), hashlib.sha256).digest()
        with self._lock:
            if self._right is not None and hmac.compare_digest(token, self._right):
                return True
            known = self._cache.get(token)
            if known is not None:
                self._cache.move_to_end(token)
                return known
        if slots is None:
            result = self._derive_and_compare(candidate)
        elif slots.acquire(blocking=False):
            try:
                result = self._derive_and_compare(candidate)
            finally:
                slots.release()
        else:
            raise PinCheckBusy()
        with self._lock:
            if result:
                self._right = token
            else:
                self._cache[token] = False
                if len(self._cache) > self._CACHE_SIZE:
                    self._cache.popitem(last=False)
        return result

    def _derive_and_compare(self, candidate: str) -> bool:
        return hmac.compare_digest(_derive(self._hash, candidate), self._expected)


def _whole(name: str, minimum: int, maximum: int):
    def check(instance, attribute, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ValueError(f"{name}: expected a whole number from {minimum} to {maximum}, got {value!r}")
    return check


_DAY_S = 86400  # windows are counter lifetimes: a day at most keeps every backend's keys short-lived


@attrs.frozen
class PinPolicy:
    """A router's PIN rules (``tel400.Router(plans, pin_policy=...)``), tunable per deployment.

    Attributes:
        caller_failures: wrong PINs from one caller to one number that lock
            that caller out of that number …
        caller_window_s: … within this many seconds of the first, which is
            also how long the lockout lasts.
        number_failures: wrong PINs to one number from all callers together
            that lock the number for every caller, the right PIN included;
            0 turns the number-wide lockout off …
        number_window_s: … within this many seconds of the first, which is
            also how long the number stays locked.
        derivations: key derivations of hashed PINs at a time; a check that
            needs one more is answered ``backend_error`` at once.

    Bounds: failures 1-1000 per caller, 0-100,000 per number; windows
    1-86,400 s; derivations 1-64.  Out of bounds raises ``ValueError``.
    """

    caller_failures: int = attrs.field(default=LOCKOUT_FAILURES, validator=_whole("caller_failures", 1, 1000))
    caller_window_s: int = attrs.field(default=LOCKOUT_WINDOW_S, validator=_whole("caller_window_s", 1, _DAY_S))
    number_failures: int = attrs.field(default=NUMBER_LOCKOUT_FAILURES,
                                       validator=_whole("number_failures", 0, 100_000))
    number_window_s: int = attrs.field(default=NUMBER_LOCKOUT_WINDOW_S,
                                       validator=_whole("number_window_s", 1, _DAY_S))
    derivations: int = attrs.field(default=MAX_DERIVATIONS, validator=_whole("derivations", 1, 64))

    @classmethod
    def from_options(cls, number_lockout: str | None = None, derivations: int | None = None) -> PinPolicy:
        """The policy of the adapters' ``--pin-number-lockout FAILURES/SECONDS`` and ``--pin-derivations N``.

        Raises:
            ValueError: an option that is not of that form.
        """
        changes = {}
        if number_lockout is not None:
            failures, _, seconds = number_lockout.partition("/")
            if not (failures.isascii() and failures.isdigit() and seconds.isascii() and seconds.isdigit()):
                raise ValueError(
                    f"--pin-number-lockout: expected FAILURES/SECONDS like 20/600, got {number_lockout!r}")
            changes.update(number_failures=int(failures), number_window_s=int(seconds))
        if derivations is not None:
            changes["derivations"] = derivations
        return cls(**changes)


def caller_key(number: str, caller: str | None) -> str:
    """The counter key of one caller's wrong PINs to one number (``anonymous`` when withheld)."""
    return f"tel400:{{{number}}}:pin:{caller or 'anonymous'}"


def number_key(number: str) -> str:
    """The counter key of the wrong PINs to one number from every caller.

    Every caller key has ``:pin:`` where this one has ``:pin-number``, so
    no caller, whatever it is called, can share it.
    """
    return f"tel400:{{{number}}}:pin-number"


class LocalWindows:
    """Wrong PINs per number counted in this process, for when the counter backend cannot.

    A dead Redis, or a ``memory://`` table that strangers filled before a
    number's first wrong PIN, raises on the number-wide count; with
    ``on_backend_error = "allow"`` every guess would then reach the PIN check
    unlimited.  The gate counts those failures here instead: a lockout per
    process is weaker than one per deployment, but it bounds the guesses.
    One entry per number with a PIN that saw such a failure; expired entries
    are dropped when there are more than ``prune_at``.
    """

    def __init__(self, prune_at: int = 4096) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # number -> (opened at, failures)
        self._lock = threading.Lock()
        self.prune_at = prune_at

    def failures(self, number: str, now: float, window_s: int) -> int:
        """Failures in the window still open at ``now`` (0 if none).  O(1)."""
        entry = self._windows.get(number)
        if entry is None or now - entry[0] >= window_s:
            return 0
        return entry[1]

    def add(self, number: str, now: float, window_s: int) -> int:
        """Count one failure (the window opens at the first); the count.  O(1), amortised."""
        with self._lock:
            entry = self._windows.get(number)
            if entry is None or now - entry[0] >= window_s:
                entry = (now, 0)
            entry = (entry[0], entry[1] + 1)
            self._windows[number] = entry
            if len(self._windows) > self.prune_at:
                self._windows = {n: e for n, e in self._windows.items() if now - e[0] < window_s}
            return entry[1]

    def __len__(self) -> int:
        return len(self._windows)


class PinGate:
    """Step 3 of the decision order for one number: the PIN and its lockouts.

    Both engines call :meth:`decide`, so they decide alike by construction.
    ``shared`` is the router's state (:class:`tel400.shared.Shared`): its
    counters, :class:`PinPolicy`, derivation slots and statistics.
    """

    __slots__ = ("number", "check", "fail_open", "shared", "_number_key")

    def __init__(self, number: str, check: PinCheck, fail_open: bool, shared) -> None:
        self.number = number
        self.check = check
        self.fail_open = fail_open
        self.shared = shared
        self._number_key = number_key(number)

    def decide(self, caller_n: str | None, pin: str | None, now: float, trace: list | None = None,
               dry_run: bool = False) -> str | None:
        """``None`` when the caller may go on, else the decision's reason.

        Reasons: ``pin_required`` (the action is then ``collect_pin``),
        ``bad_pin``, ``pin_locked``, ``backend_error``; all but the first
        reject.  A dry run reads the counters but changes none.

        Cost: two counter reads; on a wrong PIN two writes; a key
        derivation for a hashed PIN not tried before.
        """
        shared = self.shared
        policy: PinPolicy = shared.pin_policy
        counters = shared.counters
        key = caller_key(self.number, caller_n)
        by_number = policy.number_failures > 0
        try:
            failures = counters.pin_failures(key, now, policy.caller_window_s)
            number_failures = 0
            if by_number:
                number_failures = counters.pin_failures(self._number_key, now, policy.number_window_s)
        except BackendError as exc:
            # Without the counts the caller's lockout cannot be enforced; the
            # PIN itself is still checked, so fail open or closed by the plan's
            # policy.  The number's lockout falls back on this process's count.
            if self._backend_failed(exc, trace, dry_run):
                return "backend_error"
            failures = number_failures = 0
        if by_number:
            number_failures = max(number_failures,
                                  shared.pin_fallback.failures(self.number, now, policy.number_window_s))
        if by_number and number_failures >= policy.number_failures:
            _say(trace, f"number locked: {number_failures} wrong PINs from all callers "
                        f"within {policy.number_window_s} s")
            return "pin_locked"
        if failures >= policy.caller_failures:
            _say(trace, f"locked: {failures} wrong PINs within {policy.caller_window_s} s")
            return "pin_locked"
        if pin is None:
            _say(trace, "PIN required")
            return "pin_required"
        try:
            right = self.check(pin, shared.pin_slots)
        except PinCheckBusy:
            if not dry_run:
                shared.pin_events["busy"] += 1
            _say(trace, f"every PIN check slot busy ({policy.derivations}): not checked")
            return "backend_error"
        if right:
            if failures and not dry_run:
                try:
                    counters.clear_pin_failures(key)
                except BackendError as exc:
                    self._backend_failed(exc, trace, dry_run)
            _say(trace, "PIN accepted", passed=True)
            return None
        return self._wrong(key, failures, number_failures, now, trace, dry_run)

    def _wrong(self, key: str, failures: int, number_failures: int, now: float, trace, dry_run: bool) -> str:
        """Count a wrong PIN against the caller and the number; the reason to answer."""
        policy: PinPolicy = self.shared.pin_policy
        counters = self.shared.counters
        by_number = policy.number_failures > 0
        if dry_run:
            failures += 1
            number_failures += 1
        else:
            try:
                failures = counters.add_pin_failure(key, now, policy.caller_window_s)
            except BackendError as exc:
                # The failure could not be counted towards a lockout.
                if self._backend_failed(exc, trace, dry_run):
                    return "backend_error"
                failures += 1
            if by_number:
                try:
                    number_failures = counters.add_pin_failure(self._number_key, now, policy.number_window_s)
                except BackendError as exc:
                    if self._backend_failed(exc, trace, dry_run):
                        return "backend_error"
                    # Uncounted, a failure would give a guesser one more try:
                    # this process counts it (LocalWindows).
                    local = self.shared.pin_fallback.add(self.number, now, policy.number_window_s)
                    number_failures = max(number_failures + 1, local)
                if number_failures == policy.number_failures:
                    self._number_locked(number_failures)
        if by_number and number_failures >= policy.number_failures:
            _say(trace, f"wrong PIN ({number_failures} to this number); "
                        f"number locked for {policy.number_window_s} s")
            return "pin_locked"
        if failures >= policy.caller_failures:
            _say(trace, f"wrong PIN ({failures}); caller locked out for {policy.caller_window_s} s")
            return "pin_locked"
        _say(trace, f"wrong PIN ({failures} of {policy.caller_failures})")
        return "bad_pin"

    def _number_locked(self, failures: int) -> None:
        # Only the failure that reaches the limit gets here (counters add
        # atomically), so this is logged once per lockout, not per call.
        policy: PinPolicy = self.shared.pin_policy
        self.shared.pin_events[("number_locked", self.number)] += 1
        _log.warning("pin_number_locked", number=self.number, failures=failures,
                     window_s=policy.number_window_s)

    def _backend_failed(self, exc: Exception, trace, dry_run: bool) -> bool:
        """Apply the plan's ``on_backend_error``: True to reject the call."""
        policy = "allow" if self.fail_open else "reject"
        if not dry_run:
            self.shared.backend_errors[policy] += 1
        if trace is not None:
            trace.append(Step("backend", None, self.fail_open,
                              f"counter backend failed ({exc}); on_backend_error = {policy}"))
        return not self.fail_open


def _say(trace: list | None, detail: str, passed: bool = False) -> None:
    """Add the PIN step's line to an explanation, if one is being made."""
    if trace is not None:
        trace.append(Step("pin", None, passed, detail))


def check_executor(policy: PinPolicy) -> concurrent.futures.ThreadPoolExecutor:
    """Threads for the decisions that may check a hashed PIN, apart from every other pool.

    A few more threads than derivation slots: while every slot derives,
    the others still answer cached PINs, locked numbers and ``backend_error``
    for the checks that find no free slot, at once.
    """
    return concurrent.futures.ThreadPoolExecutor(max_workers=policy.derivations + 4,
                                                 thread_name_prefix="tel400-pin")
