"""Redis clients from URLs: one place that turns a ``redis://`` URL into a client.

Counters (:mod:`tel400.redis_counters`) and the plan store
(:class:`tel400.stores.RedisStore`) both open their connections here, so
that every form of URL a deployment may use is read the same way.
"""

from __future__ import annotations

#: URL schemes this module opens.
SCHEMES = ("redis", "rediss", "unix")


def open_redis(url: str, *, timeout_s: float, decode_responses: bool = False):
    """A client for ``url``.

    Args:
        url: ``redis://host:port/db`` (also ``rediss://`` and ``unix://``).
        timeout_s: socket connect and read timeout, seconds.
        decode_responses: answer ``str`` rather than ``bytes``.

    Raises:
        ValueError: the URL is not one this module opens.
    """
    import redis

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(f"redis: unsupported URL {url!r}; expected redis://host:port/db")
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                decode_responses=decode_responses)
