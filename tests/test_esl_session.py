"""The Event Socket session without sockets: frames built in memory in, commands and requests out.

Frames are made the way FreeSWITCH writes them (the peer's serializers) and
parsed by the protocol, so the session sees exactly what the shell hands it.
"""

from __future__ import annotations

import pytest

from tel400 import Decision
from tel400_freeswitch import actions, session as sm
from tel400_freeswitch.actions import Settings
from tel400_freeswitch.peer import MYEVENTS, event_frame, reply_frame, serialize
from tel400_freeswitch.protocol import EslProtocol
from tel400_freeswitch.session import CallEnd, RouteRequest, Session

UUID = "6d7cd7b8-8c10-4f3b-9c38-7b6a1f0e2b11"
SOUNDS = "/sounds"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def parse(data: bytes):
    protocol = EslProtocol()
    protocol.receive_data(data)
    return list(protocol.frames())


def reply(text: str = "+OK"):
    return parse(reply_frame(text))[0]


def channel_data(uuid: str = UUID):
    return parse(serialize([
        ("Event-Name", "CHANNEL_DATA"), ("Unique-ID", uuid), ("Caller-Destination-Number", "4001012345"),
        ("Caller-Caller-ID-Number", "13901012345"), ("Content-Type", "command/reply"), ("Reply-Text", "+OK\n"),
        ("Socket-Mode", "async"), ("Control", "full"),
    ]))[0]


def event(name: str, **headers: str):
    pairs = [("Event-Name", name), ("Unique-ID", UUID)] + [(k.replace("__", "-"), v) for k, v in headers.items()]
    return parse(event_frame(pairs))[0]


def complete(app_uuid: str, **headers: str):
    return event("CHANNEL_EXECUTE_COMPLETE", Application__UUID=app_uuid, **headers)


def hangup_complete(billsec: int = 0, bridge_channel: str = ""):
    return event("CHANNEL_HANGUP_COMPLETE", variable_billsec=str(billsec), variable_bridge_channel=bridge_channel)


def notice(disposition: str):
    return parse(f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {UUID}\n"
                 f"Content-Disposition: {disposition}\nContent-Length: 0\n\n".encode())[0]


def commands(data: bytes) -> list[tuple[str, dict[str, str]]]:
    """What the session wrote: (command line, headers) each (no bodies: our arguments are one line)."""
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            first, *lines = block.split("\n")
            out.append((first, dict(line.split(": ", 1) for line in lines)))
    return out


def apps(data: bytes) -> list[tuple[str, str]]:
    return [(h.get("execute-app-name") or "hangup:" + h.get("hangup-cause", ""), h.get("execute-app-arg", ""))
            for c, h in commands(data) if c.split()[0] == "sendmsg"]


def decision(action: str, reason: str = "ok", targets=(), prompt=None) -> Decision:
    return Decision(action, tuple(targets), prompt, reason, None, None, "4001012345", "13901012345")


BRIDGE = decision("bridge", targets=("13901010001", "13901010002"))


def settings(**options) -> Settings:
    return Settings(prompt_dir=SOUNDS, reply_timeout_s=10, app_timeout_s=60, max_call_s=3600, **options)


def routed(clock=None, **options) -> tuple[Session, Clock]:
    """A session that has the channel data and its subscription: waiting for the decision."""
    clock = clock or Clock()
    s = Session(settings(**options), clock)
    s.data_to_send()
    s.receive_frame(channel_data())
    for _ in range(3):
        s.receive_frame(reply())
    assert s.state == sm.ROUTING
    return s, clock


def running_uuid(s: Session) -> str:
    return s._running_uuid


def finish(s: Session, *frames) -> CallEnd | None:
    for frame in frames:
        s.receive_frame(frame)
    return s.take_end()


# -- connecting and subscribing ----------------------------------------------------------------


