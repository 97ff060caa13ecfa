"""The Event Socket server against the FreeSWITCH peer: every decision carried out,
no call ever left parked."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

import tel400
from tel400.testing import free_port
from tel400_freeswitch.peer import Call, FreeSwitchPeer
from tel400_freeswitch.server import EslServer, Settings

from .conftest import EXAMPLES, ROOT

SOUNDS = "/usr/share/freeswitch/sounds/tel400"
PLANS = {
    "numbers": [
        {"number": "4001012345", "rules": [
            {"name": "bj", "provinces": ["CN-BJ"], "strategy": "sequential",
             "targets": ["13901010001", "13901010002", "desk@pbx.example"]},
        ], "default": {"action": "reject", "prompt": "closed"},
         "caps": [{"metric": "minutes", "per": "day", "limit": 2}]},
        {"number": "4001532532", "pin": "2468", "default": {"action": "conference", "room": "4001"}},
        {"number": "4001100868", "rules": [{"action": "queue", "queue": "support"}]},
        {"number": "4001000001", "blacklist": ["13800000000"], "rules": [{"targets": ["13901010001"]}],
         "caps": [{"metric": "calls", "per": "day", "limit": 1}]},
    ]
}


def run(coro):
    return asyncio.run(coro)


async def with_server(router, scenario, settings=None):
    server = EslServer(router, settings or Settings(gateway="gw1", prompt_dir=SOUNDS))
    await server.start("127.0.0.1", 0)
    try:
        return await scenario(server, FreeSwitchPeer())
    finally:
        await server.close()


def one_call(router, call, settings=None):
    async def scenario(server, peer):
        return await peer.play("127.0.0.1", server.port, call)

    return run(with_server(router, scenario, settings))


@pytest.fixture
def router(make_router):
    return make_router(PLANS)


def test_bridge_with_failover_dial_string_and_charging(router):
    call = one_call(router, Call(caller="13901012345", bridge=lambda legs: (legs[1], 61)))
    assert call.apps == [
        ("multiset", "continue_on_fail=true hangup_after_bridge=true"),
        ("bridge", "{origination_caller_id_number=13901012345}"
                   "[leg_timeout=20]sofia/gateway/gw1/13901010001|[leg_timeout=20]sofia/gateway/gw1/13901010002|"
                   "[leg_timeout=20]sofia/external/desk@pbx.example"),
    ]
    assert call.commands[:2] == ["connect", "myevents"] and call.commands[3] == "linger"
    assert call.commands[2].split()[0] == "nixevent" and call.commands[-1] == "exit"
    assert not call.parked and call.hangup_cause == "NORMAL_CLEARING"
    # 61 s were charged at CHANNEL_HANGUP_COMPLETE: 2 minutes (rounded up) fill the cap
    assert router.route("4001012345", "13901012345").reason == "cap_exceeded"


def test_a_call_longer_than_the_router_keeps_calls_is_charged_as_the_longest(make_router):
    """FreeSWITCH's billsec past the longest call (--max-call above it) was refused: the call went uncharged."""
    from tel400.calls import CallRegistry

    plans = {"numbers": [{"number": "4001012345", "rules": [{"targets": ["13901010001"]}],
                          "caps": [{"metric": "minutes", "per": "day", "limit": 100}]}]}
    router = make_router(plans, calls=CallRegistry(max_age_s=3600))
    call = one_call(router, Call(caller="13901012345", bridge=lambda legs: (legs[0], 99_999)))
    assert call.hangup_cause == "NORMAL_CLEARING" and router.calls_in_progress == 0
    # charged as the longest call (60 of the 100 minutes): 40 more minutes fill the cap
    router.route("4001012345", "13901012345", call_id="next")
    assert router.call_ended("next", 40 * 60) is not None
    assert router.route("4001012345", "13901012345").reason == "cap_exceeded"


def test_bridge_failure_falls_back_to_a_notice(router):
    call = one_call(router, Call(caller="13901012345", bridge=lambda legs: (None, 0)))
    assert [app for app, _ in call.apps] == ["multiset", "bridge", "answer", "playback"]
    assert call.apps[-1] == ("playback", f"{SOUNDS}/unavailable.wav")
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and not call.parked


