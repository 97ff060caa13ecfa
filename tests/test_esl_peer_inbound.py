"""The peer's inbound side held to mod_event_socket's bytes, through raw sockets (not tel400's client).

What FreeSWITCH writes is spelled out here byte for byte where it is fixed
(greeting, replies, notices); events are parsed with the project's parser.
"""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from tel400_freeswitch.peer import GOODBYE, SHUTDOWN, Call, InboundSwitch
from tel400_freeswitch.protocol import EslProtocol, Frame, command, hangup, sendmsg

GREETING = b"Content-Type: auth/request\n\n"
NOTICE_GOODBYE = b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n" + GOODBYE
TEL400_EVENTS = ("CHANNEL_PARK", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_BRIDGE", "CHANNEL_HANGUP_COMPLETE")
WAIT_S = 10  # a safety net against a hung test, never a measure


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def run(scenario):
    async def main():
        switch = await InboundSwitch(password="ClueCon").start()
        try:
            return await asyncio.wait_for(scenario(switch), WAIT_S * 3)
        finally:
            await switch.close()
            await Raw.close_all()

    return asyncio.run(main())


class Raw:
    """A bare Event Socket client: bytes out, frames (or bytes) in."""

    opened: list[Raw] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        Raw.opened.append(self)
        self.protocol = EslProtocol()
        self.frames: deque[Frame] = deque()

    @classmethod
    async def connect(cls, switch: InboundSwitch, *, auth: str | None = None) -> Raw:
        raw = cls(*await asyncio.open_connection("127.0.0.1", switch.port))
        assert await raw.read_exactly(len(GREETING)) == GREETING
        if auth is not None:
            assert await raw.ask_bytes(command("auth", auth), len(reply("+OK accepted"))) == reply("+OK accepted")
        return raw

    async def read_exactly(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), WAIT_S)

    async def ask_bytes(self, data: bytes, n: int) -> bytes:
        self.writer.write(data)
        return await self.read_exactly(n)

    async def rest(self) -> bytes:
        """Everything until the switch closes the connection."""
        return await asyncio.wait_for(self.reader.read(), WAIT_S)

    async def frame(self) -> Frame:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT_S)
            if not data:
                raise EOFError("closed by the switch")
            self.protocol.receive_data(data)
            self.frames.extend(self.protocol.frames())
        return self.frames.popleft()

    async def take(self, n: int) -> list[Frame]:
        return [await self.frame() for _ in range(n)]

    async def subscribe(self, *lines: bytes) -> list[str]:
        self.writer.write(b"".join(lines))
        return [f.reply_text for f in await self.take(len(lines))]

    def close(self) -> None:
        self.writer.close()

    @classmethod
    async def close_all(cls) -> None:
        while cls.opened:
            writer = cls.opened.pop().writer
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def describe(frame: Frame) -> str:
    """A reply's text, or an event's name (and the application, for an application's events)."""
    if frame.is_reply:
        return frame.reply_text
    event = frame.event
    assert event is not None, frame
    app = event.get("Application")
    return f"{event.name}:{app}" if app else event.name


def test_the_greeting_and_a_good_auth_are_freeswitchs_bytes():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")  # asserts the greeting and "+OK accepted"
        assert await raw.ask_bytes(command("exit"), len(reply("+OK bye")) + len(NOTICE_GOODBYE)) == \
            reply("+OK bye") + NOTICE_GOODBYE
        assert await raw.rest() == b""

    run(scenario)


def test_a_bad_password_gets_invalid_then_the_goodbye_notice_and_the_close():
    async def scenario(switch):
        raw = await Raw.connect(switch)
        raw.writer.write(command("auth", "clucon"))
        assert await raw.rest() == reply("-ERR invalid") + NOTICE_GOODBYE

    run(scenario)


