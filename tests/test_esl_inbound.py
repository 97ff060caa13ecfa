"""tel400-esl inbound: one connection to FreeSWITCH's event socket (the peer's InboundSwitch) carries every call.

The same decisions as outbound (tests/test_esl_server.py), carried out with
``sendmsg <uuid>`` on the shared connection; then what only inbound has:
the hand-shake, the filter, replies of many calls on one connection, the
limits, a lost connection, a hostile ``Unique-ID``, the command.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tel400_freeswitch import inbound
from tel400_freeswitch.inbound import InboundClient
from tel400_freeswitch.peer import Call, InboundSwitch
from tel400_freeswitch.server import Settings

from .conftest import EXAMPLES, ROOT
from .test_esl_server import PLANS, SOUNDS

HANDSHAKE = ["auth ClueCon", "filter variable_tel400_route true",
             "event plain CHANNEL_PARK CHANNEL_EXECUTE_COMPLETE CHANNEL_BRIDGE CHANNEL_HANGUP_COMPLETE"]


def settings(**options) -> Settings:
    return Settings(gateway="gw1", prompt_dir=SOUNDS, **options)


async def eventually(condition, timeout: float = 10.0) -> None:
    """Until ``condition()`` holds (a failure after ``timeout``: this waits for behaviour, it times nothing)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def with_switch(router, scenario, *, client_options=None, settings_=None, **switch_options):
    switch = await InboundSwitch(**switch_options).start()
    client = InboundClient(router, "127.0.0.1", switch.port, settings_ or settings(), **(client_options or {}))
    client.start()
    try:
        return await scenario(switch, client)
    finally:
        await client.close(grace_s=1)
        await switch.close()


def one_call(router, call: Call, **options) -> Call:
    async def scenario(switch, client):
        await client.wait_serving(10)
        return await switch.place(call, timeout=30)

    return asyncio.run(with_switch(router, scenario, **options))


@pytest.fixture
def router(make_router):
    return make_router(PLANS)


# -- every decision, as outbound ------------------------------------------------------------


def test_a_bridge_with_its_failover_string_charged_at_its_end(router):
    call = one_call(router, Call(caller="13901012345", bridge=lambda legs: (legs[1], 61)))
    assert call.apps == [
        ("multiset", "continue_on_fail=true hangup_after_bridge=true"),
        ("bridge", "{origination_caller_id_number=13901012345}"
                   "[leg_timeout=20]sofia/gateway/gw1/13901010001|[leg_timeout=20]sofia/gateway/gw1/13901010002|"
                   "[leg_timeout=20]sofia/external/desk@pbx.example"),
    ]
    assert not call.parked and call.hangup_cause == "NORMAL_CLEARING"
    # 61 s charged from CHANNEL_HANGUP_COMPLETE: 2 minutes fill the cap
    assert router.route("4001012345", "13901012345").reason == "cap_exceeded"
    assert router.calls_in_progress == 0


def test_a_failed_bridge_falls_back_to_the_notice(router):
    call = one_call(router, Call(caller="13901012345", bridge=lambda legs: (None, 0)))
    assert [app for app, _ in call.apps] == ["multiset", "bridge", "answer", "playback"]
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and not call.parked


@pytest.mark.parametrize("caller, dialed, prompt, cause", [
    ("13902001234", "4001012345", "closed", "NORMAL_CLEARING"),
    ("13800000000", "4001000001", "blacklisted", "CALL_REJECTED"),
    ("13901012345", "4009999999", "unknown_number", "UNALLOCATED_NUMBER"),
])
def test_refusals_play_their_notice_and_hang_up(router, caller, dialed, prompt, cause):
    call = one_call(router, Call(caller=caller, destination=dialed))
    assert call.apps == [("answer", ""), ("playback", f"{SOUNDS}/{prompt}.wav")]
    assert call.hangup_cause == cause and not call.parked


def test_a_wrong_then_right_pin_and_the_conference(router):
    call = one_call(router, Call(destination="4001532532", digits=["1111", "2468"]))
    assert [app for app, _ in call.apps] == [
        "answer", "play_and_get_digits", "playback", "play_and_get_digits", "conference"]
    assert call.apps[-1] == ("conference", "4001@default") and not call.parked