@pytest.mark.parametrize("caller, dialed, prompt, cause", [
    ("13902001234", "4001012345", "closed", "NORMAL_CLEARING"),  # not Beijing: the closed notice
    ("13800000000", "4001000001", "blacklisted", "CALL_REJECTED"),
    ("13901012345", "4009999999", "unknown_number", "UNALLOCATED_NUMBER"),
])
def test_refusals_play_their_notice_and_hang_up(router, caller, dialed, prompt, cause):
    call = one_call(router, Call(caller=caller, destination=dialed))
    assert call.apps == [("answer", ""), ("playback", f"{SOUNDS}/{prompt}.wav")]
    assert call.hangup_cause == cause and not call.parked


def test_cap_exceeded_is_user_busy(router):
    first = one_call(router, Call(destination="4001000001", bridge=lambda legs: (legs[0], 5)))
    assert first.apps[-1][0] == "bridge"
    second = one_call(router, Call(destination="4001000001"))
    assert second.apps[-1] == ("playback", f"{SOUNDS}/limit_reached.wav") and second.hangup_cause == "USER_BUSY"


def test_pin_success(router):
    call = one_call(router, Call(destination="4001532532", digits=["2468"], talk_s=33))
    apps = [app for app, _ in call.apps]
    assert apps == ["answer", "play_and_get_digits", "conference"]
    assert call.apps[1][1] == (f"4 8 3 5000 # {SOUNDS}/enter_pin.wav {SOUNDS}/bad_pin_format.wav "
                               "tel400_pin \\d{4,8}")
    assert call.apps[2] == ("conference", "4001@default") and not call.parked


def test_pin_wrong_then_right(router):
    call = one_call(router, Call(destination="4001532532", digits=["1111", "2468"]))
    assert [app for app, _ in call.apps] == [
        "answer", "play_and_get_digits", "playback", "play_and_get_digits", "conference"]
    assert call.apps[2] == ("playback", f"{SOUNDS}/bad_pin.wav")


def test_pin_failures_end_the_call_and_lock_out(router):
    call = one_call(router, Call(caller="13901012345", destination="4001532532", digits=["1111"] * 3))
    assert [app for app, _ in call.apps][-2:] == ["play_and_get_digits", "playback"]
    assert call.apps[-1] == ("playback", f"{SOUNDS}/bad_pin.wav") and call.hangup_cause == "CALL_REJECTED"
    # two more wrong PINs on the next call make five: locked out, even with the right one after
    second = one_call(router, Call(caller="13901012345", destination="4001532532", digits=["1111", "1111", "2468"]))
    assert second.apps[-1] == ("playback", f"{SOUNDS}/pin_locked.wav")
    third = one_call(router, Call(caller="13901012345", destination="4001532532", digits=["2468"]))
    assert third.apps == [("answer", ""), ("playback", f"{SOUNDS}/pin_locked.wav")]  # locked before asking


def test_a_pin_check_does_not_hold_other_calls(make_router, monkeypatch):
    """A hashed PIN's key derivation ran on the event loop: every other call waited for it."""
    from tel400 import pins

    release, started, timed_out = threading.Event(), threading.Event(), []
    real = pins._derive

    def slow(pin_hash, candidate):  # lasts until the test says so (or 20 s)
        started.set()
        if not release.wait(20):
            timed_out.append(candidate)
        return real(pin_hash, candidate)

    monkeypatch.setattr(pins, "_derive", slow)
    plans = {"numbers": [dict(PLANS["numbers"][0]),
                         {"number": "4001532532", "pin_hash": pins.make_hash("2468", n=1 << 4),
                          "default": {"action": "conference", "room": "4001"}}]}
    router = make_router(plans)

    async def scenario(server, peer):
        pin_call = asyncio.ensure_future(peer.play("127.0.0.1", server.port, Call(
            destination="4001532532", digits=["2468"], talk_s=1), timeout=60))
        for _ in range(2000):
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        other = await asyncio.wait_for(peer.play("127.0.0.1", server.port, Call(caller="13901012345")), 30)
        release.set()
        return await pin_call, other

    pin_call, other = run(with_server(router, scenario))
    assert other.apps[-1][0] == "bridge" and other.hangup_cause == "NORMAL_CLEARING"
    assert pin_call.apps[-1] == ("conference", "4001@default")
    assert timed_out == []  # the derivation was still waiting when the other call was done


