"""Helpers for testing an integration with tel400 (and for tel400's own tests).

* :class:`RedisServer` starts Debian's ``redis-server`` on a free loopback
  port, without persistence, and stops it: real counters and plan stores
  in a test, no mocks.
* :class:`RedisClusterServers` starts a Redis Cluster of masters (each a
  :class:`RedisServer` with ``--cluster-enabled yes``, joined by
  ``redis-cli --cluster create``), :class:`RedisSentinelServers` a master,
  a replica and three sentinels (``redis-server --sentinel``) that fail
  over within a few seconds: the ``redis+cluster://`` and
  ``redis+sentinel://`` URLs of :mod:`tel400.redis_clients`, for real.
* :func:`free_port` finds a free TCP port on 127.0.0.1.
* :class:`FakeSmsGateway` stands in for the SMS gateway of group sends
  (:mod:`tel400.smsjobs`): it records, refuses or stalls when told.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server from Debian's package, on 127.0.0.1, without persistence."""

    def __init__(self, port: int | None = None, *, args: Sequence[str] = ()) -> None:
        """
        Args:
            port: the port (default: a free one, chosen again at :meth:`start`
                if it was taken meanwhile, with a ``--cluster-port`` in
                ``args``: read :attr:`port` and :attr:`url` after it).
            args: more command-line options for redis-server (``--replicaof``, ``--cluster-enabled``, ...).
        """
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server); .ci/run installs it")
        self._chosen = port is None
        self.port = port or free_port()
        self.args = tuple(args)
        self.dir = tempfile.mkdtemp(prefix="tel400-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait for its PONG.

        A port chosen here can be taken between choosing and binding (the
        kernel hands it to another program's connection): redis-server then
        exits with "Address already in use", and other ports are chosen, up
        to five times.
        """
        log = os.path.join(self.dir, "redis.log")
        for _ in range(5):
            with open(log, "wb") as out:
                self.process = subprocess.Popen(
                    [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                     "no", "--dir", self.dir, "--enable-debug-command", "yes", "--protected-mode", "no", *self.args],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            if self._answers():
                return self
            self.stop()
            with open(log, "rb") as fh:
                said = fh.read().decode("utf-8", "replace")
            if not (self._chosen and "Address already in use" in said):
                break
            self.port = free_port()
            self.args = tuple(str(free_port()) if i and self.args[i - 1] == "--cluster-port" else arg
                              for i, arg in enumerate(self.args))
        last = said.strip().splitlines()[-3:]
        raise RuntimeError(f"redis-server did not answer on port {self.port}: {' / '.join(last) or 'no output'}")

    def _answers(self) -> bool:
        """Until its PONG (True), its exit or 10 s (False)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def cli(self, *args: str) -> str:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def kill(self) -> None:
        """Kill it at once (SIGKILL): no reply, no goodbye, as when its host fails."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def _wait_until(what: str, ready, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within {timeout_s:g} s")


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters (at least 3), each with ``replicas`` replicas, on 127.0.0.1.

    Each node is a :class:`RedisServer` with ``--cluster-enabled yes`` and a
    cluster bus port of its own (``--cluster-port``, a free port, not port +
    10000, which may be taken); ``redis-cli --cluster create`` (Debian's
    redis-tools, which redis-server depends on) divides the slots and picks
    the replicas.  A master that does not answer for ``node_timeout_ms`` is
    failed over to its replica by the cluster itself.  Ports are chosen when
    the object is made, so a URL can be used before :meth:`start`.
    """

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools); .ci/run installs it")
        self.replicas = replicas
        self.nodes = [
            RedisServer(args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                              "--cluster-port", str(free_port()), "--cluster-node-timeout", str(node_timeout_ms),
                              "--repl-diskless-sync-delay", "0"])
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/"

    def url_via(self, index: int) -> str:
        """``redis+cluster://`` with node ``index`` as the only seed: a client that comes in through it."""
        return f"redis+cluster://127.0.0.1:{self.nodes[index].port}/"

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
            )
            for node in self.nodes:
                _wait_until(f"cluster node {node.port}", lambda node=node: self._ready(node), 20)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _ready(node: RedisServer) -> bool:
        if "cluster_state:ok" not in node.cli("CLUSTER", "INFO"):
            return False
        replication = node.cli("INFO", "replication")
        return replication["role"] == "master" or replication.get("master_link_status") == "up"

    def node_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        asked = next(n for n in self.nodes if n.process is not None)
        slot = asked.cli("CLUSTER", "KEYSLOT", key)
        for start, end, master, *_ in asked.cli("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == master[1])
        raise LookupError(f"no node serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A replica of ``master`` (``replicas`` at least 1)."""
        for node in self.nodes:
            if node is not master and node.process is not None:
                replication = node.cli("INFO", "replication")
                if replication["role"] == "slave" and replication["master_port"] == master.port:
                    return node
        raise LookupError(f"no replica of {master.port}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinelServers:
    """A master, one replica and three sentinels on 127.0.0.1, named ``mymaster``.

    The sentinels take a master for down after ``down_after_ms`` without a
    reply and agree on it with a quorum of 2, so :meth:`fail_over` (the
    master killed) leaves the replica promoted within a few seconds.
    """

    service = "mymaster"

    def __init__(self, *, down_after_ms: int = 500, failover_timeout_ms: int = 2000) -> None:
        quick_sync = ["--repl-diskless-sync-delay", "0"]  # not the default 5 s wait for more replicas
        self.master = RedisServer(args=quick_sync)
        self.replica = RedisServer(args=quick_sync)  # --replicaof the master's port once it is up
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.dir = tempfile.mkdtemp(prefix="tel400-sentinel-")
        self.sentinels: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """``redis+sentinel://`` naming every sentinel and the service."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{self.service}/0"

    def start(self) -> RedisSentinelServers:
        try:
            self.master.start()
            self.replica.args += ("--replicaof", "127.0.0.1", str(self.master.port))
            self.replica.start()
            _wait_until("the replica",
                        lambda: self.replica.cli("INFO", "replication")["master_link_status"] == "up", 20)
            for port in self.sentinel_ports:
                self.sentinels.append(self._start_sentinel(port))
            # Ready when every sentinel knows the replica and the two other sentinels.
            for port in self.sentinel_ports:
                _wait_until(f"sentinel {port}", lambda port=port: self._knows_everyone(port), 20)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, port: int) -> subprocess.Popen:
        config = os.path.join(self.dir, f"sentinel-{port}.conf")
        with open(config, "w") as fh:
            fh.write(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
        return subprocess.Popen([self.master.binary, config, "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def _ask(self, port: int, *args):
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=1)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def _knows_everyone(self, port: int) -> bool:
        state = self._ask(port, "SENTINEL", "MASTER", self.service)
        state = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
        return int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2

    def master_port(self) -> int:
        """The port of the master as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                return int(self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
            except Exception:  # noqa: BLE001 - ask the next one
                continue
        raise RuntimeError("no sentinel answered")

    def fail_over(self) -> None:
        """Kill the master (SIGKILL); the sentinels then promote the replica (see :meth:`wait_promoted`)."""
        self.master.kill()

    def wait_promoted(self, timeout_s: float = 30) -> None:
        """Wait until the sentinels name the replica as master and it accepts writes."""
        _wait_until("the failover", lambda: self.master_port() == self.replica.port
                    and self.replica.cli("INFO", "replication")["role"] == "master", timeout_s)

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.sentinels = []
        self.replica.stop()
        self.master.stop()


class FakeSmsGateway:
    """An in-memory :class:`tel400.smsjobs.SmsGateway`: keeps what it accepts, fails or stalls when told.

    ``sent`` holds the accepted messages in order and ``times`` the event
    loop's time of each (virtual time in a test loop); ``attempts`` counts
    every call of :meth:`submit`.  With ``path``, each accepted message is
    also appended to that file as ``message_id<TAB>to`` and fsynced before
    ``submit`` returns: what a killed sender handed over survives it.
    ``on_accept(sms)`` runs after each acceptance (a test's delivery report).
    """

    def __init__(self, *, path: str | os.PathLike[str] | None = None, on_accept=None) -> None:
        self.sent: list = []
        self.times: list[float] = []
        self.attempts = 0
        self.path = path
        self.on_accept = on_accept
        self._failures = 0
        self._fail_all = False
        self._open: object = None  # an asyncio.Event while stalled

    def fail_next(self, n: int = 1) -> None:
        """Refuse the next ``n`` submissions (GatewayError)."""
        self._failures += n

    def fail_all(self, on: bool = True) -> None:
        """Refuse every submission until called with ``False``."""
        self._fail_all = on

    def stall(self) -> None:
        """Make submissions hang until :meth:`release` (a gateway that stopped answering)."""
        import asyncio

        self._open = asyncio.Event()

    def release(self) -> None:
        """Let stalled submissions go on."""
        if self._open is not None:
            self._open.set()
            self._open = None

    async def submit(self, sms) -> None:
        import asyncio

        from .smsjobs import GatewayError

        self.attempts += 1
        if self._open is not None:
            await self._open.wait()
        if self._fail_all or self._failures > 0:
            self._failures = max(0, self._failures - 1)
            raise GatewayError("the fake gateway refused the message")
        if self.path is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{sms.message_id}\t{sms.to}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        self.sent.append(sms)
        self.times.append(asyncio.get_running_loop().time())
        if self.on_accept is not None:
            self.on_accept(sms)
