"""PIN access: constant-time checks, salted hashes, and the lockout rule.

A plan gives its PIN either in clear (``pin = "1234"``) or as a salted hash
(``pin_hash = "scrypt:32768:8:1$salt$hex"`` or
``"pbkdf2:sha256:600000$salt$hex"``: the formats of Werkzeug's
``generate_password_hash``, so existing tooling can produce them;
``tel400 pin-hash`` makes one too).

Comparisons never depend on where the first wrong digit is: a clear PIN is
compared as a SHA-256 digest with :func:`hmac.compare_digest`, a hashed one
through its key-derivation function.  Deriving a scrypt key takes tens of
milliseconds, far too long to do per call, so each verified candidate's
outcome is remembered under a keyed digest (a per-process random key, never
the PIN itself) in a small LRU: a caller pays the derivation once per
distinct PIN tried.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections import OrderedDict

PIN_RE = re.compile(r"\A[0-9]{4,8}\Z")

#: Wrong PINs from one caller to one number that lock the caller out …
LOCKOUT_FAILURES = 5
#: … counted over this many seconds from the first failure, which is also
#: how long the lockout lasts.
LOCKOUT_WINDOW_S = 3600

_HASH_RE = re.compile(
    r"\A(?:scrypt:(?P<n>[0-9]+):(?P<r>[0-9]+):(?P<p>[0-9]+)"
    r"|pbkdf2:(?P<digest>sha256|sha512):(?P<iterations>[0-9]+))"
    r"\$(?P<salt>[^$\x00-\x20]{1,128})\$(?P<hash>[0-9a-f]{32,256})\Z"
)
_PROCESS_KEY = os.urandom(32)


def _digest(pin: str) -> bytes:
    return hashlib.sha256(pin.encode()).digest()


def check_hash_format(pin_hash: str) -> None:
    """Raise ``ValueError`` unless ``pin_hash`` is a supported salted hash."""
    m = _HASH_RE.match(pin_hash)
    if not m:
        raise ValueError(
            "expected 'scrypt:N:r:p$salt$hexhash' or 'pbkdf2:sha256:iterations$salt$hexhash'"
        )
    if len(m.group("hash")) % 2:
        raise ValueError("the hash part has an odd number of hex digits")
    if m.group("n"):
        n = int(m.group("n"))
        if n < 2 or n & (n - 1) or int(m.group("r")) < 1 or int(m.group("p")) < 1:
            raise ValueError("scrypt parameters: N a power of two, r and p at least 1")
    elif int(m.group("iterations")) < 1:
        raise ValueError("pbkdf2 needs at least one iteration")


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


class PinCheck:
    """Checks candidates against one plan's PIN, clear or hashed.

    Cost: O(1) for a clear PIN; one key derivation per distinct candidate
    for a hashed one (then O(1) from the cache).
    """

    __slots__ = ("_clear_digest", "_hash", "_expected", "_cache", "_lock")

    _CACHE_SIZE = 256

    def __init__(self, pin: str | None = None, pin_hash: str | None = None) -> None:
        if (pin is None) == (pin_hash is None):
            raise ValueError("give exactly one of pin and pin_hash")
        self._clear_digest = _digest(pin) if pin is not None else None
        self._hash = pin_hash
        self._expected = bytes.fromhex(pin_hash.rsplit("$", 1)[1]) if pin_hash else b""
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, candidate: str) -> bool:
        """Whether ``candidate`` is the PIN, in time independent of its digits."""
        if not isinstance(candidate, str) or not PIN_RE.match(candidate):
            return False
        if self._clear_digest is not None:
            return hmac.compare_digest(_digest(candidate), self._clear_digest)
        token = hmac.new(_PROCESS_KEY, candidate.encode(), hashlib.sha256).digest()
        with self._lock:
            known = self._cache.get(token)
            if known is not None:
                self._cache.move_to_end(token)
                return known
        result = hmac.compare_digest(_derive(self._hash, candidate), self._expected)
        with self._lock:
            self._cache[token] = result
            if len(self._cache) > self._CACHE_SIZE:
                self._cache.popitem(last=False)
        return result