def test_queue_goes_to_callcenter(router):
    call = one_call(router, Call(destination="4001100868"))
    # answered first, as the mod_xml_curl answer does (one function, tel400_freeswitch.actions, for both)
    assert call.apps == [("answer", ""), ("callcenter", "support@default")] and not call.parked


def test_frames_split_at_every_byte_with_events_before_replies(router):
    call = one_call(router, Call(caller="13901012345", split_bytes=True, interleave=True,
                                 bridge=lambda legs: (legs[0], 10)))
    assert [app for app, _ in call.apps] == ["multiset", "bridge"] and not call.parked


def test_without_full_linger_is_refused_and_the_call_still_routes(router):
    call = one_call(router, Call(caller="13901012345", full=False, bridge=lambda legs: (legs[0], 10)))
    assert "linger" in call.commands and [app for app, _ in call.apps] == ["multiset", "bridge"]
    assert not call.parked


def test_a_peer_that_disconnects_mid_call(router):
    async def scenario(server, peer):
        gone = await peer.play("127.0.0.1", server.port, Call(caller="13902001234", disconnect_after_apps=1))
        after = await peer.play("127.0.0.1", server.port, Call(caller="13902001234"))
        return gone, after

    gone, after = run(with_server(router, scenario))
    assert len(gone.apps) == 1
    assert after.apps == [("answer", ""), ("playback", f"{SOUNDS}/closed.wav")]  # the server carried on


def test_a_malformed_frame_closes_only_its_own_connection(router):
    async def scenario(server, peer):
        good = [Call(caller="13901012345", bridge=lambda legs: (legs[0], 1)) for _ in range(20)]
        bad = Call(caller="13901012345", garbage_after_connect=True)
        results = await asyncio.gather(*(peer.play("127.0.0.1", server.port, c) for c in good + [bad]))
        return results[:-1], results[-1]

    good, bad = run(with_server(router, scenario))
    assert all(c.apps[-1][0] == "bridge" and not c.parked for c in good)
    assert bad.closed_by_adapter and bad.apps == []


def test_a_router_failure_ends_in_the_fallback_notice(router):
    class Broken:
        def route(self, *args, **kwargs):
            raise RuntimeError("simulated")

        def call_ended(self, *args, **kwargs):
            return None

    call = one_call(Broken(), Call(caller="13901012345"))
    assert call.apps == [("answer", ""), ("playback", f"{SOUNDS}/unavailable.wav")]
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and not call.parked


def test_a_charge_the_backend_refuses_is_logged_and_the_call_kept(make_router):
    """Item 2: call_ended now raises BackendError (the call kept for a retry): the session still ends."""
    import structlog.testing

    from .test_router import FailingAddCounters

    router = make_router(PLANS, FailingAddCounters(":cap:", failures=10**9))
    with structlog.testing.capture_logs() as logs:
        call = one_call(router, Call(caller="13901012345", bridge=lambda legs: (legs[0], 65)))
    assert call.apps[-1][0] == "bridge" and not call.parked and call.hangup_cause == "NORMAL_CLEARING"
    failed = [e for e in logs if e["event"] == "esl_call_end_failed"]
    assert len(failed) == 1 and "charge could not be added" in failed[0]["error"]
    assert router.calls_in_progress == 1  # forgotten at its age, counted in calls_dropped


