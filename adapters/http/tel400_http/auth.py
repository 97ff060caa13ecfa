"""Bearer tokens for the admin API, each scoped to the 400 numbers it may manage;
:class:`SwitchAuth` for the switch endpoints.

Tokens are random secrets handed to a company's administrator; the service
keeps only their SHA-256 (a token has far more entropy than a password, so a
fast hash is enough and a slow one would only cost every request).  A
presented token is hashed and compared with every known hash in constant
time, so neither the answer's timing nor its content tells how close a guess
came.

A tokens file (TOML)::

    [[tokens]]
    name    = "acme"                       # shown in the audit log as the actor
    sha256  = "9f86d08…"                   # tel400-http --hash-token SECRET
    numbers = ["4001012345"]               # or ["*"] for the operator
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import tomllib

import attrs

import tel400
from tel400.addresses import LOOPBACK_NETWORKS, AllowList

from .asgi import HttpError

ALL = "*"
#: Where a switch may call from when no secret is configured: this host only.
LOOPBACK = LOOPBACK_NETWORKS


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@attrs.frozen
class Token:
    name: str
    digest: bytes
    numbers: frozenset[str]

    def may(self, number: str) -> bool:
        return ALL in self.numbers or number in self.numbers


class Tokens:
    """The known tokens; :meth:`check` turns an ``Authorization`` header into a :class:`Token`."""

    def __init__(self, tokens: list[Token]) -> None:
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise ValueError("tokens: names must be unique (they identify who changed what)")
        self._tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    @classmethod
    def single(cls, token: str, *, name: str = "admin", numbers=(ALL,)) -> Tokens:
        return cls([Token(name, bytes.fromhex(hash_token(token)), frozenset(numbers))])

    @classmethod
    def from_file(cls, path: str) -> Tokens:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        entries = data.get("tokens")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: expected [[tokens]] tables")
        tokens = []
        for i, entry in enumerate(entries, 1):
            where = f"{path}: token {i}"
            if not isinstance(entry, dict) or set(entry) - {"name", "sha256", "numbers"}:
                raise ValueError(f"{where}: expected name, sha256 and numbers")
            name, digest, numbers = entry.get("name"), entry.get("sha256"), entry.get("numbers")
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise ValueError(f"{where}: name: expected a word")
            if not isinstance(digest, str) or len(digest) != 64:
                raise ValueError(f"{where}: sha256: expected 64 hex digits (tel400-http --hash-token SECRET)")
            try:
                raw = bytes.fromhex(digest)
            except ValueError:
                raise ValueError(f"{where}: sha256: expected 64 hex digits") from None
            if not isinstance(numbers, list) or not numbers or not all(isinstance(n, str) for n in numbers):
                raise ValueError(f"{where}: numbers: expected a list of 400 numbers, or [\"*\"]")
            scope = set()
            for n in numbers:
                if n == ALL:
                    scope.add(ALL)
                    continue
                try:
                    scope.add(tel400.normalize(n))
                except tel400.NumberError as exc:
                    raise ValueError(f"{where}: numbers: {exc}") from None
            tokens.append(Token(name, raw, frozenset(scope)))
        return cls(tokens)

    def check(self, authorization: bytes | None) -> Token:
        """The token presented in an ``Authorization: Bearer …`` header; 401 otherwise."""
        if not authorization:
            raise _unauthorized("missing_token", "this endpoint needs Authorization: Bearer <token>")
        scheme, _, presented = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not presented.strip():
            raise _unauthorized("missing_token", "this endpoint needs Authorization: Bearer <token>")
        digest = hashlib.sha256(presented.strip()).digest()
        found = None
        for token in self._tokens:  # every one, without stopping early: the time says nothing
            if hmac.compare_digest(digest, token.digest):
                found = token
        if found is None:
            raise _unauthorized("bad_token", "the token is not valid")
        return found


class SwitchAuth:
    """Who may use the switch endpoints (``/v1/route``, ``/v1/calls/{id}/end``,
    ``/freeswitch/dialplan``, ``/kamailio/rtjson``).

    Args:
        digests: the SHA-256 of each accepted shared secret (several, to
            rotate one without a gap).  When there is one, every request must
            present a secret, as ``Authorization: Bearer SECRET`` or as the
            password of HTTP basic auth (any user name: what mod_xml_curl's
            ``gateway-credentials`` and a ``http://user:SECRET@host`` URL
            send).  Empty: no secret is asked.
        networks: the client addresses allowed: a
            :class:`tel400.addresses.AllowList`, or its entries
            (``"10.0.0.0/8"``, ``"::1"``); ``None``: any address.  Checked
            before the secret; an IPv4 client of a dual-stack socket
            (``::ffff:10.1.2.3``) matches IPv4 networks.

    Secrets are kept and compared as SHA-256 digests, every known one in
    constant time, as for the admin tokens.  Refusals are 403
    ``forbidden_address`` and 401 ``missing_secret`` / ``bad_secret``.
    """

    def __init__(self, digests=(), networks=None) -> None:
        self._digests = tuple(digests)
        self.allow = networks if isinstance(networks, AllowList) else AllowList(networks)

    @property
    def networks(self):
        """The allowed networks, ``None`` for any address."""
        return self.allow.networks

    @property
    def asks_secret(self) -> bool:
        return bool(self._digests)

    @classmethod
    def from_file(cls, path: str, networks=None) -> SwitchAuth:
        """Secrets from a file of SHA-256 digests, one per line (``tel400-http --hash-token SECRET``); ``#`` comments."""
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        digests = []
        for n, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                digest = bytes.fromhex(text)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ValueError(f"{path}: line {n}: expected the 64 hex digits of a SHA-256 "
                                 "(tel400-http --hash-token SECRET), never the secret itself")
            digests.append(digest)
        if not digests:
            raise ValueError(f"{path}: no secret digests")
        return cls(digests, networks)

    @classmethod
    def single(cls, secret: str, networks=None) -> SwitchAuth:
        return cls([hashlib.sha256(secret.encode()).digest()], networks)

    def check(self, scope) -> None:
        """Let the request through, or raise the 403 / 401 :class:`HttpError`.  O(secrets) digests compared."""
        if not self.allow.anyone:
            client = scope.get("client")
            host = client[0] if client else None
            if not self.allow.allows(host):
                raise HttpError(403, "forbidden_address", f"the switch endpoints do not answer {host or 'this client'} "
                                "(tel400-http --switch-allow, --switch-secrets)")
        if not self._digests:
            return
        presented = _switch_secret(scope["headers"])
        if presented is None:
            raise _unauthorized("missing_secret", "the switch endpoints need the switch secret: Authorization: "
                                "Bearer SECRET, or HTTP basic auth with it as the password", scheme=b"Basic")
        digest = hashlib.sha256(presented).digest()
        found = False
        for known in self._digests:  # every one, without stopping early: the time says nothing
            found |= hmac.compare_digest(digest, known)
        if not found:
            raise _unauthorized("bad_secret", "the switch secret is not valid", scheme=b"Basic")


def _switch_secret(headers) -> bytes | None:
    """The secret in an ``Authorization`` header: a bearer token or a basic-auth password."""
    for key, value in headers:
        if key == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            rest = rest.strip()
            if scheme.lower() == b"bearer" and rest:
                return rest
            if scheme.lower() == b"basic" and rest:
                try:
                    user_password = base64.b64decode(rest, validate=True)
                except (binascii.Error, ValueError):
                    return None
                _, colon, password = user_password.partition(b":")
                return password if colon and password else None
            return None
    return None


def _unauthorized(code: str, message: str, *, scheme: bytes = b"Bearer") -> HttpError:
    return HttpError(401, code, message, headers=[(b"www-authenticate", scheme + b' realm="tel400"')])
