"""The Event Socket adapter's own CPU per call: parser, session and shell, without sockets or event loop.

One bridged call is placed against an in-process ``EslServer`` by the
FreeSWITCH peer, and the bytes the server received are recorded read by
read.  They are then replayed through fresh ``EslCall`` objects over a
stand-in transport, CALLS times per round, with the real router: what
``bench/test_bench_esl.py`` measures minus the event loop, the transports
and the kernel (which the whole-server figure adds on top).  CPU time
(``time.process_time``), median of the rounds; the router's own share
(``route()`` and ``call_ended()``) is reported beside it.  Much steadier than
the whole-server figure on a loaded machine, so it shows what a change to
the parser or the session is worth.

    .venv/bin/pytest bench/test_bench_esl_adapter.py --benchmark-enable -q
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import tel400
from tel400.testing import free_port
from tel400_freeswitch import protocol, server, session
from tel400_freeswitch.peer import Call, FreeSwitchPeer

from _inputs import MANUAL

CALLS = 1000
ROUNDS = 7


class _Transport:
    """Stands in for the socket's transport: keeps what is written, closes at once."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0


def _cpu_us_per_call(replay) -> list[float]:
    """CPU µs per replayed call, one figure per round of CALLS replays."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(CALLS):
            replay()
        rounds.append((time.process_time() - started) / CALLS * 1e6)
    return rounds


def _router() -> tel400.Router:
    tree = tel400.load_plans(MANUAL).to_dict()
    for number in tree["numbers"]:
        for rule in number["rules"]:
            if "time" in rule:
                rule["time"] = "00:00-23:59"
    tree["numbers"][0]["caps"][0]["limit"] = 10**9
    return tel400.Router(tel400.PlanSet.from_dict(tree))


def test_esl_adapter_cpu_per_call(benchmark, monkeypatch):
    router = _router()
    reads: list[bytes] = []
    shell = server.EslCall

    class Recording(shell):
        def data_received(self, data: bytes) -> None:
            reads.append(bytes(data))
            super().data_received(data)

    monkeypatch.setattr(server, "EslCall", Recording)

    async def measure() -> tuple[list[float], float]:
        esl = server.EslServer(router)
        await esl.start("127.0.0.1", free_port())
        # the session's Event-UUIDs from 0: the replays make the same ones, so the recorded events match
        monkeypatch.setattr(session, "_event_uuids", itertools.count())
        call = await FreeSwitchPeer().play("127.0.0.1", esl.port,
                                           Call(caller="13901012345", bridge=lambda legs: (legs[0], 1)))
        assert call.billsec == 1 and call.apps[-1][0] == "bridge"
        monkeypatch.setattr(server, "EslCall", shell)

        def replay() -> _Transport:
            session._event_uuids = itertools.count()
            conn = shell(esl, lambda: None)
            transport = _Transport()
            conn.connection_made(transport)
            for data in reads:
                conn.data_received(data)
            conn.connection_lost(None)
            return transport

        # the replay is the same call: bridged, ended, said goodbye
        assert b"execute-app-name: bridge" in b"".join(replay().written)
        assert b"".join(replay().written).endswith(b"exit\n\n")
        rounds = _cpu_us_per_call(replay)
        started = time.process_time()
        for _ in range(CALLS):
            router.route("4001012345", "13901012345", None, "voice", None, "bench-1")
            router.call_ended("bench-1", 1, None)
        esl.listener.close()
        return rounds, (time.process_time() - started) / CALLS * 1e6

    rounds, route_us = asyncio.run(measure())
    benchmark.extra_info.update(
        calls=CALLS * ROUNDS, parser=protocol.IMPLEMENTATION, reads_per_call=len(reads),
        bytes_per_call=sum(map(len, reads)), adapter_cpu_us_per_call=round(statistics.median(rounds), 1),
        router_us_per_call=round(route_us, 1))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_esl_inbound_adapter_cpu_per_call(benchmark, monkeypatch):
    """The same for the inbound client: one call's bytes on the shared connection, replayed through a link.

    The call is recorded after the hand-shake with coalescing off (each
    read as FreeSWITCH's writes come), then replayed through a fresh
    ``InboundLink`` in the serving state, over a stand-in transport.
    """
    from tel400_freeswitch import inbound
    from tel400_freeswitch.peer import InboundSwitch

    router = _router()
    reads: list[bytes] = []

    class Recording(inbound.InboundLink):
        def data_received(self, data: bytes) -> None:
            if self.serving:
                reads.append(bytes(data))
            super().data_received(data)

    async def measure() -> tuple[list[float], float]:
        switch = await InboundSwitch().start()
        client = inbound.InboundClient(router, "127.0.0.1", switch.port, coalesce_s=0)
        monkeypatch.setattr(inbound, "InboundLink", Recording)
        client.start()
        await client.wait_serving(10)
        monkeypatch.setattr(inbound, "InboundLink", Recording.__mro__[1])
        monkeypatch.setattr(session, "_event_uuids", itertools.count())
        call = await switch.place(Call(caller="13901012345", bridge=lambda legs: (legs[0], 1)))
        assert call.billsec == 1 and call.apps[-1][0] == "bridge"
        await client.close(1)
        await switch.close()

        def replay() -> _Transport:
            session._event_uuids = itertools.count()
            client.heard = inbound.Heard()  # the same uuid each time: not a park announced again
            link = inbound.InboundLink(client)
            transport = _Transport()
            link.connection_made(transport)
            link.serving = True
            for data in reads:
                link.data_received(data)
            link._handshake.cancel()
            link.connection_lost(None)
            return transport

        client.loop = asyncio.get_running_loop()
        handled = client.handled
        assert b"execute-app-name: bridge" in b"".join(replay().written)
        assert client.handled == handled + 1 and client.active == 0  # the replay is the same call, over
        rounds = _cpu_us_per_call(replay)
        return rounds

    rounds = asyncio.run(measure())
    benchmark.extra_info.update(
        calls=CALLS * ROUNDS, parser=protocol.IMPLEMENTATION, reads_per_call=len(reads),
        bytes_per_call=sum(map(len, reads)), adapter_cpu_us_per_call=round(statistics.median(rounds), 1))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
