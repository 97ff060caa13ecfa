"""Redis clients from URLs: one place that turns a Redis URL into a client.

Counters (:mod:`tel400.redis_counters`) and the plan store
(:class:`tel400.stores.RedisStore`) both open their connections here, so
that every form of URL a deployment may use is read the same way:

* ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS,
  ``unix:///path.sock?db=0``): one server, through redis-py's ``Redis``.
* ``redis+cluster://[[user]:password@]host:port[,host:port...]/``
  (``rediss+cluster://`` for TLS): a Redis Cluster, through redis-py's
  ``RedisCluster``.  The hosts are seeds: any one that answers tells the
  client every node and which slots it serves.  A cluster has database 0
  only, so the path is empty, ``/`` or ``/0``.
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``:
  the master that Redis Sentinel names for ``service``, through redis-py's
  ``Sentinel(...).master_for(service)``.  The hosts are the sentinels
  (port 26379 unless given); the credentials are the master's.  Every new
  connection asks the sentinels where the master is, so after a failover
  the client connects to the promoted replica by itself.

Hosts may be written ``[::1]:7000`` for IPv6.  A port left out is 6379
(26379 for sentinels).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

#: URL schemes of one server (what ``redis.Redis.from_url`` reads).
SINGLE_SCHEMES = ("redis", "rediss", "unix")
#: URL schemes of a Redis Cluster.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: URL schemes of a master named by Redis Sentinel.
SENTINEL_SCHEMES = ("redis+sentinel",)
#: URL schemes this module opens.
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES

_EXPECTED = ("expected redis://host:port/db, redis+cluster://host:port,host:port/ "
             "or redis+sentinel://host:port,host:port/service/db")


class RedisURL(NamedTuple):
    """A Redis URL taken apart (what :func:`parse_url` returns)."""

    #: ``"single"``, ``"cluster"`` or ``"sentinel"``.
    kind: str
    #: (host, port) of each seed node or sentinel; empty for ``"single"``.
    hosts: tuple[tuple[str, int], ...]
    #: the Sentinel service name (``"sentinel"`` only).
    service: str | None
    db: int
    username: str | None
    password: str | None
    tls: bool


def url_kind(url: str) -> str | None:
    """``"single"``, ``"cluster"`` or ``"sentinel"`` for a Redis URL; ``None`` for any other URL."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        return "single"
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    return None


def parse_url(url: str) -> RedisURL:
    """Take a cluster or sentinel URL apart (``redis://`` is left to redis-py).

    Raises:
        ValueError: not a Redis URL, no host, a port or database that is
            not a whole number, a cluster URL naming a database other than
            0, a sentinel URL without a service, or a query parameter
            (cluster and sentinel URLs take none).
    """
    kind = url_kind(url)
    if kind is None:
        raise ValueError(f"redis: unsupported URL {url!r}; {_EXPECTED}")
    parts = urlsplit(url)
    if kind == "single":
        return RedisURL("single", (), None, 0, parts.username, parts.password, parts.scheme == "rediss")
    if parts.query:
        raise ValueError(f"redis: {parts.scheme}:// takes no query parameters "
                         f"({sorted(k for k, _ in parse_qsl(parts.query))}), in {_redacted(url)!r}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    default_port = 26379 if kind == "sentinel" else 6379
    hosts = tuple(_host_port(h, default_port, url) for h in hostlist.split(","))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if kind == "cluster":
        if path not in ([], ["0"]):
            raise ValueError(
                f"redis: a Redis Cluster has database 0 only; got path {parts.path!r} in {_redacted(url)!r}"
            )
        return RedisURL("cluster", hosts, None, 0, username, password, parts.scheme == "rediss+cluster")
    if not path or len(path) > 2:
        raise ValueError(f"redis: redis+sentinel:// needs the service name, e.g. "
                         f"redis+sentinel://host:26379/mymaster/0; got {_redacted(url)!r}")
    db = _whole(path[1], "database", url) if len(path) == 2 else 0
    return RedisURL("sentinel", hosts, path[0], db, username, password, False)


def open_redis(url: str, *, timeout_s: float, decode_responses: bool = False, **options):
    """A client for ``url`` (any form in the module docstring).

    Args:
        url: a Redis URL.
        timeout_s: socket connect and read timeout, seconds, of every
            connection (to sentinels too).
        decode_responses: answer ``str`` rather than ``bytes``.
        options: more keyword arguments for every connection (e.g.
            ``max_connections``, ``retry``, ``health_check_interval``).

    Returns:
        ``redis.Redis`` for one server or a Sentinel master (its pool asks
        the sentinels on every new connection), ``redis.cluster.RedisCluster``
        for a cluster.

    Raises:
        ValueError: the URL is not one this module opens (:func:`parse_url`).
        redis.exceptions.ConnectionError: a cluster none of whose seeds
            answered in ``timeout_s`` (``RedisCluster`` learns the slots
            when it is made; the other forms connect at first use).
    """
    import redis

    target = parse_url(url)
    common = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                  decode_responses=decode_responses, **options)
    if target.kind == "single":
        return redis.Redis.from_url(url, **common)
    credentials = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(host, port) for host, port in target.hosts]
        try:
            return RedisCluster(startup_nodes=nodes, ssl=target.tls, **credentials, **common)
        except redis.exceptions.RedisClusterException as exc:  # not a RedisError: callers catch those
            raise redis.exceptions.ConnectionError(f"redis: no seed of {_redacted(url)} answered: {exc}") from exc
    from redis.sentinel import Sentinel

    sentinel_side = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_side)
    return sentinel.master_for(target.service, db=target.db, **credentials, **common)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"redis: bad host {text!r} in {_redacted(url)!r}")
        port = rest[1:]
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"redis: a host is missing in {_redacted(url)!r}")
    return host, (_whole(port, "port", url) if port else default_port)


def _whole(text: str, what: str, url: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"redis: the {what} must be a whole number, got {text!r} in {_redacted(url)!r}")
    return int(text)


def _redacted(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{hosts}"