def test_connect_subscribe_and_linger_go_in_one_write_and_subscribe_only_what_is_read():
    s = Session(settings(), Clock())
    sent = commands(s.data_to_send())
    assert [c.split()[0] for c, _ in sent] == ["connect", "myevents", "nixevent", "linger"]
    nixed = set(sent[2][0].split()[1:])
    # myevents' list minus nixevent's is exactly the three events the session reads
    assert MYEVENTS - nixed == set(sm.EVENTS) == {"CHANNEL_EXECUTE_COMPLETE", "CHANNEL_BRIDGE",
                                                  "CHANNEL_HANGUP_COMPLETE"}
    assert nixed <= MYEVENTS
    assert s.state == sm.CONNECTING and s.deadline == 1000.0 + 10


def test_the_channel_data_then_three_replies_ask_for_a_decision():
    s, _ = routed()
    assert s.take_request() == RouteRequest("4001012345", "13901012345", UUID, None)
    assert s.take_request() is None and s.lingering and s.data_to_send() == b""


def test_without_full_nixevent_and_linger_are_refused_and_the_call_still_routes():
    s = Session(settings(), Clock())
    s.receive_frame(channel_data())
    s.receive_frame(reply("+OK Events Enabled"))
    s.receive_frame(reply("-ERR command not found"))
    s.receive_frame(reply("-ERR command not found"))
    assert s.state == sm.ROUTING and not s.lingering
    # every myevents event then comes: the unneeded ones are skipped
    s.receive_frame(event("CHANNEL_EXECUTE", Application__UUID="x"))
    assert s.ignored == 1 and s.state == sm.ROUTING


# -- carrying out -------------------------------------------------------------------------------


def test_a_bridge_sends_its_options_with_it_and_charges_from_the_hangup_complete():
    s, clock = routed()
    s.take_request()
    s.decided(BRIDGE)
    sent = s.data_to_send()
    assert apps(sent) == [("multiset", "continue_on_fail=true hangup_after_bridge=true"),
                          ("bridge", settings().dial_string(BRIDGE))]
    bridge_uuid = running_uuid(s)
    s.receive_frame(reply())  # multiset's
    s.receive_frame(complete("some-multiset-uuid", Application="multiset"))  # not the bridge: ignored
    s.receive_frame(reply())  # bridge's
    assert s.state == sm.RUNNING and s.deadline == s.call_deadline  # a bridge lasts as long as the call
    s.receive_frame(event("CHANNEL_BRIDGE"))
    clock.t += 61
    s.receive_frame(complete(bridge_uuid, variable_originate_disposition="SUCCESS"))
    assert s.state == sm.ENDING
    end = finish(s, hangup_complete(61, "sofia/gateway/gw1/13901010002"))
    assert end == CallEnd(UUID, 61, "13901010002", True)
    assert commands(s.data_to_send()) == [("exit", {})] and s.state == sm.CLOSING
    s.receive_frame(reply("+OK bye"))
    assert s.state == sm.CLOSED and s.close == "close" and s.deadline is None
    assert s.take_end() is None  # exactly once


def test_an_unanswered_bridge_falls_back_to_the_notice():
    s, _ = routed()
    s.take_request()
    s.decided(BRIDGE)
    s.data_to_send()
    bridge_uuid = running_uuid(s)
    s.receive_frame(reply())
    s.receive_frame(reply())
    s.receive_frame(complete(bridge_uuid, variable_originate_disposition="USER_BUSY"))
    assert apps(s.data_to_send()) == [("answer", "")]
    s.receive_frame(reply())
    s.receive_frame(complete(running_uuid(s)))
    assert apps(s.data_to_send()) == [("playback", f"{SOUNDS}/unavailable.wav")]
    s.receive_frame(reply())
    s.receive_frame(complete(running_uuid(s)))
    assert apps(s.data_to_send()) == [("hangup:NORMAL_TEMPORARY_FAILURE", "")]


def test_an_execute_complete_of_another_application_does_not_end_the_wait():
    s, _ = routed()
    s.take_request()
    s.decided(decision("reject", "closed", prompt="closed"))
    assert apps(s.data_to_send()) == [("answer", "")]
    s.receive_frame(reply())
    s.receive_frame(complete("tel400-someone-else", Application="answer"))
    assert s.state == sm.RUNNING and s._running.app == "answer" and s.ignored == 1
    s.receive_frame(complete(running_uuid(s)))
    assert apps(s.data_to_send()) == [("playback", f"{SOUNDS}/closed.wav")]


