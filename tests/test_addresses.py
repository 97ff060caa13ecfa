"""The address allow-list both servers use: parsing, matching, IPv4 through a dual-stack socket."""

from __future__ import annotations

import pytest

from tel400.addresses import ANY, LOOPBACK, AllowList


def test_loopback_allows_this_host_only():
    for host in ("127.0.0.1", "127.9.8.7", "::1"):
        assert LOOPBACK.allows(host), host
    for host in ("10.1.2.3", "192.0.2.7", "::2", "fe80::1%lo", "", None, "localhost", "not-an-address"):
        assert not LOOPBACK.allows(host), host


def test_ipv4_clients_of_a_dual_stack_socket_match_ipv4_networks():
    # with --host :: an IPv4 client's address comes as ::ffff:a.b.c.d
    allow = AllowList.parse("127.0.0.0/8, ::1, 10.1.0.0/16")
    for host in ("::ffff:127.0.0.1", "::ffff:10.1.2.3", "10.1.2.3"):
        assert allow.allows(host), host
    for host in ("::ffff:10.2.0.1", "::ffff:192.0.2.7"):
        assert not allow.allows(host), host
    assert LOOPBACK.allows("::ffff:127.0.0.1")
    # a network written in the mapped form still matches the mapped address
    assert AllowList.parse("::ffff:10.0.0.0/104").allows("::ffff:10.1.2.3")


def test_parse():
    assert AllowList.parse("any").anyone and AllowList.parse(" ANY ").anyone and ANY.anyone
    assert ANY.allows("192.0.2.7") and ANY.allows("not-an-address") and ANY.allows(None)
    allow = AllowList.parse("10.0.0.5,,192.168.0.0/16 ")
    assert not allow.anyone
    assert str(allow) == "10.0.0.5/32, 192.168.0.0/16" and str(ANY) == "any"
    assert allow.allows("10.0.0.5") and not allow.allows("10.0.0.6") and allow.allows("192.168.7.1")
    assert AllowList.parse("10.1.2.3/8").allows("10.200.0.1")  # host bits set: the network meant


@pytest.mark.parametrize("text, named", [
    ("10.0.0.0/33", "10.0.0.0/33"), ("localhost", "localhost"), ("", "expected"), (" , ", "expected"),
    ("10.0.0.0/8,any", "any"),
])
def test_parse_refuses_what_is_not_an_address_or_network(text, named):
    with pytest.raises(ValueError, match=named):
        AllowList.parse(text)