def test_before_auth_other_commands_are_not_found_and_the_connection_stays():
    async def scenario(switch):
        raw = await Raw.connect(switch)
        switch_waits = await raw.ask_bytes(command("event", "plain", "ALL"), len(reply("-ERR command not found")))
        assert switch_waits == reply("-ERR command not found")
        sendmsg_refused = await raw.ask_bytes(hangup(uuid="x"), len(reply("-ERR command not found")))
        assert sendmsg_refused == reply("-ERR command not found")
        assert await raw.ask_bytes(command("auth", "ClueCon"), len(reply("+OK accepted"))) == reply("+OK accepted")
        assert switch.connections[0].commands == ["event plain ALL", "sendmsg x", "auth ClueCon"]

    run(scenario)


def test_after_auth_the_commands_answer_as_parse_command_does():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        return await raw.subscribe(
            command("noevents"), command("event", "plain", "NO_SUCH_EVENT"), command("event", "plain", "channel_park"),
            command("nixevent", "CHANNEL_PARK"), command("noevents"), command("filter", "Unique-ID"),
            command("filter", "add", "Unique-ID", "abc"), command("filter", "delete", "all"), command("linger"),
            command("api", "status"), command("bogus"), sendmsg("answer", uuid="no-such-uuid"),
            b"sendmsg\ncall-command: hangup\n\n",
        )

    assert run(scenario) == [
        "-ERR not listening for events", "-ERR no keywords supplied", "+OK event listener enabled plain",
        "+OK events nixed", "+OK no longer listening for events", "-ERR invalid syntax",
        "+OK filter added. [Unique-ID]=[abc]", "+OK filter deleted. [all][]", "-ERR not controlling a session",
        "-ERR command not found", "-ERR command not found", "-ERR invalid session id [no-such-uuid]",
        "-ERR invalid session id []",
    ]


def test_the_route_filter_holds_back_events_without_the_variable():
    """CHANNEL_CREATE comes before the dialplan's set (no tel400_route), and so do a call the dialplan did not mark."""

    async def main(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("filter", "variable_tel400_route", "true"), command("event", "plain", "ALL"))
        unmarked_call, marked_call = Call(route_variable=False), Call()
        unmarked = asyncio.ensure_future(switch.place(unmarked_call, timeout=WAIT_S))
        marked = asyncio.ensure_future(switch.place(marked_call, timeout=WAIT_S))
        first = await raw.take(3)
        # CHANNEL_EXECUTE of the set fires before the variable is set: held back too
        assert [describe(f) for f in first] == ["CHANNEL_EXECUTE_COMPLETE:set", "CHANNEL_EXECUTE:park", "CHANNEL_PARK"]
        assert {f.event.get("Unique-ID") for f in first} == {marked_call.uuid}
        assert all(f.event.get("variable_tel400_route") == "true" for f in first)
        raw.writer.write(hangup("CALL_REJECTED", uuid=unmarked_call.uuid) + hangup("USER_BUSY", uuid=marked_call.uuid))
        rest = [await raw.frame() for _ in range(2 + 3)]
        await asyncio.gather(unmarked, marked)
        return rest, unmarked_call, marked_call

    rest, unmarked_call, marked_call = run(main)
    # the unmarked call's hangup is carried out, its events held back; the marked call's come
    assert [describe(f) for f in rest] == ["+OK", "+OK", "CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE:park",
                                           "CHANNEL_HANGUP_COMPLETE"]
    assert {f.event.get("Unique-ID") for f in rest[2:]} == {marked_call.uuid}
    assert unmarked_call.hangup_cause == "CALL_REJECTED" and marked_call.hangup_cause == "USER_BUSY"


def test_two_filters_pass_an_event_matching_either_and_a_deleted_one_no_longer():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("filter", "Caller-Caller-ID-Number", "111"),
                            command("filter", "Caller-Caller-ID-Number", "222"),
                            command("event", "plain", "CHANNEL_PARK"))
        calls = [Call(caller=number, dialplan_events=False) for number in ("333", "111", "222")]
        placed = [asyncio.ensure_future(switch.place(call, timeout=WAIT_S)) for call in calls]
        parks = await raw.take(2)
        assert await raw.subscribe(command("filter", "delete", "Caller-Caller-ID-Number", "222")) == [
            "+OK filter deleted. [Caller-Caller-ID-Number][222]"]
        again = [Call(caller=number, dialplan_events=False) for number in ("222", "111")]
        placed += [asyncio.ensure_future(switch.place(call, timeout=WAIT_S)) for call in again]
        last = await raw.frame()
        for call in calls + again:
            raw.writer.write(hangup(uuid=call.uuid))
        await raw.take(5)
        await asyncio.gather(*placed)
        return parks, last

    parks, last = run(scenario)
    assert [f.event.get("Caller-Caller-ID-Number") for f in parks] == ["111", "222"]
    assert describe(last) == "CHANNEL_PARK" and last.event.get("Caller-Caller-ID-Number") == "111"


