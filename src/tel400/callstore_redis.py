"""Calls in progress in Redis, shared by processes on any host.

The semantics common to shared registries (one end, one charge; claims of
dead processes; wall-clock ages; per-process counts) are in
:mod:`tel400.callstores`.
"""

from __future__ import annotations

import math
import os

import structlog

from . import redis_clients
from .calls import check_bounds
from .callstores import (DEFAULT_CLAIM_LEASE_S, DROP_BATCH, Counts, StoredRecord, holder_dead, new_claimer,
                         read_record, seen_as, take_over_log)
from .exceptions import BackendError

_log = structlog.get_logger("tel400.calls")

# Every script reads the server's clock (Redis >= 5 replicates scripts by
# their effects), so that processes on hosts whose clocks differ agree on ages.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

# KEYS: age index, the call's key.  ARGV: id, token, max_age_s, max_calls, ttl_ms, batch, key prefix.
# Returns {stored (1/0), expired, now}.
_REMEMBER = _NOW + """
local cutoff = now - tonumber(ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[6]))
for _, id in ipairs(old) do redis.call('DEL', ARGV[7] .. id) end
if #old > 0 then redis.call('ZREM', KEYS[1], unpack(old)) end
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return {0, #old, tostring(now)}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 't', ARGV[2], 'a', tostring(now))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {1, #old, tostring(now)}
"""

# KEYS: the call's key.  ARGV: token read, claim read ('' for none), new claim, lease_s, holder dead (1/0).
_CLAIM = _NOW + """
local v = redis.call('HMGET', KEYS[1], 't', 'c', 'ca')
if v[1] ~= ARGV[1] then return 0 end
local c = v[2] or ''
if c ~= ARGV[2] then return 0 end
if c ~= '' and ARGV[5] ~= '1' and now - tonumber(v[3]) < tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'c', ARGV[3], 'ca', tostring(now))
return 1
"""

# KEYS: age index, the call's key.  ARGV: own claim, rest's token ('' to forget), id.
_SETTLE = """
if redis.call('HGET', KEYS[2], 'c') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[3])
else
  redis.call('HSET', KEYS[2], 't', ARGV[2])
  redis.call('HDEL', KEYS[2], 'c', 'ca')
end
return 1
"""

# KEYS: age index, the call's key.  ARGV: id.
_POP = """
local v = redis.call('HMGET', KEYS[2], 't', 'a', 'c', 'ca')
if not v[1] then return false end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return v
"""


