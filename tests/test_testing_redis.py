"""tel400.testing's Redis servers: a port taken between choosing it and redis-server binding it
(another test's connection got it as its ephemeral port) is chosen again, not a failed test."""

from __future__ import annotations

import socket

import pytest

from tel400 import testing

pytestmark = pytest.mark.slow  # starts redis-servers


@pytest.fixture
def taken():
    """A port some other program holds, that free_port hands out first."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def _first(monkeypatch, port: int) -> None:
    ports = iter([port])
    real = testing.free_port
    monkeypatch.setattr(testing, "free_port", lambda: next(ports, None) or real())


def test_a_taken_port_is_chosen_again(monkeypatch, taken):
    _first(monkeypatch, taken)
    server = testing.RedisServer().start()
    try:
        assert server.port != taken and server.cli("PING") is True
    finally:
        server.stop()


def test_a_taken_cluster_bus_port_is_chosen_again(monkeypatch, taken):
    _first(monkeypatch, taken)
    servers = testing.RedisClusterServers(3)  # the first node's bus port: the taken one
    assert servers.nodes[0].args[servers.nodes[0].args.index("--cluster-port") + 1] == str(taken)
    servers.start()
    try:
        node = servers.nodes[0]
        assert node.args[node.args.index("--cluster-port") + 1] != str(taken)
        assert "cluster_state:ok" in node.cli("CLUSTER", "INFO")
    finally:
        servers.stop()


def test_a_port_given_is_not_changed_and_the_error_says_why(taken):
    with pytest.raises(RuntimeError, match=f"redis-server did not answer on port {taken}: .*Address already in use"):
        testing.RedisServer(taken).start()