def test_500_concurrent_calls(make_router):
    router = make_router({"numbers": [{"number": "4001012345", "rules": [
        {"strategy": "round_robin", "targets": [{"to": "13901010001", "weight": 3}, {"to": "13901010002", "weight": 7}]}]}]})

    async def scenario(server, peer):
        calls = [Call(caller=f"139010{i:05d}", bridge=lambda legs: (legs[0], 1)) for i in range(500)]
        return await asyncio.gather(*(peer.play("127.0.0.1", server.port, c, timeout=60) for c in calls))

    calls = run(with_server(router, scenario))
    assert all(c.hangup_cause == "NORMAL_CLEARING" and not c.parked for c in calls)
    firsts = [c.apps[-1][1].split("|")[0].rsplit("/", 1)[1] for c in calls]
    assert firsts.count("13901010001") == 150 and firsts.count("13901010002") == 350


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", ""])
def test_the_tel400_esl_command(tmp_path, loop):
    port = free_port()
    exe = ROOT / ".venv" / "bin" / "tel400-esl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tel400_freeswitch.server"]
    process = subprocess.Popen(
        [*cmd, "--plans", str(EXAMPLES / "manual.toml"), "--port", str(port), "--gateway", "gw9",
         "--prompt-dir", "/sounds", "--prompt-ext", "mp3"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TEL400_ESL_LOOP": loop},
    )
    loop = loop or "uvloop"  # unset: uvloop, installed with the http extra
    try:
        line = process.stderr.readline()
        assert "listening on 127.0.0.1:" in line
        assert f", {loop})" in line  # the loop asked for is the loop it runs on
        call = asyncio.run(FreeSwitchPeer().play("127.0.0.1", port, Call(caller="13800000000")))
        assert call.apps == [("answer", ""), ("playback", "/sounds/blacklisted.mp3")]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
        process.stderr.close()
    assert code == 0


def test_a_loop_that_does_not_exist_is_refused(tmp_path):
    exe = ROOT / ".venv" / "bin" / "tel400-esl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tel400_freeswitch.server"]
    done = subprocess.run([*cmd, "--plans", str(EXAMPLES / "manual.toml"), "--port", "0"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TEL400_ESL_LOOP": "tokio"})
    assert done.returncode == 2
    assert done.stderr.strip() == "tel400-esl: TEL400_ESL_LOOP='tokio': expected uvloop or asyncio"


def test_tel400_esl_starts_on_a_store_holding_a_bad_number(tmp_path):
    # a number an older version stored: minutes beyond a C long (before: OverflowError, no start)
    store = tel400.SqliteStore(tmp_path / "plans.db")
    store.replace_all(tel400.load_plans(EXAMPLES / "manual.toml"), actor="test")
    poison = {"number": "4007777777", "caps": [{"metric": "minutes", "per": "day", "limit": "1e30"}],
              "rules": [{"name": "all", "targets": ["13901010001"]}]}
    db = store._connect()
    db.execute("INSERT INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, 0, 'old')",
               ("4007777777", json.dumps(poison)))
    port = free_port()
    exe = ROOT / ".venv" / "bin" / "tel400-esl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tel400_freeswitch.server"]
    process = subprocess.Popen([*cmd, "--plans", store.url, "--port", str(port), "--gateway", "gw9"],
                               stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stderr.readline() for _ in range(2)]
        assert "plan_quarantined" in lines[0] and "4007777777" in lines[0] and "caps[0].limit" in lines[0]
        assert "3 numbers" in lines[1] and "listening on 127.0.0.1:" in lines[1]
        call = asyncio.run(FreeSwitchPeer().play("127.0.0.1", port, Call(caller="13800000000")))
        assert call.apps[0] == ("answer", "")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
        process.stderr.close()
    assert code == 0


def test_pin_policy_options_of_both_commands(tmp_path):
    from tel400 import server_options
    from tel400_freeswitch import server as esl
    from tel400_http import server as http

    for parser in (esl.build_parser(), http.build_parser()):
        args = parser.parse_args(["--plans", "p.toml", "--pin-number-lockout", "5/60",
                                  "--pin-derivations", "4"])
        policy = server_options.pin_policy(args)
        assert (policy.number_failures, policy.number_window_s, policy.derivations) == (5, 60, 4)
        assert server_options.pin_policy(parser.parse_args(["--plans", "p.toml"])) == tel400.pins.PinPolicy()
        with pytest.raises(ValueError, match="derivations: expected a whole number from 1 to 64"):
            server_options.pin_policy(parser.parse_args(["--plans", "p.toml", "--pin-derivations", "0"]))
    plans = tmp_path / "p.json"
    plans.write_text('{"numbers": []}')
    # run as users run it (main() configures logging for the whole process)
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "tel400-esl"), "--plans", str(plans),
                           "--pin-number-lockout", "twenty"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "FAILURES/SECONDS like 20/600" in done.stderr


