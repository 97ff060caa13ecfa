"""Portal accounts: the operator's staff and each company's password, sessions, lockout and audit.

One SQLite file (``DATA/portal.db``).  Passwords are kept as salted scrypt
hashes in the format of :func:`tel400.pins.make_hash`
(``scrypt:N:r:p$salt$hex``, checked by :func:`tel400.pins.check_hash_format`)
and compared with :func:`hmac.compare_digest`.

Lockout: a login (an operator name or a 400 number) with ``login_failures``
failed attempts within ``window_s`` seconds is refused, right password or not,
until the oldest of those failures is ``window_s`` old; so is a client address
with ``address_failures`` failures (whatever logins it tried).  An unknown
login costs a key derivation like a known one, so timing tells nothing.

Sessions live here too (a random id in the signed cookie points at a row),
so a logout, a password change or a reset ends them on the server: a copied
cookie is worth nothing afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time

import attrs

import tel400
from tel400 import pins
from tel400.stores import create_private

#: Failed logins for one login within the window before it is locked.
LOGIN_FAILURES = 5
#: Failed logins from one client address within the window before it is locked.
ADDRESS_FAILURES = 20
#: The lockout window, seconds.
LOCKOUT_WINDOW_S = 900.0
#: How long a session lasts without a new login, seconds.
SESSION_TTL_S = 8 * 3600.0
#: Live sessions kept per account (the oldest end first): logging in again and again fills nothing.
SESSIONS_PER_ACCOUNT = 20
#: Account audit entries kept of changes and logins (the oldest go first).
AUDIT_KEEP = 100_000
#: Failed-login audit entries kept, apart (anyone can make them: a flood fills neither the disk nor
#: pushes the entries above out).
FAILURE_AUDIT_KEEP = 100_000
#: The audit is trimmed once every this many entries (not at every write).
AUDIT_TRIM_EVERY = 1000
#: The audit actions anyone can cause without a password.
FAILURE_ACTIONS = ("login_failed", "password_check_failed")
#: The shortest and longest password accepted.
PASSWORD_MIN, PASSWORD_MAX = 8, 128
#: scrypt cost of new password hashes (pins.make_hash's: about 0.1 s per check).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1

ROLES = ("operator", "company")


class LockedOut(Exception):
    """Too many failed logins for this login or from this address; ``retry_after_s`` until it ends."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"locked out for {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class BadPassword(ValueError):
    """A new password the portal refuses (too short, too long)."""


@attrs.frozen
class PortalSession:
    """Who is logged in: ``role`` operator or company, ``login`` (a name or the number)."""

    id: str
    role: str
    login: str
    csrf: str
    expires: float

    @property
    def number(self) -> str | None:
        """The company's number; ``None`` for the operator, who sees every number."""
        return self.login if self.role == "company" else None

    @property
    def actor(self) -> str:
        """How the audit names this session's changes: ``company:4001012345``, ``operator:name``."""
        return f"{self.role}:{self.login}"


def check_password_rules(password: str) -> None:
    """Raise :class:`BadPassword` unless ``password`` is PASSWORD_MIN to PASSWORD_MAX characters."""
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise BadPassword(f"a password is {PASSWORD_MIN} to {PASSWORD_MAX} characters")


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` in :func:`tel400.pins.make_hash`'s format."""
    salt = os.urandom(12).hex()
    n, r, p = SCRYPT_N, SCRYPT_R, SCRYPT_P
    key = hashlib.scrypt(password.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p + (1 << 20),
                         dklen=32)
    return f"scrypt:{n}:{r}:{p}${salt}${key.hex()}"


def check_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (compared in constant time)."""
    pins.check_hash_format(stored)  # bounded cost before deriving
    head, salt, expected = stored.split("$")
    _, n, r, p = head.split(":")
    n, r, p = int(n), int(r), int(p)
    key = hashlib.scrypt(password.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p + (1 << 20),
                         dklen=len(expected) // 2)
    return hmac.compare_digest(key, bytes.fromhex(expected))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (role TEXT NOT NULL, login TEXT NOT NULL, hash TEXT NOT NULL,
                                     changed REAL NOT NULL, PRIMARY KEY (role, login));
CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_key ON failures (key, at);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, role TEXT NOT NULL, login TEXT NOT NULL,
                                     csrf TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_login ON sessions (role, login);
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL,
                                  action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL);
"""


class Accounts:
    """Portal logins, sessions and their audit in one SQLite file.

    Args:
        path: the database file (``":memory:"`` for a test).
        login_failures, address_failures, window_s: the lockout (see the module).
        session_ttl_s: a session's life from its login.
    """

    def __init__(self, path: str, *, login_failures: int = LOGIN_FAILURES, address_failures: int = ADDRESS_FAILURES,
                 window_s: float = LOCKOUT_WINDOW_S, session_ttl_s: float = SESSION_TTL_S,
                 clock=time.time) -> None:
        for name, value in (("login_failures", login_failures), ("address_failures", address_failures)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}: expected a whole number >= 1, got {value!r}")
        for name, value in (("window_s", window_s), ("session_ttl_s", session_ttl_s)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        self.path = str(path)
        self.login_failures = login_failures
        self.address_failures = address_failures
        self.window_s = float(window_s)
        self.session_ttl_s = float(session_ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        create_private(self.path)  # password hashes live here
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        # derived once: an unknown login is checked against it, so it costs what a known one does
        self._decoy = hash_password(secrets.token_hex(16))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- passwords ---------------------------------------------------------------------------

    def ensure_operator(self, name: str, password: str | None = None) -> str | None:
        """Make the operator account ``name`` if it is missing, or set its password if one is given.

        Returns the password made for a new account (to print once), else ``None``.
        """
        made = None
        if password is None:
            if self._hash("operator", name) is not None:
                return None
            password = made = secrets.token_urlsafe(12)
        self._set_password("operator", name, password, actor="tel400-http (start)")
        return made

    def set_company_password(self, number: str, password: str, *, actor: str, keep: str | None = None) -> None:
        """Set (or reset) the password of the company managing ``number``; ends its sessions but ``keep``
        (the id of the session making the change, if it is the company's own)."""
        self._set_password("company", tel400.normalize(number), password, actor=actor, keep=keep)

    def set_operator_password(self, name: str, password: str, *, actor: str, keep: str | None = None) -> None:
        """Set an operator's password; ends their sessions but ``keep``."""
        self._set_password("operator", name, password, actor=actor, keep=keep)

    def forget_company(self, number: str, *, actor: str, event: str) -> bool:
        """Remove the login of the company managing ``number`` and end its sessions (audited).

        Called when the number is deleted or created (``event``): a number
        given to a new company must not open to the one that had it.
        Returns whether there was a login to remove.
        """
        login = tel400.normalize(number)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute("DELETE FROM accounts WHERE role = 'company' AND login = ?",
                                        (login,)).rowcount
                ended = self._db.execute("DELETE FROM sessions WHERE role = 'company' AND login = ?",
                                         (login,)).rowcount
                if gone or ended:
                    self._audit(actor, "forgotten", f"company:{login}", {"event": event})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return bool(gone)

    def has_account(self, role: str, login: str) -> bool:
        return self._hash(role, login) is not None

    def _set_password(self, role: str, login: str, password: str, *, actor: str, keep: str | None = None) -> None:
        check_password_rules(password)
        digest = hash_password(password)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO accounts VALUES (?, ?, ?, ?) ON CONFLICT (role, login) "
                                 "DO UPDATE SET hash = excluded.hash, changed = excluded.changed",
                                 (role, login, digest, self._clock()))
                self._db.execute("DELETE FROM sessions WHERE role = ? AND login = ? AND id IS NOT ?",
                                 (role, login, keep))
                self._audit(actor, "password", f"{role}:{login}", {})
                # whoever sets a password knows it: the failures others piled on this login end
                # (the address lockout stays)
                cleared = self._db.execute("DELETE FROM failures WHERE key = ?",
                                           (self._login_key(role, login),)).rowcount
                if cleared:
                    self._audit(actor, "failures_cleared", f"{role}:{login}", {"failures": cleared})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _hash(self, role: str, login: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT hash FROM accounts WHERE role = ? AND login = ?", (role, login)).fetchone()
        return row[0] if row else None

    # -- logging in --------------------------------------------------------------------------

    def check_login(self, kind: str, login: str, password: str, address: str) -> PortalSession | None:
        """A new session when ``password`` is ``login``'s; ``None`` when not (the failure is counted).

        ``kind``: "operator" or "company" (``login`` is then a 400 number, normalised).

        Raises:
            LockedOut: too many recent failures for this login or from ``address``.
        """
        if kind not in ROLES:
            raise ValueError(f"kind: expected one of {ROLES}, got {kind!r}")
        if kind == "company":
            try:
                login = tel400.normalize(login)
            except tel400.NumberError:
                login = login[:40]  # counted as a failure like any unknown login
        if not self.confirm_password(kind, login, password, address, action="login_failed"):
            return None
        return self._new_session(kind, login, address)

    def confirm_password(self, role: str, login: str, password: str, address: str, *,
                         action: str = "password_check_failed") -> bool:
        """Whether ``password`` is ``login``'s, under the same lockout as a login (a failure counts).

        A logged-in user changing their password confirms the current one
        with this, so a session left open does not let anyone guess it freely.

        Raises:
            LockedOut: too many recent failures for this login or from ``address``.
        """
        login_key, address_key = self._login_key(role, login), f"address:{address}"
        # a failure is counted before deriving (and taken back on success): concurrent guesses
        # cannot all pass the check before any of them is counted
        reserved = self._reserve_failure(login_key, address_key)
        stored = self._hash(role, login)
        if not isinstance(password, str):
            password = ""
        right = check_password(stored or self._decoy, password[:PASSWORD_MAX * 4]) and stored is not None
        if right:
            with self._lock:
                self._db.executemany("DELETE FROM failures WHERE rowid = ?", [(r,) for r in reserved])
        else:
            self.audit(f"{role}:{login[:80]}", action, address, {})
        return right

    @staticmethod
    def _login_key(role: str, login: str) -> str:
        return f"login:{role}:{login[:80]}"

    def _reserve_failure(self, *keys: str) -> list[int]:
        """Under one lock: raise :class:`LockedOut` if a key is locked, else count a failure for each key
        (their row ids, to take back on success)."""
        with self._lock:
            wait = self._locked_for(keys)
            if wait:
                raise LockedOut(wait)
            now = self._clock()
            return [self._db.execute("INSERT INTO failures VALUES (?, ?)", (k, now)).lastrowid for k in keys]

    def locked_for(self, *keys: str) -> float:
        """Seconds until none of ``keys`` is locked (0: none is)."""
        with self._lock:
            return self._locked_for(keys)

    def _locked_for(self, keys) -> float:
        now = self._clock()
        wait = 0.0
        self._db.execute("DELETE FROM failures WHERE at <= ?", (now - self.window_s,))
        for key in keys:
            limit = self.address_failures if key.startswith("address:") else self.login_failures
            rows = self._db.execute("SELECT at FROM failures WHERE key = ? ORDER BY at DESC LIMIT ?",
                                    (key, limit)).fetchall()
            if len(rows) >= limit:
                # locked until the limit-th most recent failure leaves the window
                wait = max(wait, rows[-1][0] + self.window_s - now)
        return wait

    def _new_session(self, role: str, login: str, address: str) -> PortalSession:
        session = PortalSession(secrets.token_urlsafe(24), role, login, secrets.token_urlsafe(24),
                                self._clock() + self.session_ttl_s)
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE expires <= ?", (self._clock(),))
            self._db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                             (session.id, role, login, session.csrf, session.expires))
            self._db.execute("DELETE FROM sessions WHERE role = ? AND login = ? AND id NOT IN (SELECT id FROM sessions "
                             "WHERE role = ? AND login = ? ORDER BY expires DESC, rowid DESC LIMIT ?)",
                             (role, login, role, login, SESSIONS_PER_ACCOUNT))
        self.audit(session.actor, "login", address, {})
        return session

    def session(self, session_id: str) -> PortalSession | None:
        """The live session with this id, or ``None`` (unknown, ended or expired)."""
        if not isinstance(session_id, str) or len(session_id) > 64:
            return None
        with self._lock:
            row = self._db.execute("SELECT id, role, login, csrf, expires FROM sessions WHERE id = ? AND expires > ?",
                                   (session_id, self._clock())).fetchone()
        return PortalSession(*row) if row else None

    def end_session(self, session_id: str) -> None:
        """Log out: the session's id no longer opens anything."""
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    # -- audit -------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, subject: str, detail: dict | None = None) -> None:
        """Record what ``actor`` did (``action``) to ``subject`` (a number, an account, an address)."""
        with self._lock:
            self._audit(actor, action, subject, detail or {})

    def _audit(self, actor: str, action: str, subject: str, detail: dict) -> None:
        row = self._db.execute("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                               (self._clock(), actor[:120], action, subject[:120],
                                json.dumps(detail, ensure_ascii=False))).lastrowid
        if row % AUDIT_TRIM_EVERY == 0:  # now and then, not at every write
            failures = ", ".join("?" * len(FAILURE_ACTIONS))
            for failed, keep in ((1, FAILURE_AUDIT_KEEP), (0, AUDIT_KEEP)):  # each kept apart from the other
                self._db.execute(f"DELETE FROM audit WHERE (action IN ({failures})) = ? AND id <= (SELECT id FROM audit "
                                 f"WHERE (action IN ({failures})) = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                                 (*FAILURE_ACTIONS, failed, *FAILURE_ACTIONS, failed, keep))

    def audit_entries(self, subject: str | None = None, limit: int = 100) -> list[dict]:
        """The latest account events, newest first: at, actor, action, subject, detail."""
        query, params = "SELECT at, actor, action, subject, detail FROM audit", ()
        if subject is not None:
            query, params = query + " WHERE subject = ?", (subject,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [{"at": at, "actor": actor, "action": action, "subject": subj, "detail": json.loads(detail)}
                for at, actor, action, subj, detail in rows]