def test_a_reply_with_no_command_pending_is_ignored():
    s, _ = routed()
    s.receive_frame(reply())
    assert s.ignored == 1 and s.state == sm.ROUTING and s.data_to_send() == b""


def test_a_refused_application_means_the_channel_is_gone():
    s, clock = routed()
    s.take_request()
    s.decided(decision("reject", "closed", prompt="closed"))
    s.data_to_send()
    s.receive_frame(reply("-ERR no channel"))
    assert s.state == sm.ENDING and s.deadline == clock.t + 10
    clock.t += 10
    s.deadline_passed()  # no CHANNEL_HANGUP_COMPLETE: released, unconfirmed
    assert s.take_end() == CallEnd(UUID, 0, None, False)
    assert commands(s.data_to_send()) == [("exit", {})]


def test_a_router_failure_ends_in_the_fallback_notice():
    s, _ = routed()
    s.take_request()
    s.route_failed(RuntimeError("simulated"))
    assert apps(s.data_to_send()) == [("answer", "")]


def test_queue_and_conference_answer_run_and_hang_up():
    assert actions.carry_out(decision("queue", targets=("support",)), settings()) == [
        ("answer", ""), ("callcenter", "support@default"), (actions.HANGUP, "NORMAL_CLEARING")]
    assert actions.carry_out(decision("conference", targets=("4001",)), settings()) == [
        ("answer", ""), ("conference", "4001@default"), (actions.HANGUP, "NORMAL_CLEARING")]


# -- PIN rounds ----------------------------------------------------------------------------------


def _pin_round(s: Session, digits: str, answered: bool) -> None:
    if not answered:
        assert apps(s.data_to_send()) == [("answer", "")]
        s.receive_frame(reply())
        s.receive_frame(complete(running_uuid(s)))
    assert apps(s.data_to_send()) == [("play_and_get_digits", actions.pin_digits_arg(s.s, "enter_pin"))]
    s.receive_frame(reply())
    s.receive_frame(complete(running_uuid(s), variable_tel400_pin=digits))


def test_pin_rounds_ask_again_after_a_wrong_pin_and_stop_after_the_attempts():
    s, _ = routed(pin_attempts=2)
    s.take_request()
    s.decided(decision("collect_pin", "pin_required", prompt="enter_pin"))
    _pin_round(s, "1111", answered=False)
    assert s.state == sm.ROUTING and s.take_request() == RouteRequest("4001012345", "13901012345", UUID, "1111")
    s.decided(decision("reject", "bad_pin", prompt="bad_pin"))
    assert apps(s.data_to_send()) == [("playback", f"{SOUNDS}/bad_pin.wav")]  # answered already: not again
    s.receive_frame(reply())
    s.receive_frame(complete(running_uuid(s)))
    _pin_round(s, "2222", answered=True)
    assert s.take_request().pin == "2222" and s.pin_rounds == 2
    s.decided(decision("reject", "bad_pin", prompt="bad_pin"))  # attempts used up: the notice, the hangup
    assert apps(s.data_to_send()) == [("playback", f"{SOUNDS}/bad_pin.wav")]
    s.receive_frame(reply())
    s.receive_frame(complete(running_uuid(s)))
    assert apps(s.data_to_send()) == [("hangup:CALL_REJECTED", "")]


def test_a_disconnect_during_a_pin_check_ends_the_call_once_and_the_late_decision_is_dropped():
    s, _ = routed()
    s.take_request()
    s.decided(decision("collect_pin", "pin_required", prompt="enter_pin"))
    _pin_round(s, "2468", answered=False)
    assert s.take_request().pin == "2468"  # the shell is checking it on the PIN threads
    s.connection_lost()
    assert s.take_end() == CallEnd(UUID, 0, None, False) and s.state == sm.CLOSED
    s.decided(decision("conference", targets=("4001",)))
    assert s.data_to_send() == b"" and s.take_end() is None and s.take_request() is None


