"""Bearer tokens for the admin API, each scoped to the 400 numbers it may manage.

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

import hashlib
import hmac
import secrets
import tomllib

import attrs

import tel400

from .asgi import HttpError

ALL = "*"


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


def _unauthorized(code: str, message: str) -> HttpError:
    return HttpError(401, code, message, headers=[(b"www-authenticate", b'Bearer realm="tel400"')])
