"""The Event Socket parser alone: one bridged call's bytes, as FreeSWITCH sends them.

The stream is what the in-memory FreeSWITCH peer (``tel400_freeswitch.peer``)
writes for one call the adapter bridges at once: the connect reply (the
channel's data, ~50 URL-encoded headers), the command replies, the
``CHANNEL_EXECUTE`` / ``CHANNEL_EXECUTE_COMPLETE`` / ``CHANNEL_BRIDGE`` /
``CHANNEL_HANGUP`` / ``CHANNEL_HANGUP_COMPLETE`` events, the linger and
goodbye notices: 15 frames, ~13 KB.  It is fed one peer write at a time (what
a loopback read delivers), every frame is taken, and the headers the session
reads are read (``read_like_the_session``).

``test_esl_parser_call`` reports µs per call (``extra_info["us_per_call"]``) of
each parser: the Python reference and its compiled twin (``_fastparse``).
``test_esl_parser_interleaved`` times the active parser (the twin when built) against a fixed yardstick in
alternating batches -- splitting the same bytes into lines and each line at
its colon, the least any line-based parser does -- and keeps the median of
yardstick / parser (``extra_info["lines_over_parser"]``, what the CI guard
reads).  The per-line parser that decoded every header of every frame
(before issue 15) measured 0.05; the block parser with lazy headers 0.31; its
compiled twin 0.97-1.03.

    .venv/bin/pytest bench/test_bench_esl_parser.py --benchmark-enable --benchmark-columns=median
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time

import pytest

from tel400_freeswitch import protocol
from tel400_freeswitch.peer import Call, _Conversation

CALLS_PER_BATCH = 200
#: the session's reads: every frame's type, the connect reply's channel data, each event's name and
#: Application-UUID, the hangup's billing headers (server.py, ``_run``, ``execute``, ``_report_end``)
CHANNEL_HEADERS = ("Unique-ID", "Caller-Destination-Number", "Caller-Caller-ID-Number")
END_HEADERS = ("variable_billsec", "variable_bridge_channel")


class _Recorder:
    """Stands in for the peer's socket writer: keeps each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


@functools.lru_cache(maxsize=None)
def bridged_call() -> tuple[bytes, ...]:
    """The peer's writes for a call bridged at once and hung up (built once, outside any timing).

    The adapter's side is the commands ``server.py`` sends for a ``bridge``
    decision, in order.
    """
    call = Call(caller="13901012345", destination="4001012345", bridge=lambda legs: (legs[0], 30))
    recorder = _Recorder()
    conversation = _Conversation("7610dcfe-e294-11e8-b372-4b084ebbf04f", call, recorder)
    commands = [
        protocol.command("connect"), protocol.command("myevents"), protocol.command("linger"),
        protocol.sendmsg("multiset", "continue_on_fail=true hangup_after_bridge=true",
                         event_uuid="tel400-1-0a1b2c3d"),
        protocol.sendmsg("bridge", "{origination_caller_id_number=13901012345}[leg_timeout=30]"
                         "sofia/gateway/gw1/13800138000|[leg_timeout=30]sofia/gateway/gw1/13800138001",
                         event_uuid="tel400-2-4e5f6a7b"),
        protocol.command("exit"),
    ]

    async def play() -> None:
        for data in commands:
            cmd, headers, body, rest = conversation._next_command(data)
            assert not rest
            await conversation._handle(cmd, headers, body)

    asyncio.run(play())
    return tuple(recorder.writes)


def read_like_the_session(writes, parser=None) -> int:
    """Parse one call's writes as the session does (with ``parser``'s EslProtocol, the active one by
    default); the number of frames (checked by the tests)."""
    proto = (parser or protocol.PARSERS[protocol.IMPLEMENTATION]).EslProtocol()
    n = 0
    first = True
    for data in writes:
        proto.receive_data(data)
        while (frame := proto.next_frame()) is not None:
            n += 1
            if first:
                first = False
                for name in CHANNEL_HEADERS:
                    frame.headers.get(name)
            if frame.is_reply:
                frame.ok
            elif frame.is_disconnect:
                frame.disposition
            elif frame.event is not None:
                event = frame.event
                name = event.name
                event.get("Application-UUID")
                if name == "CHANNEL_HANGUP_COMPLETE":
                    for header in END_HEADERS:
                        event.get(header)
    return n


def yardstick(writes) -> int:
    """The same bytes split into lines and each line at its colon.

    A cost no parser written in Python goes under.
    """
    n = 0
    for data in writes:
        for line in data.split(b"\n"):
            line.partition(b":")
            n += 1
    return n


def _batch(run, writes) -> float:
    t0 = time.perf_counter()
    for _ in range(CALLS_PER_BATCH):
        run(writes)
    return time.perf_counter() - t0


def test_the_recorded_call_is_a_bridged_call():
    writes = bridged_call()
    proto = protocol.EslProtocol()
    for data in writes:
        proto.receive_data(data)
    frames = list(proto.frames())
    names = [f.event.name for f in frames if f.event is not None]
    assert names == ["CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_EXECUTE", "CHANNEL_BRIDGE",
                     "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"]
    assert frames[0].headers.get("Caller-Destination-Number") == "4001012345"
    assert [f.disposition for f in frames if f.is_disconnect] == ["linger", "disconnect"]
    assert read_like_the_session(writes) == len(frames) == 15


@pytest.mark.parametrize("parser", list(protocol.PARSERS.values()), ids=list(protocol.PARSERS))
def test_esl_parser_call(benchmark, parser):
    """µs per call of each parser (the reference, its compiled twin) over one bridged call's stream."""
    writes = bridged_call()
    benchmark.pedantic(lambda: [read_like_the_session(writes, parser) for _ in range(CALLS_PER_BATCH)],
                       rounds=15, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(calls=CALLS_PER_BATCH, bytes_per_call=sum(map(len, writes)),
                                frames_per_call=read_like_the_session(writes, parser))
    if benchmark.stats is not None:  # None without --benchmark-enable (the test then only checks it runs)
        benchmark.extra_info["us_per_call"] = round(benchmark.stats.stats.median / CALLS_PER_BATCH * 1e6, 1)


def test_esl_parser_interleaved(benchmark):
    """The yardstick over the parser in alternating batches; the median ratio is what the CI guard reads."""
    writes = bridged_call()
    ratios: list[float] = []
    parser_s: list[float] = []

    def rounds() -> None:
        for _ in range(15):
            parse = _batch(read_like_the_session, writes)
            parser_s.append(parse)
            ratios.append(_batch(yardstick, writes) / parse)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    benchmark.extra_info.update(
        calls=CALLS_PER_BATCH * 15 * 2, lines_over_parser=round(statistics.median(ratios), 3),
        parser=protocol.IMPLEMENTATION,
        parser_us_per_call=round(statistics.median(parser_s) / CALLS_PER_BATCH * 1e6, 1))