def test_the_caller_leaving_during_a_decision_ends_without_an_application():
    s, _ = routed()
    s.take_request()
    s.receive_frame(hangup_complete())
    s.decided(BRIDGE)
    assert commands(s.data_to_send()) == [("exit", {})]
    assert s.take_end() == CallEnd(UUID, 0, None, True)


# -- deadlines ------------------------------------------------------------------------------------


def test_a_silent_peer_gets_a_hangup_and_exit_without_waiting_and_no_call_end():
    clock = Clock()
    s = Session(settings(), clock)
    s.data_to_send()
    clock.t += 9.9
    s.deadline_passed()  # early: nothing happens
    assert s.state == sm.CONNECTING
    clock.t += 0.1
    s.deadline_passed()
    assert [c.split()[0] for c, _ in commands(s.data_to_send())] == ["sendmsg", "exit"]
    assert s.state == sm.CLOSED and s.close == "close" and s.take_end() is None  # no channel: nothing to charge


def test_a_peer_silent_after_the_channel_data_is_released_once():
    s, clock = Session(settings(), Clock()), None
    s.receive_frame(channel_data())
    s._awaiting[0] = (s._awaiting[0][0], -100.0)  # the subscription's replies are long overdue
    s.deadline_passed()
    assert s.take_end() == CallEnd(UUID, 0, None, False) and s.state == sm.CLOSED
    s.connection_lost()
    s.receive_frame(hangup_complete(30))
    assert s.take_end() is None


def test_an_application_over_its_timeout_is_hung_up_and_its_late_end_ignored():
    s, clock = routed()
    s.take_request()
    s.decided(decision("reject", "closed", prompt="closed"))
    s.data_to_send()
    s.receive_frame(reply())
    late_uuid = running_uuid(s)
    assert s.deadline == clock.t + 60
    clock.t += 30
    s.receive_frame(event("CHANNEL_BRIDGE"))  # events in between do not extend the bound
    clock.t += 30
    s.deadline_passed()
    assert apps(s.data_to_send()) == [("hangup:NORMAL_TEMPORARY_FAILURE", "")]
    s.receive_frame(complete(late_uuid))  # the answer completes after all: too late
    assert s.state == sm.RUNNING and s.data_to_send() == b""
    s.receive_frame(reply())
    end = finish(s, hangup_complete(0))
    assert end.confirmed and commands(s.data_to_send()) == [("exit", {})]


def test_a_bridge_over_the_call_limit_is_hung_up_and_charged_from_the_bridge():
    s, clock = routed()
    s.take_request()
    s.decided(BRIDGE)
    s.data_to_send()
    s.receive_frame(reply())
    s.receive_frame(reply())
    s.receive_frame(event("CHANNEL_BRIDGE"))
    clock.t = s.call_deadline
    s.deadline_passed()
    assert apps(s.data_to_send()) == [("hangup:NORMAL_TEMPORARY_FAILURE", "")]
    s.receive_frame(reply())
    s.receive_frame(notice("linger"))  # the channel is gone, its end event lost
    clock.t += 10
    s.deadline_passed()
    end = s.take_end()
    assert end == CallEnd(UUID, 3610, None, False)  # the time since CHANNEL_BRIDGE, the end wait included


def test_a_hangup_nobody_answers_abandons_the_call():
    s, clock = routed()
    s.take_request()
    s.decided(decision("reject", "closed", prompt="closed"))
    s.data_to_send()
    clock.t += 10
    s.deadline_passed()
    assert [c.split()[0] for c, _ in commands(s.data_to_send())] == ["sendmsg", "exit"]
    assert s.state == sm.CLOSED and s.take_end() == CallEnd(UUID, 0, None, False)


def test_no_bye_closes_anyway():
    s, clock = routed()
    s.take_request()
    s.receive_frame(hangup_complete())
    s.decided(BRIDGE)
    s.data_to_send()
    clock.t += 10
    s.deadline_passed()
    assert s.state == sm.CLOSED and s.close == "close" and s.data_to_send() == b""