def test_nixing_one_type_of_all_keeps_the_others():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("event", "plain", "ALL"), command("nixevent", "CHANNEL_CREATE"))
        call = Call(dialplan_events=False)
        placed = asyncio.ensure_future(switch.place(call, timeout=WAIT_S))
        park = await raw.frame()
        raw.writer.write(hangup(uuid=call.uuid))
        await placed
        return park

    assert describe(run(scenario)) == "CHANNEL_PARK"


def test_a_bridged_call_as_tel400_drives_it():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("filter", "variable_tel400_route", "true"), command("event", "plain", *TEL400_EVENTS))
        call = Call(caller="13901012345", bridge=lambda legs: (legs[1], 61))
        placed = asyncio.ensure_future(switch.place(call, timeout=WAIT_S))
        parked = await raw.take(2)
        raw.writer.write(
            sendmsg("multiset", "continue_on_fail=true hangup_after_bridge=true", event_uuid="tel400-1", uuid=call.uuid)
            + sendmsg("bridge", "{origination_caller_id_number=13901012345}[leg_timeout=20]sofia/gateway/gw1/1"
                      "|[leg_timeout=20]sofia/gateway/gw1/2", event_uuid="tel400-2", uuid=call.uuid))
        rest = await raw.take(7)
        return call, await placed, parked, rest, switch.connections[0].sendmsgs

    call, returned, parked, rest, sendmsgs = run(scenario)
    assert returned is call and call.hangup_cause == "NORMAL_CLEARING" and call.billsec == 61 and not call.parked
    assert [describe(f) for f in parked] == ["CHANNEL_EXECUTE_COMPLETE:set", "CHANNEL_PARK"]
    assert parked[1].event.get("Caller-Caller-ID-Number") == "13901012345"
    assert [describe(f) for f in rest] == [
        "+OK", "CHANNEL_EXECUTE_COMPLETE:multiset", "+OK", "CHANNEL_BRIDGE", "CHANNEL_EXECUTE_COMPLETE:bridge",
        "CHANNEL_EXECUTE_COMPLETE:park", "CHANNEL_HANGUP_COMPLETE"]
    assert rest[1].event.get("Application-UUID") == "tel400-1"
    assert rest[4].event.get("Application-UUID") == "tel400-2"
    assert rest[4].event.get("variable_bridge_channel") == "sofia/gateway/gw1/2"
    park = rest[5].event  # the dialplan's park returns with the hangup: its own uuid, no tel400 name
    assert park.get("Application-UUID") not in ("tel400-1", "tel400-2") and park.get("Application-UUID-Name") is None
    end = rest[6].event
    assert end.get("variable_billsec") == "61" and end.get("Hangup-Cause") == "NORMAL_CLEARING"
    assert all(f.event.get("variable_tel400_route") == "true" for f in parked + rest if f.event)
    assert [uuid for uuid, _ in sendmsgs] == [call.uuid, call.uuid]
    assert call.apps[1][0] == "bridge"


def test_a_hangup_ends_the_channel_and_its_uuid_is_then_unknown():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("event", "plain", "CHANNEL_HANGUP_COMPLETE"))
        call = Call()
        placed = asyncio.ensure_future(switch.place(call, timeout=WAIT_S))
        await asyncio.sleep(0)  # placed: the channel is up
        raw.writer.write(hangup("USER_BUSY", uuid=call.uuid))
        frames = await raw.take(2)
        await placed
        after = await raw.subscribe(hangup(uuid=call.uuid))
        return call, frames, after

    call, frames, after = run(scenario)
    assert [describe(f) for f in frames] == ["+OK", "CHANNEL_HANGUP_COMPLETE"]
    assert frames[1].event.get("Hangup-Cause") == "USER_BUSY" and call.hangup_cause == "USER_BUSY"
    assert after == [f"-ERR invalid session id [{call.uuid}]"]