class RedisCallRegistry(Counts):
    """Calls in progress in Redis, shared by processes on any host.

    Args:
        url: a Redis URL (:mod:`tel400.redis_clients`), without tel400's
            query parameters (:func:`open_url` takes those off).
        max_calls: the most calls remembered at once, over all processes.
        max_age_s: how long a call is remembered: each call's key expires
            then (``PEXPIRE``), and its entry in the age index is dropped
            by the next ``remember``.
        claim_lease_s: after how long another process's claim may be taken over.
        timeout_ms: the bound on every command; past it a call is not
            remembered (``refused``, ``failed``) or an end raises
            :class:`BackendError`.
        prefix: the keys' prefix; all keys of one registry share the hash
            tag ``{prefix}``, so a Redis Cluster keeps them on one node.

    Keys: one hash per call (token, age, claim), one sorted set of call ids
    by age (the bound: ``ZCARD``; ~100 bytes a call besides the token).
    Each operation is one round trip running one script: O(log n).
    """

    def __init__(self, url: str, *, max_calls: int = 200_000, max_age_s: float = 12 * 3600,
                 claim_lease_s: float = DEFAULT_CLAIM_LEASE_S, timeout_ms: float = 250.0,
                 prefix: str = "tel400:calls", log_interval_s: float = 60.0) -> None:
        check_bounds(max_calls, max_age_s)
        super().__init__(log_interval_s)
        self.url = redis_clients._redacted(url)
        self.max_calls = max_calls
        self.max_age_s = max_age_s
        self.claim_lease_s = claim_lease_s
        self._client = redis_clients.open_redis(url, timeout_s=timeout_ms / 1000, decode_responses=True)
        import redis

        self._errors = (redis.exceptions.RedisError, OSError)
        self._tag = "{" + prefix + "}"
        self._age_key = self._tag + ":age"
        self._call_prefix = self._tag + ":call:"
        self._ttl_ms = int(math.ceil(max_age_s * 1000))
        self._scripts = {name: self._client.register_script(text) for name, text in
                         (("remember", _REMEMBER), ("claim", _CLAIM), ("settle", _SETTLE), ("pop", _POP))}
        self._mine: dict[str, str] = {}
        self._mine_pid = os.getpid()

    def _key(self, call_id: str) -> str:
        return self._call_prefix + call_id

    def _script(self, name: str, keys, args):
        try:
            return self._scripts[name](keys=keys, args=args)
        except self._errors as exc:
            raise BackendError(f"calls: redis {self.url}: {exc}") from exc

    def _claims(self) -> dict[str, str]:
        if self._mine_pid != os.getpid():  # a forked child holds none of its parent's claims
            self._mine, self._mine_pid = {}, os.getpid()
        return self._mine

    def remember(self, record) -> bool:
        """Keep ``record`` until its end; ``False`` if full (counted, logged) or Redis failed (counted)."""
        call_id = record.call_id
        try:
            stored, expired, now = self._script(
                "remember", [self._age_key, self._key(call_id)],
                [call_id, record.to_token(), self.max_age_s, self.max_calls, self._ttl_ms, DROP_BATCH,
                 self._call_prefix])
        except BackendError as exc:
            _log.warning("call_not_remembered", call_id=call_id, error=str(exc))
            self._count(failed=1, number=record.number)
            return False
        record.remembered_at = float(now)
        if expired or not stored:
            self._count(expired=int(expired), refused=0 if stored else 1, number=record.number)
        return bool(stored)

    def get(self, call_id) -> StoredRecord | None:
        try:
            token, at, claimer, claimed_at = self._client.hmget(self._key(str(call_id)), "t", "a", "c", "ca")
        except self._errors as exc:
            raise BackendError(f"calls: redis {self.url}: {exc}") from exc
        return None if token is None else read_record(token, at, claimer, claimed_at)

    def claim(self, call_id, record) -> bool:
        """As :meth:`SqliteCallRegistry.claim`; the lease is measured by the Redis server's clock."""
        key = str(call_id)
        token, seen = seen_as(record)
        claimer = new_claimer()
        dead = seen is not None and holder_dead(seen)
        claimed = self._script("claim", [self._key(key)],
                               [token, seen or "", claimer, self.claim_lease_s, 1 if dead else 0]) == 1
        if claimed:
            self._claims()[key] = claimer
            if seen is not None:
                take_over_log(key, seen, "dead" if dead else "lease")
        return claimed

    def settle(self, call_id, record, rest=None) -> None:
        key = str(call_id)
        claimer = self._claims().pop(key, None)
        if claimer is None:
            return
        self._script("settle", [self._age_key, self._key(key)],
                     [claimer, "" if rest is None else rest.to_token(), key])

    def pop(self, call_id) -> StoredRecord | None:
        key = str(call_id)
        found = self._script("pop", [self._age_key, self._key(key)], [key])
        return None if not found else read_record(*found)

    def __len__(self) -> int:
        """Calls held by all processes (expired ones included until a ``remember`` drops them)."""
        try:
            return self._client.zcard(self._age_key)
        except self._errors as exc:
            raise BackendError(f"calls: redis {self.url}: {exc}") from exc

    def __contains__(self, call_id) -> bool:
        return self.get(call_id) is not None

    def close(self) -> None:
        self._client.close()