# -- the end, exactly once ---------------------------------------------------------------------


def test_the_end_is_given_out_once_whatever_follows():
    s, _ = routed()
    s.take_request()
    s.decided(BRIDGE)
    s.data_to_send()
    s.receive_frame(hangup_complete(5, "sofia/gateway/gw1/13901010001"))
    first = s.take_end()
    s.receive_frame(hangup_complete(99))
    s.receive_frame(notice("disconnect"))
    s.connection_lost()
    s.deadline_passed()
    assert first == CallEnd(UUID, 5, "13901010001", True) and s.take_end() is None


def test_freeswitch_disconnecting_mid_call_releases_it_and_closes():
    s, _ = routed()
    s.take_request()
    s.decided(BRIDGE)
    s.data_to_send()
    s.receive_frame(notice("disconnect"))
    assert s.take_end() == CallEnd(UUID, 0, None, False) and s.state == sm.CLOSED and s.close == "close"


@pytest.mark.parametrize("state", [sm.CONNECTING, sm.SUBSCRIBING, sm.ROUTING, sm.RUNNING, sm.ENDING, sm.CLOSING])
def test_every_live_state_handles_a_lost_connection_and_a_closed_session_handles_nothing(state):
    assert (state, sm.LOST) in sm.TRANSITIONS
    assert not [key for key in sm.TRANSITIONS if key[0] == sm.CLOSED]


def test_the_shell_failing_mid_call_plays_the_fallback():
    s, _ = routed()
    s.take_request()
    s.decided(decision("reject", "closed", prompt="closed"))
    s.data_to_send()
    s.failed(RuntimeError("simulated"))
    assert apps(s.data_to_send()) == [("answer", "")]  # the fallback notice starts over
    s.receive_frame(reply())  # the first answer's reply: in order, so not the fallback's
    assert not s._replied and s.ignored == 1 and s.deadline == 1000.0 + 10
    s.receive_frame(reply())
    assert s._replied and s.deadline == 1000.0 + 60  # now the application's bound


def test_the_goodbye_notice_also_ends_the_closing():
    s, _ = routed()
    s.take_request()
    s.receive_frame(hangup_complete())
    s.decided(BRIDGE)
    assert s.state == sm.CLOSING
    s.receive_frame(notice("disconnect"))  # FreeSWITCH's "Disconnected, goodbye." without the +OK bye
    assert s.state == sm.CLOSED and s.close == "close"


def test_a_linger_notice_while_an_application_runs_leaves_the_wait_to_its_end():
    s, clock = routed()
    s.take_request()
    s.decided(decision("reject", "closed", prompt="closed"))
    s.data_to_send()
    s.receive_frame(reply())
    s.receive_frame(notice("linger"))
    assert s.hungup and s.state == sm.RUNNING
    s.receive_frame(complete(running_uuid(s)))
    assert s.state == sm.ENDING and s.data_to_send() == b""  # no more applications on a gone channel
    end = finish(s, hangup_complete(0))
    assert end == CallEnd(UUID, 0, None, True)


@pytest.mark.parametrize("billsec, charged", [("9" * 5000, 0), ("-5", 0), ("12x", 0), ("٣", 0), ("61", 61)])
def test_a_billsec_that_is_not_a_number_in_range_is_charged_as_none_and_the_end_still_given(billsec, charged):
    # 5,000 digits: more than int() converts; before, a ValueError after the end was taken: never charged
    s, _ = routed()
    s.take_request()
    s.decided(BRIDGE)
    s.data_to_send()
    bridge_uuid = running_uuid(s)
    s.receive_frame(reply())
    s.receive_frame(reply())
    s.receive_frame(complete(bridge_uuid, variable_originate_disposition="SUCCESS"))
    end = finish(s, event("CHANNEL_HANGUP_COMPLETE", variable_billsec=billsec))
    assert end == CallEnd(UUID, charged, None, True)


# -- inbound: a parked call on a connection shared by every call ----------------------------------