def test_every_subscribed_connection_gets_its_own_copy():
    async def scenario(switch):
        first, second, deaf = [await Raw.connect(switch, auth="ClueCon") for _ in range(3)]
        for raw in (first, second):
            await raw.subscribe(command("event", "plain", "CHANNEL_PARK", "CHANNEL_HANGUP_COMPLETE"))
        call = Call(dialplan_events=False)
        placed = asyncio.ensure_future(switch.place(call, timeout=WAIT_S))
        parks = [await first.frame(), await second.frame()]
        second.writer.write(hangup(uuid=call.uuid))  # driven from one connection, seen on both
        ends = [await first.frame(), *(await second.take(2))]
        await placed
        deaf.writer.write(command("exit"))
        return parks, ends, await deaf.rest()

    parks, ends, deaf_got = run(scenario)
    assert [describe(f) for f in parks] == ["CHANNEL_PARK", "CHANNEL_PARK"]
    assert [describe(f) for f in ends] == ["CHANNEL_HANGUP_COMPLETE", "+OK", "CHANNEL_HANGUP_COMPLETE"]
    assert deaf_got == reply("+OK bye") + NOTICE_GOODBYE  # not subscribed: no event at all


def test_dropped_connections_leave_the_channels_up_for_the_next_connection():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("event", "plain", "ALL"))
        call = Call(dialplan_events=False)
        placed = asyncio.ensure_future(switch.place(call, timeout=WAIT_S))
        await raw.take(2)  # CREATE, PARK
        switch.drop_connections()
        try:
            after_drop = await raw.rest()
        except ConnectionError:
            after_drop = b""  # reset: nothing more came either
        assert call.uuid in switch.channels and not placed.done()
        again = await Raw.connect(switch, auth="ClueCon")
        await again.subscribe(command("event", "plain", "CHANNEL_HANGUP_COMPLETE"))
        again.writer.write(hangup(uuid=call.uuid))
        frames = await again.take(2)
        await placed
        return after_drop, frames, call

    after_drop, frames, call = run(scenario)
    assert after_drop == b""  # no disconnect notice: FreeSWITCH simply went away
    assert [describe(f) for f in frames] == ["+OK", "CHANNEL_HANGUP_COMPLETE"] and call.hangup_cause == "NORMAL_CLEARING"


@pytest.mark.parametrize("cause", ["NORMAL_CLEARING", "NO_ANSWER"])
def test_a_call_nobody_drives_ends_at_the_park_timeout(cause):
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("event", "plain", "CHANNEL_HANGUP_COMPLETE"))
        call = await switch.place(Call(park_timeout_cause=cause), timeout=0.05)
        return call, await raw.frame(), switch.channels

    call, end, channels = run(scenario)
    assert call.parked and call.hangup_cause == cause and not channels
    assert describe(end) == "CHANNEL_HANGUP_COMPLETE" and end.event.get("Hangup-Cause") == cause


def test_closing_the_switch_hangs_up_then_sends_the_shutdown_notice():
    async def main():
        switch = await InboundSwitch().start()
        raw = await Raw.connect(switch, auth="ClueCon")
        await raw.subscribe(command("event", "plain", "CHANNEL_HANGUP_COMPLETE"))
        call = Call()
        placed = asyncio.ensure_future(switch.place(call, timeout=WAIT_S))
        await asyncio.sleep(0)
        await switch.close()
        await placed
        rest = await raw.rest()
        await Raw.close_all()
        return call, rest

    call, rest = asyncio.run(main())
    notice = b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\n" + SHUTDOWN
    assert call.hangup_cause == "SYSTEM_SHUTDOWN" and rest.endswith(notice)
    parser = EslProtocol()
    parser.receive_data(rest[:-len(notice)])
    [end] = list(parser.frames())
    assert describe(end) == "CHANNEL_HANGUP_COMPLETE" and end.event.get("Hangup-Cause") == "SYSTEM_SHUTDOWN"