@pytest.mark.parametrize("full", [True, False], ids=["full", "not-full"])
def test_the_peer_answers_subscriptions_as_mod_event_socket_does(full):
    """myevents twice, event/nixevent/linger without full, and only subscribed events sent."""
    from tel400_freeswitch.protocol import EslProtocol, command, sendmsg

    async def scenario():
        talk = []

        async def serve(reader, writer):
            protocol = EslProtocol()

            async def ask(data: bytes, frames_wanted: int):
                writer.write(data)
                got = []
                while len(got) < frames_wanted:
                    chunk = await reader.read(65536)
                    assert chunk
                    protocol.receive_data(chunk)
                    got += list(protocol.frames())
                return got

            talk.append(await ask(command("connect"), 1))
            talk.append(await ask(command("myevents"), 1))
            talk.append(await ask(command("myevents"), 1))
            talk.append(await ask(command("nixevent", "CHANNEL_EXECUTE", "CHANNEL_ANSWER"), 1))
            talk.append(await ask(command("event", "plain", "NO_SUCH_EVENT"), 1))
            talk.append(await ask(command("filter", "Unique-ID", call.uuid), 1))
            # answer: +OK, then (full) only CHANNEL_EXECUTE_COMPLETE; (not full) CHANNEL_EXECUTE, ANSWER, COMPLETE
            talk.append(await ask(sendmsg("answer", event_uuid="a1"), 2 if full else 4))
            talk.append(await ask(command("filter", "Unique-ID", "someone-else"), 1))
            talk.append(await ask(command("filter", "delete", "Unique-ID", call.uuid), 1))
            # only the filter for another channel is left: this channel's events are held back
            talk.append(await ask(sendmsg("answer", event_uuid="a2"), 1))
            talk.append(await ask(command("exit"), 2))
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        call = Call(full=full, interleave=False)
        async with server:
            await FreeSwitchPeer().play("127.0.0.1", server.sockets[0].getsockname()[1], call, timeout=10)
        return talk

    talk = run(scenario())
    texts = [[f.reply_text if f.is_reply else (f.event.name if f.event else f.content_type) for f in frames]
             for frames in talk]
    refused = "-ERR command not found"
    assert texts[1] == ["+OK Events Enabled"] and texts[2] == ["-ERR aready enabled."]  # sic, as FreeSWITCH
    assert texts[3] == ["+OK events nixed" if full else refused]
    assert texts[4] == ["-ERR no keywords supplied" if full else refused]
    assert texts[5][0].startswith("+OK filter added.")  # filter works without full too
    if full:
        assert texts[6] == ["+OK", "CHANNEL_EXECUTE_COMPLETE"]
    else:
        assert texts[6] == ["+OK", "CHANNEL_EXECUTE", "CHANNEL_ANSWER", "CHANNEL_EXECUTE_COMPLETE"]
    assert texts[8][0].startswith("+OK filter deleted.")
    assert texts[9] + texts[10] == ["+OK", "+OK bye", "text/disconnect-notice"]


def test_every_call_ends_exactly_once_whatever_the_peer_does(router):
    """Normal, failed bridge, disconnect mid-call, garbage, stuck application, silence: one call_ended each."""
    ended: list[str] = []

    class Counting:
        longest_call_s = router.longest_call_s
        pin_policy = router.pin_policy

        def route(self, *args, **kwargs):
            return router.route(*args, **kwargs)

        def call_ended(self, uuid, seconds, target=None):
            ended.append(uuid)
            return router.call_ended(uuid, seconds, target)

    calls = [
        Call(caller="13901012345", bridge=lambda legs: (legs[0], 1)),
        Call(caller="13901012345", bridge=lambda legs: (None, 0)),
        Call(caller="13902001234", disconnect_after_apps=1),
        Call(caller="13901012345", garbage_after_connect=True),
        Call(destination="4001000001", stuck_apps=frozenset({"playback"})),
        Call(destination="4001000001", silent_after_commands=5),
        Call(destination="4001532532", digits=["1111", "2468"], split_bytes=True, interleave=True),
    ]
    settings = Settings(gateway="gw1", prompt_dir=SOUNDS, reply_timeout_s=0.5, app_timeout_s=0.5)

    async def scenario(server, peer):
        return await asyncio.gather(*(peer.play("127.0.0.1", server.port, c, timeout=20) for c in calls))

    run(with_server(Counting(), scenario, settings))
    assert sorted(ended) == sorted(c.uuid for c in calls)  # each once, none lost
    assert router.calls_in_progress == 0