def test_a_queue_and_a_cap_exceeded(router):
    assert one_call(router, Call(destination="4001100868")).apps == [("answer", ""), ("callcenter", "support@default")]
    assert one_call(router, Call(destination="4001000001")).apps[-1][0] == "bridge"
    busy = one_call(router, Call(destination="4001000001"))
    assert busy.apps[-1] == ("playback", f"{SOUNDS}/limit_reached.wav") and busy.hangup_cause == "USER_BUSY"


def test_frames_split_at_every_byte(router):
    call = one_call(router, Call(caller="13901012345", bridge=lambda legs: (legs[0], 10)), split_bytes=True)
    assert call.apps[-1][0] == "bridge" and call.billsec == 10 and not call.parked


# -- the connection -------------------------------------------------------------------------


def test_the_hand_shake_and_every_command_naming_its_channel(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        call = await switch.place(Call(caller="13901012345", bridge=lambda legs: (legs[0], 5)))
        return switch, call

    switch, call = asyncio.run(with_switch(router, scenario))
    connection = switch.connections[0]
    assert connection.commands[:3] == HANDSHAKE  # the filter before the events: nothing unfiltered comes
    assert [line for line in connection.commands[3:]] == [f"sendmsg {call.uuid}"] * 2
    assert [uuid for uuid, _ in connection.sendmsgs] == [call.uuid] * 2


def test_only_calls_the_dialplan_marked_are_routed_and_only_their_events_sent(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        connection = switch.connections[0]
        before = connection.written
        other = await switch.place(Call(caller="13901012345", route_variable=False), timeout=0.5)
        other_bytes = connection.written - before
        ours = await switch.place(Call(caller="13901012345", bridge=lambda legs: (legs[0], 1)))
        return other, other_bytes, ours

    other, other_bytes, ours = asyncio.run(with_switch(router, scenario))
    assert other.parked and other.apps == []  # not tel400's: left to the dialplan (here its park timeout)
    assert other_bytes == 0  # filtered out at FreeSWITCH: not one of its events was sent
    assert ours.apps[-1][0] == "bridge"


def test_500_concurrent_calls_on_one_connection_each_get_their_replies(make_router):
    router = make_router({"numbers": [{"number": "4001012345", "rules": [
        {"strategy": "round_robin", "targets": [{"to": "13901010001", "weight": 3},
                                                {"to": "13901010002", "weight": 7}]}]}]})

    async def scenario(switch, client):
        await client.wait_serving(10)
        calls = [Call(caller=f"139010{i:05d}", bridge=lambda legs: (legs[0], 1)) for i in range(500)]
        return switch, client, await asyncio.gather(*(switch.place(c, timeout=60) for c in calls))

    switch, client, calls = asyncio.run(with_switch(router, scenario))
    assert all(c.hangup_cause == "NORMAL_CLEARING" and not c.parked and c.billsec == 1 for c in calls)
    firsts = [c.apps[-1][1].split("|")[0].rsplit("/", 1)[1] for c in calls]
    assert firsts.count("13901010001") == 150 and firsts.count("13901010002") == 350
    assert len(switch.connections) == 1 and client.handled == 500 and client.active == 0
    assert router.calls_in_progress == 0


def test_a_wrong_password_is_refused_and_tried_again_with_a_back_off(router):
    async def scenario(switch, client):
        await eventually(lambda: len(switch.connections) >= 3)
        return switch, client

    switch, client = asyncio.run(with_switch(router, scenario, password="not-ClueCon"))
    assert not client.serving and client.connected == 0
    assert all(c.commands == ["auth ClueCon"] for c in switch.connections)  # nothing else tried unauthenticated


def test_a_lost_connection_charges_its_calls_and_the_next_one_serves(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        stuck = asyncio.ensure_future(switch.place(Call(caller="13901012345", stuck_apps=frozenset({"bridge"}))))
        await eventually(lambda: client.active == 1 and any(a == "bridge" for a, _ in switch.channels and
                                                            next(iter(switch.channels.values())).call.apps))
        switch.drop_connections()  # FreeSWITCH gone from the network; its channel stays up
        await eventually(lambda: client.active == 0)
        await eventually(lambda: client.serving and client.connected == 2)  # connected again
        after = await switch.place(Call(caller="13901012345", destination="4001100868"))
        next(iter(switch.channels.values())).hangup("NORMAL_CLEARING")
        return client, await stuck, after

    client, stuck, after = asyncio.run(with_switch(router, scenario))
    assert stuck.apps[-1][0] == "bridge"  # its end never reached tel400: released, not charged twice
    assert after.apps == [("answer", ""), ("callcenter", "support@default")]
    assert router.calls_in_progress == 0 and client.handled == 2


def test_parks_beyond_max_calls_are_hung_up_with_congestion(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        first = asyncio.ensure_future(switch.place(Call(caller="13901012345", stuck_apps=frozenset({"bridge"}))))
        await eventually(lambda: client.active == 1)
        refused = await switch.place(Call(caller="13901012345"))
        for channel in list(switch.channels.values()):
            channel.hangup("NORMAL_CLEARING")
        return client, refused, await first

    client, refused, first = asyncio.run(with_switch(router, scenario, client_options={"max_calls": 1}))
    assert refused.hangup_cause == inbound.FULL_CAUSE == "SWITCH_CONGESTION" and refused.apps == []
    assert first.apps[-1][0] == "bridge" and client.shed == 1


def test_a_park_announced_again_is_not_routed_twice(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        placed = asyncio.ensure_future(switch.place(Call(caller="13901012345", stuck_apps=frozenset({"bridge"}))))
        await eventually(lambda: switch.channels and next(iter(switch.channels.values())).call.apps[-1:] != []
                         and next(iter(switch.channels.values())).call.apps[-1][0] == "bridge")
        channel = next(iter(switch.channels.values()))
        channel.emit(channel.channel_headers("CHANNEL_PARK"))  # during the call
        await asyncio.sleep(0.1)
        channel.hangup("NORMAL_CLEARING")
        call = await placed
        channel.emit(channel.channel_headers("CHANNEL_PARK"))  # after its end
        await asyncio.sleep(0.1)
        return switch, call

    switch, call = asyncio.run(with_switch(router, scenario))
    assert [app for app, _ in call.apps] == ["multiset", "bridge"]
    assert len(switch.connections[0].sendmsgs) == 2


def test_a_unique_id_that_could_inject_a_command_is_never_followed(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        call = await switch.place(Call(caller="13901012345", uuid="x\n\nsendmsg victim\ncall-command: hangup"),
                                  timeout=0.5)
        return switch, client, call

    switch, client, call = asyncio.run(with_switch(router, scenario))
    assert call.parked and call.apps == [] and client.strange == 1
    assert switch.connections[0].commands == HANDSHAKE  # not a byte written for it


def test_a_silent_freeswitch_gets_the_hangup_and_the_call_is_let_go(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        placed = asyncio.ensure_future(switch.place(Call(caller="13901012345"), timeout=2))
        await eventually(lambda: client.handled == 1)
        return switch, client, await placed

    # silent after the hand-shake and the multiset: the bridge goes unanswered
    switch, client, call = asyncio.run(with_switch(router, scenario, silent_after_commands=4,
                                                    settings_=settings(reply_timeout_s=0.3)))
    # then a hangup for the channel, and no exit (the connection is every call's)
    assert switch.connections[0].ignored == [f"sendmsg {call.uuid}"] * 2
    assert call.apps == [("multiset", "continue_on_fail=true hangup_after_bridge=true")]
    assert client.active == 0 and router.calls_in_progress == 0


def test_garbage_from_freeswitch_drops_the_connection_and_tel400_connects_again(router):
    async def scenario(switch, client):
        await eventually(lambda: len(switch.connections) >= 2)
        return client

    client = asyncio.run(with_switch(router, scenario, garbage_after_auth=True))
    assert not client.serving


def test_freeswitch_shutting_down_ends_its_calls_with_their_events(router):
    async def scenario(switch, client):
        await client.wait_serving(10)
        placed = asyncio.ensure_future(switch.place(Call(caller="13901012345", stuck_apps=frozenset({"bridge"}))))
        await eventually(lambda: client.active == 1 and switch.channels
                         and next(iter(switch.channels.values())).call.apps[-1:][0][0] == "bridge")
        await switch.close()  # hangs the channels up (SYSTEM_SHUTDOWN), then the shutdown notice
        await eventually(lambda: client.active == 0)
        return await placed

    call = asyncio.run(with_switch(router, scenario))
    assert call.hangup_cause == "SYSTEM_SHUTDOWN" and router.calls_in_progress == 0


@pytest.mark.parametrize("text, expected", [
    ("fs1", ("fs1", 8021)), ("10.0.0.7:8022", ("10.0.0.7", 8022)), ("[::1]:8021", ("::1", 8021)),
])
def test_inbound_addresses(text, expected):
    assert inbound.parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "fs1:0", "fs1:70000", "fs1:x", "[::1", "fs1..example", ".fs1",
                                  "x" * 64 + ".example:8021", "fs1." + "a" * 250, "[1:2:3:4:5:6:7:8:9]"])
def test_bad_inbound_addresses_are_refused(text):
    with pytest.raises(ValueError):
        inbound.parse_address(text)


@pytest.mark.parametrize("password", ["", " ClueCon", "Clue\nCon", "Clue\x00Con"])
def test_a_password_that_cannot_go_on_the_auth_line_is_refused(password):
    with pytest.raises(ValueError):
        inbound.check_password(password)


# -- the command ------------------------------------------------------------------------------


def _tel400_esl() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "tel400-esl"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tel400_freeswitch.server"]


def test_the_tel400_esl_command_inbound(tmp_path):
    secret = tmp_path / "esl-password"
    secret.write_text("s3cret-esl\n")

    async def scenario():
        switch = await InboundSwitch(password="s3cret-esl").start()
        process = await asyncio.create_subprocess_exec(
            *_tel400_esl(), "--plans", str(EXAMPLES / "manual.toml"), "--inbound", f"127.0.0.1:{switch.port}",
            "--password-file", str(secret), "--prompt-dir", "/sounds", stderr=asyncio.subprocess.PIPE)
        try:
            banner = (await process.stderr.readline()).decode()
            assert f"connecting to FreeSWITCH at 127.0.0.1:{switch.port} (inbound" in banner
            await eventually(lambda: switch.listening, timeout=30)
            call = await switch.place(Call(caller="13800000000"))
            assert call.apps == [("answer", ""), ("playback", "/sounds/blacklisted.wav")]
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
            await switch.close()
        assert code == 0
        assert switch.connections[0].commands[0] == "auth s3cret-esl"

    asyncio.run(scenario())


def test_one_freeswitch_given_twice_has_each_call_routed_once(tmp_path):
    """Two --inbound spellings of one FreeSWITCH (its address and its name): both connections hear every
    park; the process routes each call once, on whichever connection heard it first, and says so."""

    async def scenario():
        switch = await InboundSwitch().start()
        process = await asyncio.create_subprocess_exec(
            *_tel400_esl(), "--plans", str(EXAMPLES / "manual.toml"), "--inbound", f"127.0.0.1:{switch.port}",
            "--inbound", f"localhost:{switch.port}", "--prompt-dir", "/sounds", "--gateway", "gw1",
            stderr=asyncio.subprocess.PIPE)
        try:
            await eventually(lambda: len(switch.listening) == 2, timeout=30)
            calls = await asyncio.gather(*(
                switch.place(Call(caller=f"139010{i:05d}", bridge=lambda legs: (legs[0], 1))) for i in range(20)))
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
            await switch.close()
        return code, calls, switch, (await process.stderr.read()).decode()

    code, calls, switch, stderr = asyncio.run(scenario())
    assert code == 0
    assert all([app for app, _ in call.apps] == ["multiset", "bridge"] for call in calls), [c.apps for c in calls]
    # each call's two applications sent once, over either connection (twice, the second bridge would
    # wait in the channel's queue, and the call was counted against its caps twice)
    sent = [command for connection in switch.connections for command in connection.commands]
    assert sum(command.startswith("sendmsg ") for command in sent) == 2 * 20
    assert stderr.count("esl_inbound_heard_twice") == 1, stderr  # once: the log is rate-limited


def test_what_is_heard_is_bounded_and_a_call_followed_is_never_forgotten():
    from types import SimpleNamespace

    heard = inbound.Heard()
    first, second = SimpleNamespace(max_calls=10), SimpleNamespace(max_calls=2000)
    heard.join(first)
    heard.join(second)
    assert heard.keep == 2000
    assert heard.first("long-call", first) is None  # followed for the whole run below
    for i in range(5000):
        assert heard.first(f"short-{i}", second) is None
        assert heard.first(f"short-{i}", first) is second  # heard again, on the other connection
        heard.over(f"short-{i}")
    assert heard.first("long-call", second) is first
    assert heard.first("short-4999", first) is second and heard.first("short-3000", first) is second
    assert len(heard._over) == 2000 and heard.first("short-2999", first) is None  # the oldest over: forgotten


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2"], "--inbound with --workers"),
    (["--password-file", "/nonexistent/esl-password"], "--password-file"),
    (["--max-calls", "0"], "--max-calls"),
])
def test_the_command_refuses_what_inbound_cannot_do(extra, message):
    done = subprocess.run([*_tel400_esl(), "--plans", str(EXAMPLES / "manual.toml"), "--inbound", "127.0.0.1:8021",
                           *extra], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 2 and message in done.stderr


# -- found in review ----------------------------------------------------------------------------


def test_a_connection_that_served_is_retried_at_the_first_back_off_however_often_it_is_lost(router, monkeypatch):
    # a back-off that would grow to hours were it never reset: each loss of a connection that
    # served must be retried at the first step, else parks during the wait are never routed
    monkeypatch.setattr(inbound, "BACKOFF_S", (0.01, 3600.0))

    async def scenario(switch, client):
        for lost in range(16):
            await eventually(lambda: client.serving and client.connected == lost + 1)
            switch.drop_connections()
        await eventually(lambda: client.serving and client.connected == 17)
        return client

    client = asyncio.run(with_switch(router, scenario))
    assert client.connected == 17


class _OneBadDecision:
    """The router, but one caller's decision is one the session cannot carry out (tel400 failing inside)."""

    def __init__(self, router, caller: str) -> None:
        self._router, self._caller = router, caller

    def route(self, dialed, caller, *args):
        if caller == self._caller:
            return object()  # no .action: Session.decided raises
        return self._router.route(dialed, caller, *args)

    def __getattr__(self, name):
        return getattr(self._router, name)


def test_a_call_that_breaks_inside_tel400_falls_back_alone_and_the_connection_stays(router):
    broken = _OneBadDecision(router, "13901099999")

    async def scenario(switch, client):
        await client.wait_serving(10)
        talking = asyncio.ensure_future(switch.place(Call(caller="13901012345", stuck_apps=frozenset({"bridge"}))))
        await eventually(lambda: client.active == 1 and next(iter(switch.channels.values())).call.apps[-1:] != []
                         and next(iter(switch.channels.values())).call.apps[-1][0] == "bridge")
        bad = await switch.place(Call(caller="13901099999"), timeout=5)
        await eventually(lambda: client.handled == 1)
        still = client.active
        next(iter(switch.channels.values())).hangup("NORMAL_CLEARING")
        return switch, client, bad, still, await talking

    switch, client, bad, still, talking = asyncio.run(with_switch(broken, scenario))
    assert [app for app, _ in bad.apps] == ["answer", "playback"] and not bad.parked  # the fallback notice
    assert still == 1 and len(switch.connections) == 1  # the other call and the connection went on
    assert talking.apps[-1][0] == "bridge" and client.handled == 2 and router.calls_in_progress == 0


def test_a_connection_gone_silent_is_dropped_and_made_again(router, monkeypatch):
    # FreeSWITCH rebooted behind a half-open connection, or its listener thread stuck: no reply,
    # no event, no close.  Held, every call parked from then on would wait for its park timeout.
    monkeypatch.setattr(inbound, "PROBE_S", 0.05)

    async def scenario(switch, client):
        await eventually(lambda: len(switch.connections) >= 2)
        return switch

    switch = asyncio.run(with_switch(router, scenario, silent_after_commands=3,
                                     settings_=settings(reply_timeout_s=0.2)))
    assert switch.connections[0].ignored[:1] == [HANDSHAKE[2]]  # asked if it was there: no answer


def test_an_idle_connection_that_answers_is_kept(router, monkeypatch):
    monkeypatch.setattr(inbound, "PROBE_S", 0.05)

    async def scenario(switch, client):
        await client.wait_serving(10)
        await eventually(lambda: switch.connections[0].commands.count(HANDSHAKE[2]) >= 4)  # asked, and answered
        call = await switch.place(Call(caller="13800000000", destination="4001000001"))
        return switch, client, call

    switch, client, call = asyncio.run(with_switch(router, scenario, settings_=settings(reply_timeout_s=0.2)))
    assert len(switch.connections) == 1 and client.connected == 1
    assert call.apps == [("answer", ""), ("playback", f"{SOUNDS}/blacklisted.wav")]


def test_a_route_variable_the_filter_lets_through_in_any_case_is_routed(router):
    # FreeSWITCH's filter compares values without regard to case: the events of tel400_route=TRUE
    # come; the call must not then wait, parked, for its park timeout
    call = one_call(router, Call(caller="13901012345", route_value="TRUE", bridge=lambda legs: (legs[0], 3)))
    assert call.apps[-1][0] == "bridge" and not call.parked
def test_the_shipped_dialplan_marks_and_parks_what_the_client_filters_on():
    import xml.etree.ElementTree as ET

    actions = [(a.get("application"), a.get("data")) for a in
               ET.parse(ROOT / "adapters" / "freeswitch" / "dialplan-inbound.xml").iter("action")]
    assert actions[0] == ("set", f"{inbound.ROUTE_VARIABLE}=true")  # before the park: CHANNEL_PARK carries it
    assert actions[-1] == ("park", None) and ("set", "park_timeout=180") in actions


class _Transport:
    """Enough of a transport to watch the link pause and resume reading."""

    def __init__(self) -> None:
        self.reading, self.written, self.closing = True, [], False

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def write(self, data):
        self.written.append(data)

    def is_closing(self):
        return self.closing

    def abort(self):
        self.closing = True


@pytest.mark.parametrize("coalesce_s", [0.0, 0.02])
def test_after_a_read_the_next_waits_the_coalescing_interval(router, coalesce_s):
    async def scenario():
        client = InboundClient(router, "127.0.0.1", 1, settings(), coalesce_s=coalesce_s)
        client.loop = asyncio.get_running_loop()
        link = inbound.InboundLink(client)
        transport = _Transport()
        link.connection_made(transport)
        link.data_received(b"Content-Type: auth/request\n\n")
        assert transport.written == [b"auth ClueCon\n\n"]  # the reply is not held back, only the next read
        paused = not transport.reading
        await eventually(lambda: transport.reading, timeout=5)
        link.connection_lost(None)
        return paused

    assert asyncio.run(scenario()) is (coalesce_s > 0)


@pytest.mark.parametrize("coalesce_s", [0.0, 0.1])
def test_500_calls_with_and_without_coalescing(make_router, coalesce_s):
    router = make_router({"numbers": [{"number": "4001012345", "rules": [{"targets": ["13901010001"]}]}]})

    async def scenario(switch, client):
        await client.wait_serving(10)
        calls = [Call(caller=f"139010{i:05d}", bridge=lambda legs: (legs[0], 1)) for i in range(500)]
        return await asyncio.gather(*(switch.place(c, timeout=60) for c in calls))

    calls = asyncio.run(with_switch(router, scenario, client_options={"coalesce_s": coalesce_s}))
    assert all(c.apps[-1][0] == "bridge" and c.billsec == 1 and not c.parked for c in calls)
    assert router.calls_in_progress == 0


def test_the_coalescing_interval_is_bounded(router):
    for bad in (-0.001, inbound.MAX_COALESCE_S + 0.001):
        with pytest.raises(ValueError):
            InboundClient(router, "127.0.0.1", 8021, coalesce_s=bad)


def test_a_decision_waiting_on_redis_holds_no_other_call(make_router, redis_url):
    """Redis counters: a round trip is I/O, so a call whose caps wait on a stalled Redis must not hold
    the loop every other call on the connection is served by (nor, outbound, every other connection)."""
    import redis

    from tel400.redis_counters import RedisCounters

    router = make_router(PLANS, RedisCounters(f"{redis_url}?timeout_ms=20000"))
    assert router.waits_on_io

    async def scenario(switch, client):
        await client.wait_serving(10)
        pauser = redis.Redis.from_url(redis_url)
        pauser.execute_command("CLIENT", "PAUSE", "15000", "WRITE")  # counting the cap waits until UNPAUSE
        try:
            capped = asyncio.ensure_future(switch.place(Call(caller="13901012345", destination="4001000001")))
            await eventually(lambda: client.active == 1)
            uncapped = await switch.place(Call(caller="13901012345", destination="4001100868"))  # no counter
            waiting = not capped.done()
        finally:
            pauser.execute_command("CLIENT", "UNPAUSE")
            pauser.close()
        return uncapped, waiting, await capped

    uncapped, waiting, capped = asyncio.run(with_switch(router, scenario))
    assert uncapped.apps == [("answer", ""), ("callcenter", "support@default")]
    assert waiting  # the capped call was still waiting on Redis when the other was over
    assert [app for app, _ in capped.apps] == ["multiset", "bridge"]
    assert router.calls_in_progress == 0


def test_an_event_freeswitch_should_not_write_is_skipped_and_the_calls_go_on(router):
    """A well-framed event whose block is broken (a header name with a space) costs that event only:
    the connection and every call on it stay."""
    payload = b"Event-Name: CHANNEL_PARK\nvariable_tel400_route: true\nodd name: 1\n\n"
    broken = b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(payload), payload)

    async def scenario(switch, client):
        await client.wait_serving(10)
        placed = asyncio.ensure_future(switch.place(Call(caller="13901012345", stuck_apps=frozenset({"bridge"}))))
        await eventually(lambda: client.active == 1 and any(
            app == "bridge" for channel in switch.channels.values() for app, _ in channel.call.apps))
        switch.connections[0].transport.write(broken)
        after = await switch.place(Call(caller="13901012345", destination="4001100868"))
        next(iter(switch.channels.values())).hangup("NORMAL_CLEARING")
        return client, await placed, after

    client, placed, after = asyncio.run(with_switch(router, scenario))
    assert client.bad_events == 1 and client.connected == 1  # never connected again
    assert after.apps == [("answer", ""), ("callcenter", "support@default")]
    assert placed.apps[-1][0] == "bridge" and placed.hangup_cause == "NORMAL_CLEARING"
    assert router.calls_in_progress == 0 and client.handled == 2


class _SlowPins:
    """A router whose PIN checks take 0.5 s (a hashed PIN's key derivation on the PIN threads)."""

    def __init__(self, router):
        self._router = router
        self.checking, self.checked = threading.Event(), threading.Event()

    def route(self, dialed, caller, at=None, channel="voice", pin=None, call_id=None):
        if pin is None:
            return self._router.route(dialed, caller, at, channel, pin, call_id)
        self.checking.set()
        time.sleep(0.5)
        try:
            return self._router.route(dialed, caller, at, channel, pin, call_id)
        finally:
            self.checked.set()

    def __getattr__(self, name):
        return getattr(self._router, name)


def test_a_pin_decision_that_comes_after_the_call_went_lets_the_call_go(router):
    """The connection is lost while a PIN is checked: the call's end is reported before the router knows
    the call; the decision that then admits it must not leave it 'in progress' (its place held, never
    charged) until the registry's maximum age."""

    slow = _SlowPins(router)

    async def scenario(switch, client):
        await client.wait_serving(10)
        placed = asyncio.ensure_future(switch.place(Call(destination="4001532532", digits=["2468"]), timeout=5))
        await eventually(slow.checking.is_set)  # the PIN is being checked
        switch.drop_connections()
        await eventually(lambda: client.active == 0)
        assert not slow.checked.is_set()  # the call went before its decision came
        await eventually(slow.checked.is_set)
        await asyncio.sleep(0.1)  # the decision's callback, on the loop
        placed.cancel()
        return client

    client = asyncio.run(with_switch(slow, scenario))
    assert client.handled == 1
    assert router.calls_in_progress == 0


def test_a_connection_attempt_that_fails_in_any_way_is_retried(router, monkeypatch):
    """Whatever a connection attempt raises (here the UnicodeError of a name the resolver cannot encode),
    the client logs it and tries again: it never stops connecting for good."""
    attempts = []

    async def scenario(switch, client):
        original = client.loop.create_connection

        async def flaky(*args, **kwargs):
            attempts.append(1)
            if len(attempts) <= 2:
                raise UnicodeError("encoding with 'idna' codec failed")
            return await original(*args, **kwargs)

        monkeypatch.setattr(client.loop, "create_connection", flaky)
        await client.wait_serving(10)
        return await switch.place(Call(destination="4001100868"))

    call = asyncio.run(with_switch(router, scenario))
    assert len(attempts) == 3 and call.apps == [("answer", ""), ("callcenter", "support@default")]