def test_split_bytes_garbage_and_silence():
    async def scenario(switch):
        switch.split_bytes = True
        switch.garbage_after_auth = True
        raw = await Raw.connect(switch)  # the greeting, one byte at a time
        garbled = await raw.ask_bytes(command("auth", "ClueCon"), len(reply("+OK accepted")) + 24)
        switch.split_bytes = switch.garbage_after_auth = False
        switch.silent_after_commands = 2
        quiet = await Raw.connect(switch, auth="ClueCon")
        assert await quiet.subscribe(command("event", "plain", "ALL")) == ["+OK event listener enabled plain"]
        connection = switch.connections[1]
        written = connection.written
        call = Call(dialplan_events=False)
        placed = asyncio.ensure_future(switch.place(call, timeout=0.05))
        quiet.writer.write(hangup(uuid=call.uuid) + command("exit"))
        while len(connection.ignored) < 2:
            await asyncio.sleep(0.01)
        await placed  # the hangup was read, never carried out: the park timeout ended the call
        return garbled, connection, call, connection.written - written

    garbled, connection, call, written_after = run(scenario)
    assert garbled == reply("+OK accepted") + b"\x00\x01 this is not a frame\n\n"
    assert connection.commands == ["auth ClueCon", "event plain ALL"]
    assert connection.ignored == [f"sendmsg {call.uuid}", "exit"]
    assert call.parked and written_after == 0  # silent: no reply, no event


def test_a_regex_filter_passes_and_a_minus_filter_holds_back():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        assert await raw.subscribe(command("event", "plain", "ALL"),
                                   command("filter", "Event-Name", "/^channel_(park|hangup_complete)$/i"),
                                   command("filter", "Caller-Caller-ID-Number", "-111")) == [
            "+OK event listener enabled plain", "+OK filter added. [Event-Name]=[/^channel_(park|hangup_complete)$/i]",
            "+OK filter added. [Caller-Caller-ID-Number]=[-111]"]
        calls = [Call(caller=number, dialplan_events=False) for number in ("111", "222")]
        placed = [asyncio.ensure_future(switch.place(call, timeout=WAIT_S)) for call in calls]
        park = await raw.frame()
        raw.writer.write(b"".join(hangup(uuid=call.uuid) for call in calls))
        rest = await raw.take(3)
        await asyncio.gather(*placed)
        return park, rest

    park, rest = run(scenario)
    assert describe(park) == "CHANNEL_PARK" and park.event.get("Caller-Caller-ID-Number") == "222"
    assert [describe(f) for f in rest] == ["+OK", "+OK", "CHANNEL_HANGUP_COMPLETE"]
    assert rest[2].event.get("Caller-Caller-ID-Number") == "222"


def test_myevents_of_one_channel():
    async def scenario(switch):
        raw = await Raw.connect(switch, auth="ClueCon")
        mine, other = Call(dialplan_events=False), Call(dialplan_events=False)
        placed = [asyncio.ensure_future(switch.place(call, timeout=WAIT_S)) for call in (other, mine)]
        await asyncio.sleep(0)  # both channels up
        replies = await raw.subscribe(command("myevents", "no-such-uuid", "plain"),
                                      command("myevents", mine.uuid), command("myevents", mine.uuid))
        raw.writer.write(hangup(uuid=other.uuid) + hangup(uuid=mine.uuid))
        frames = await raw.take(4)
        await asyncio.gather(*placed)
        return replies, frames, mine

    replies, frames, mine = run(scenario)
    assert replies == ["-ERR invalid uuid", "+OK Events Enabled", "-ERR aready enabled."]  # sic
    # the other channel's hangup comes first and is not sent: only this channel's events are
    assert [describe(f) for f in frames] == ["+OK", "+OK", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"]
    assert {f.event.get("Unique-ID") for f in frames[2:]} == {mine.uuid}