def park(uuid: str = UUID):
    return parse(event_frame([
        ("Event-Name", "CHANNEL_PARK"), ("Unique-ID", uuid), ("Caller-Destination-Number", "4001012345"),
        ("Caller-Caller-ID-Number", "13901012345"), ("variable_tel400_route", "true"),
    ]))[0]


def parked(clock=None, **options) -> tuple[Session, Clock]:
    clock = clock or Clock()
    return Session.parked(settings(**options), clock, park().event), clock


def test_a_parked_call_asks_for_its_decision_at_once_and_sends_nothing_of_the_connections():
    s, _ = parked()
    assert s.state == sm.ROUTING and s.channel == UUID
    assert s.take_request() == RouteRequest("4001012345", "13901012345", UUID, None)
    assert s.commands_to_send() == []  # no connect, subscription or linger: those are the connection's


def test_a_parked_call_names_its_channel_in_every_command_one_item_each():
    s, clock = parked()
    s.take_request()
    s.decided(BRIDGE)
    sent = s.commands_to_send()
    assert len(sent) == 2  # one item per command: the shell owes each its own reply
    assert [commands(c)[0][0] for c in sent] == [f"sendmsg {UUID}"] * 2
    assert apps(b"".join(sent)) == [("multiset", "continue_on_fail=true hangup_after_bridge=true"),
                                    ("bridge", settings().dial_string(BRIDGE))]
    bridge_uuid = running_uuid(s)
    s.receive_frame(reply())
    s.receive_frame(reply())
    s.receive_frame(event("CHANNEL_BRIDGE"))
    s.receive_frame(complete(bridge_uuid, variable_originate_disposition="SUCCESS"))
    end = finish(s, hangup_complete(42, "sofia/gateway/gw1/13901010001"))
    assert end == CallEnd(UUID, 42, "13901010001", True)
    # over at its end: no exit (that would close every call's connection)
    assert s.state == sm.CLOSED and s.close == "close" and s.commands_to_send() == []
    assert s.take_end() is None


def test_a_parked_call_refused_by_the_plan_hangs_up_its_own_channel():
    s, _ = parked()
    s.take_request()
    s.decided(decision("reject", "blacklisted", prompt="blacklisted"))
    out = []
    while s.state == sm.RUNNING:
        sent = s.commands_to_send()
        out += sent
        s.receive_frame(reply())
        if running_uuid(s):
            s.receive_frame(complete(running_uuid(s)))
    assert [commands(c)[0][0] for c in out] == [f"sendmsg {UUID}"] * 3
    assert apps(b"".join(out))[-1] == ("hangup:CALL_REJECTED", "")


def test_a_silent_freeswitch_gets_a_hangup_for_the_parked_call_but_never_exit():
    s, clock = parked()
    s.take_request()
    s.decided(BRIDGE)
    s.commands_to_send()
    clock.t += 10
    s.deadline_passed()
    sent = s.commands_to_send()
    assert [commands(c)[0] for c in sent] == [(f"sendmsg {UUID}", {"call-command": "hangup",
                                                                 "hangup-cause": actions.FAILURE_CAUSE})]
    assert s.state == sm.CLOSED and s.take_end() == CallEnd(UUID, 0, None, False)


def test_a_repeated_park_of_a_call_in_progress_is_ignored():
    s, _ = parked()
    s.take_request()
    s.receive_frame(park())
    assert s.ignored == 1 and s.state == sm.ROUTING and s.take_request() is None


def test_the_legs_of_a_target_list_are_made_once_and_the_memory_is_bounded(monkeypatch):
    s = settings()
    made = []
    leg = s.leg
    monkeypatch.setattr(s, "leg", lambda target: made.append(target) or leg(target))
    assert s.dial_string(BRIDGE) == s.dial_string(BRIDGE)
    assert made == list(BRIDGE.targets)  # the second call's legs were remembered
    monkeypatch.setattr(actions, "LEGS_KEPT", 3)
    for i in range(10):
        s.legs((f"1390101{i:04d}",))
    assert len(s._legs) <= 3
