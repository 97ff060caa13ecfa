"""Which client addresses a server answers: one allow-list for tel400-esl and tel400-http.

tel400-esl checks it as soon as a connection is accepted (``--allow``);
tel400-http checks it on its switch endpoints (``--switch-allow``).  Both
default to this host only (:data:`LOOPBACK`), since whoever reaches a switch
endpoint can route calls and report their ends, which are charged.

An allow-list is written as comma-separated addresses and networks
(``"10.0.0.0/8, 192.0.2.7, ::1"``), or ``any``.  Host names are refused: the
list is about where a connection comes from, and a name would make the answer
depend on a resolver.

An IPv4 client of a dual-stack socket (``--host ::``) arrives as
``::ffff:a.b.c.d``; it is matched as the IPv4 address it is, so an IPv4
network (and the loopback default) lets it in.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

#: This host: every IPv4 loopback address and IPv6's.
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
#: distinct client addresses whose answer is remembered (a stranger's fresh addresses only cost a parse each)
_REMEMBERED = 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    """The client addresses a server answers.

    Args:
        networks: addresses and networks (strings as ``ipaddress.ip_network``
            takes them, host bits allowed, or network objects); ``None``: any
            address.

    Raises:
        ValueError: an entry is not an address or network.

    :meth:`allows` costs a parse and a pass over the networks for an address
    not seen lately; the last 1,024 answers are remembered.
    """

    def __init__(self, networks: Iterable[str | Network] | None) -> None:
        self.networks: tuple[Network, ...] | None = (
            None if networks is None else tuple(ipaddress.ip_network(n, strict=False) for n in networks))
        self._allows = functools.lru_cache(maxsize=_REMEMBERED)(self._match)

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """An allow-list from its command-line form: ``"10.0.0.0/8,192.0.2.7,::1"`` or ``"any"``.

        Raises:
            ValueError: naming the entry that is not an address or network, or
                when there is no entry at all.
        """
        if text.strip().lower() == "any":
            return ANY
        entries = [entry.strip() for entry in text.split(",") if entry.strip()]
        if not entries:
            raise ValueError("expected comma-separated addresses or networks, or 'any'")
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                hint = " ('any' stands alone)" if entry.lower() == "any" else ""
                raise ValueError(f"{entry!r} is not an address or network{hint}") from None
        return cls(entries)

    @property
    def anyone(self) -> bool:
        """True when every address is allowed."""
        return self.networks is None

    def allows(self, host: str | None) -> bool:
        """Whether a client at ``host`` (as the socket names it, e.g. ``"::ffff:10.1.2.3"``) is answered.

        Anything that is not an IP address (``None``, a Unix socket's ``""``)
        is refused unless any address is allowed.
        """
        if self.networks is None:
            return True
        return self._allows(host)

    def _match(self, host: str | None) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        # an IPv4 client of a dual-stack socket: match it as IPv4 too
        mapped = getattr(address, "ipv4_mapped", None)
        return any(address in network or (mapped is not None and mapped in network)
                   for network in self.networks)

    def __str__(self) -> str:
        return "any" if self.networks is None else ", ".join(map(str, self.networks))

    def __repr__(self) -> str:
        return f"AllowList({str(self)!r})"


#: Every address.
ANY = AllowList(None)
#: This host only: the default of both servers.
LOOPBACK = AllowList(LOOPBACK_NETWORKS)
