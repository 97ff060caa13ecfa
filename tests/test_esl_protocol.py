"""The Event Socket protocol core: frames in, commands out, nothing injected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tel400_freeswitch import protocol
from tel400_freeswitch.peer import GOODBYE, event_frame, reply_frame, serialize
from tel400_freeswitch.protocol import ProtocolError, command, hangup, sendmsg, url_decode, url_encode

# One suite over every parser built here: the Python reference and its compiled twin (_fastparse).
PARSERS = list(protocol.PARSERS.values())
each_parser = pytest.mark.parametrize("esl", PARSERS, ids=[p.name for p in PARSERS])

# A connect reply as mod_event_socket sends it (switch_event_serialize with
# encode=TRUE): every value URL-encoded, Content-Type near the end, no
# Content-Length.
CONNECT_REPLY = (
    b"Event-Name: CHANNEL_DATA\n"
    b"Core-UUID: 7610dcfe-e294-11e8-b372-4b084ebbf04f\n"
    b"FreeSWITCH-IPv6: %3A%3A1\n"
    b"Event-Date-Local: 2018-11-07%2016%3A59%3A11\n"
    b"Event-Date-GMT: Wed,%2007%20Nov%202018%2015%3A59%3A11%20GMT\n"
    b"Channel-Name: sofia/internal/1000%40192.168.1.146%3A5060\n"
    b"Unique-ID: 102037b6-e2a6-11e8-b44d-4b084ebbf04f\n"
    b"Caller-Caller-ID-Name: M%C3%BCller\n"
    b"Caller-Caller-ID-Number: %2B8613901012345\n"
    b"Caller-Destination-Number: 4001012345\n"
    b"variable_sip_h_X-Note: a%0D%0Ab\n"
    b"variable_codecs: ARRAY::PCMU|:PCMA\n"
    b"Content-Type: command/reply\n"
    b"Reply-Text: %2BOK%0A\n"
    b"Socket-Mode: async\n"
    b"Control: full\n"
    b"\n"
)
EVENT_BODY = (
    b"Event-Name: CHANNEL_EXECUTE_COMPLETE\n"
    b"Unique-ID: 102037b6-e2a6-11e8-b44d-4b084ebbf04f\n"
    b"Application: bridge\n"
    b"Application-UUID: tel400-1-abc\n"
    b"variable_billsec: 42\n"
    b"Content-Length: 11\n"
    b"\n"
    b"hello\nworld"
)
EVENT = b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(EVENT_BODY), EVENT_BODY)
LINGER = (b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: 102037b6\n"
          b"Content-Disposition: linger\nChannel-Name: sofia/internal/1000@x\nLinger-Time: 600\nContent-Length: 0\n\n")
FINAL = (b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: 102037b6\n"
         b"Content-Disposition: disconnect\nContent-Length: 67\n\n" + GOODBYE)
API = b"Content-Type: api/response\nContent-Length: 13\n\n+OK 12345678\n"
STREAM = CONNECT_REPLY + reply_frame("+OK Events Enabled") + EVENT + reply_frame("+OK will linger") + API + LINGER + FINAL


def parse(esl, data: bytes, *, chunk: int | None = None):
    proto = esl.EslProtocol()
    frames = []
    step = chunk or len(data)
    for i in range(0, len(data), step):
        proto.receive_data(data[i:i + step])
        frames.extend(proto.frames())
    return frames


@each_parser
@pytest.mark.parametrize("chunk", [None, 1, 2, 7, 64], ids=["whole", "byte-by-byte", "2", "7", "64"])
def test_a_session_parses_the_same_however_it_is_split(esl, chunk):
    frames = parse(esl, STREAM, chunk=chunk)
    assert [f.content_type for f in frames] == [
        "command/reply", "command/reply", "text/event-plain", "command/reply", "api/response",
        "text/disconnect-notice", "text/disconnect-notice",
    ]
    connect = frames[0]
    assert connect.ok and connect.reply_text == "+OK\n" and connect.body is None
    assert connect.headers.get("Channel-Name") == "sofia/internal/1000@192.168.1.146:5060"
    assert connect.headers.get("Caller-Caller-ID-Name") == "Müller"
    assert connect.headers.get("caller-caller-id-number") == "+8613901012345"  # case-insensitive
    assert connect.headers.get("FreeSWITCH-IPv6") == "::1"
    assert connect.headers.get("Event-Date-GMT") == "Wed, 07 Nov 2018 15:59:11 GMT"
    assert connect.headers.get("variable_sip_h_X-Note") == "a\r\nb"
    assert connect.headers.get("variable_codecs") == "ARRAY::PCMU|:PCMA"
    assert frames[1].reply_text == "+OK Events Enabled"
    event = frames[2].event
    assert event.name == "CHANNEL_EXECUTE_COMPLETE" and event.get("variable_billsec") == "42"
    assert event.body == b"hello\nworld"
    assert frames[4].reply_text == "+OK 12345678\n" and frames[4].is_reply
    assert frames[5].disposition == "linger" and frames[5].body == b""
    assert frames[6].disposition == "disconnect" and frames[6].body == GOODBYE


@each_parser
def test_crlf_line_ends_are_tolerated(esl):
    frames = parse(esl, b"Content-Type: command/reply\r\nReply-Text: +OK\r\n\r\n")
    assert frames[0].ok


@each_parser
@pytest.mark.parametrize(
    "garbage, message",
    [
        (b"\x00\x01 this is not a frame\n\n", "not a header line"),
        (b"Content-Type: text/event-plain\nContent-Length: -1\n\n", "bad Content-Length"),
        (b"Content-Type: text/event-plain\nContent-Length: 99999999999\n\n", "over the limit"),
        (b"Content-Type: api/response\nContent-Length: 12abc\n\n", "bad Content-Length"),
        # more digits than int() converts (Python's 4,300-digit limit): refused, not a ValueError
        (b"Content-Type: api/response\nContent-Length: " + b"9" * 5000 + b"\n\n", "bad Content-Length"),
        (b"Content-Type: api/response\nContent-Length: " + b"0" * 5000 + b"7\n\n", "bad Content-Length"),
        ("Content-Type: api/response\nContent-Length: ²\n\n".encode(), "bad Content-Length"),  # isdigit, not int
        ("Content-Type: api/response\nContent-Length: ٣\n\n".encode(), "bad Content-Length"),  # Arabic-Indic 3
        (b"No colon here\n\n", "not a header line"),
        (b"Content-Length: 5\nContent-Type: text/event-plain\n\nAb c\n", "not a header line"),
    ],
)
def test_garbage_is_a_protocol_error(esl, garbage, message):
    with pytest.raises(ProtocolError, match=message):
        parse(esl, garbage)


@each_parser
def test_oversized_header_block_is_a_protocol_error(esl):
    proto = esl.EslProtocol(max_header_bytes=1024)
    with pytest.raises(ProtocolError, match="header block over"):
        proto.receive_data(b"X-Long: " + b"a" * 2000)
        list(proto.frames())


@each_parser
def test_an_event_body_shorter_than_its_inner_length(esl):
    with pytest.raises(ProtocolError, match="inner body shorter"):
        esl.parse_event(b"Event-Name: X\nContent-Length: 50\n\nshort")


# FreeSWITCH's switch_url_encode, checked against values seen in real captures.
@pytest.mark.parametrize(
    "raw, encoded",
    [
        ("sofia/external/nobody@192.168.1.235:5060", "sofia/external/nobody%40192.168.1.235%3A5060"),
        ("::1", "%3A%3A1"),
        ("2018-11-07 16:59:11", "2018-11-07%2016%3A59%3A11"),
        ("Wed, 07 Nov 2018 15:59:11 GMT", "Wed,%2007%20Nov%202018%2015%3A59%3A11%20GMT"),
        ("+OK\n", "%2BOK%0A"),
        ("a\r\nb", "a%0D%0Ab"),
        ("Müller", "M%C3%BCller"),
        ('x"y<z>;|{}', "x%22y%3Cz%3E%3B%7C%7B%7D"),
        ("100%41", "100%41"),  # an existing %XX escape is left alone, as FreeSWITCH does
    ],
)
def test_url_encoding_matches_freeswitch(raw, encoded):
    assert url_encode(raw) == encoded
    if "%41" not in raw:
        assert url_decode(encoded.encode()) == raw


@given(st.text(max_size=60))
def test_decode_undoes_encode(text):
    if "%" in text:
        return  # FreeSWITCH leaves existing %XX escapes alone, which is lossy
    assert url_decode(url_encode(text).encode()) == text


@each_parser
@given(st.lists(st.tuples(st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,20}\Z"), st.text(max_size=40)), min_size=1, max_size=8),
       st.binary(max_size=40), st.integers(1, 13))
def test_peer_frames_round_trip_through_the_parser(esl, headers, body, chunk):
    frames = parse(esl, event_frame(headers, body or None), chunk=chunk)
    assert len(frames) == 1
    event = frames[0].event
    for name, value in headers:
        assert event.get(name) is not None
    if body:
        assert event.body == body


# A caller's SIP header "X-Evil*: 1" becomes the channel variable sip_h_X-Evil*, written into every event
# of the call under its own name, unencoded (switch_event_serialize encodes values only).  SIP header
# names are tokens (RFC 3261 25.1: alphanumerics and -.!%*_+`'~), and a dialplan may set longer names.
FREESWITCH_NAMES = ["variable_sip_h_X-Evil*", "variable_sip_h_X-it's", "variable_sip_h_X-a+b~c!d%e`f",
                    "variable_sip_h_X-" + "N" * 600]


@each_parser
@pytest.mark.parametrize("name", FREESWITCH_NAMES, ids=["star", "quote", "every-token-char", "600-long"])
def test_every_header_name_freeswitch_writes_is_read(esl, name):
    frames = parse(esl, event_frame([("Event-Name", "CHANNEL_PARK"), (name, "1"), ("Unique-ID", "u-1")]))
    event = frames[0].event
    assert (event.get("Event-Name"), event.get(name), event.get(name.upper()), event.get("Unique-ID")) == (
        "CHANNEL_PARK", "1", "1", "u-1")
    assert dict(event.headers)[name] == "1"


@pytest.mark.skipif(len(PARSERS) < 2, reason="needs the compiled parser (TEL400_NO_EXTENSIONS=1, or not built)")
def test_both_parsers_read_names_up_to_one_length():
    from tel400_freeswitch import _fastparse

    assert _fastparse.MAX_NAME_BYTES == protocol.MAX_NAME_BYTES


@each_parser
@pytest.mark.parametrize("line", [b"with space: 1", b"\xc3\xa9t\xc3\xa9: 1", b"tab\there: 1",
                                  b"N" * (protocol.MAX_NAME_BYTES + 1) + b": 1"])
def test_header_names_freeswitch_never_writes_are_refused(esl, line):
    payload = line + b"\n\n"
    with pytest.raises(ProtocolError, match="not a header line"):
        frames = parse(esl, b"Content-Type: text/event-plain\nContent-Length: %d\n\n%s" % (len(payload), payload))
        frames[0].event  # an event's own block is checked when it is read


@each_parser
def test_a_broken_event_in_a_whole_frame_is_a_bad_event_and_the_next_frame_is_read(esl):
    payload = b"Event-Name: CHANNEL_PARK\nwith space: 1\n\n"
    broken = b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(payload), payload)
    proto = esl.EslProtocol()
    proto.receive_data(broken + event_frame([("Event-Name", "HEARTBEAT")]))
    with pytest.raises(protocol.BadEvent, match="event: not a header line: b'with space: 1'"):
        proto.next_frame()
    assert proto.next_frame().event.get("Event-Name") == "HEARTBEAT"
    assert proto.next_frame() is None
    proto.receive_data(b"No colon here\n\n")  # the frame itself: not a BadEvent, the stream is lost
    with pytest.raises(ProtocolError) as raised:
        proto.next_frame()
    assert not isinstance(raised.value, protocol.BadEvent)


def test_serialize_puts_the_body_after_its_length():
    assert serialize([("Event-Name", "X")], b"abc") == b"Event-Name: X\nContent-Length: 3\n\nabc"
    assert serialize([("Event-Name", "X")]) == b"Event-Name: X\n\n"


# -- commands: nothing the adapter writes can inject a header or a command ------------------


def test_commands():
    assert command("connect") == b"connect\n\n"
    assert command("event", "plain", "CHANNEL_HANGUP_COMPLETE") == b"event plain CHANNEL_HANGUP_COMPLETE\n\n"
    with pytest.raises(ValueError):
        command("linger\n\nexit")


def test_sendmsg_layout():
    data = sendmsg("bridge", "{origination_caller_id_number=4001012345}sofia/gateway/gw1/13800138000|sofia/gateway/gw1/1",
                   event_uuid="e-1")
    assert data == (
        b"sendmsg\ncall-command: execute\nexecute-app-name: bridge\n"
        b"execute-app-arg: {origination_caller_id_number=4001012345}sofia/gateway/gw1/13800138000|sofia/gateway/gw1/1\n"
        b"event-lock: true\nEvent-UUID: e-1\n\n"
    )


@pytest.mark.parametrize("arg", ["x\nexecute-app-name: hangup", "a\r\n\r\nexit", "\n\napi shutdown"])
def test_an_argument_with_line_breaks_goes_as_a_body(arg):
    data = sendmsg("playback", arg)
    head, _, body = data.partition(b"\n\n")
    assert body == arg.encode()
    assert b"content-length: %d" % len(arg.encode()) in head
    # parsed by FreeSWITCH's rules, it is one command whose headers stay its own
    assert head.count(b"execute-app-name") == 1 and b"exit" not in head


@pytest.mark.parametrize("bad", ["play back", "bridge\nexit", "", "a;b"])
def test_application_names_are_checked(bad):
    with pytest.raises(ValueError):
        sendmsg(bad, "x")


def test_hangup():
    assert hangup("USER_BUSY") == b"sendmsg\ncall-command: hangup\nhangup-cause: USER_BUSY\n\n"
    with pytest.raises(ValueError):
        hangup("NORMAL\nexit")


# -- stray blank lines and a buffer that stays bounded -------------------------------------


@each_parser
@pytest.mark.parametrize("blank", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_a_flood_of_blank_lines_is_skipped_without_recursion(esl, blank):
    # 200 KB of empty lines between two frames: skipped in a loop (it was one
    # recursive call per line, RecursionError), and not counted against the
    # header limit, which is smaller than the flood.
    proto = esl.EslProtocol(max_header_bytes=1024)
    proto.receive_data(reply_frame("+OK one") + blank * 200_000 + reply_frame("+OK two"))
    assert [f.reply_text for f in proto.frames()] == ["+OK one", "+OK two"]


@each_parser
def test_a_repeated_name_keeps_its_last_value_whatever_its_case(esl):
    frames = parse(esl, b"Content-Type: command/reply\nx: 1\nX: 2\nx: 3\nReply-Text: %2BOK\n\n")
    headers = frames[0].headers
    assert headers.get("X") == headers.get("x") == headers["X"] == "3"  # the last line, any case
    assert dict(headers.items()) == {"Content-Type": "command/reply", "x": "3", "X": "2", "Reply-Text": "+OK"}
    assert len(headers) == 4 and list(headers) == ["Content-Type", "x", "X", "Reply-Text"]
    assert "reply-text" in headers and "Content-Length" not in headers
    assert headers.get("Content-Length", "-") == "-"
    with pytest.raises(KeyError):
        headers["Content-Length"]


@each_parser
@pytest.mark.parametrize("name", ["x: 1\nX", "Reply-Text:", "", "Müller", "a b"])
def test_a_name_no_header_line_can_have_is_absent(esl, name):
    headers = parse(esl, b"Content-Type: command/reply\nx: 1\nReply-Text: +OK\n\n")[0].headers
    assert headers.get(name) is None  # never a match across lines or inside a value


@each_parser
def test_headers_built_from_pairs_behave_like_parsed_ones(esl):
    headers = esl.Headers([("Event-Name", "HEARTBEAT"), ("Unique-ID", "u-1")])
    assert headers.get("event-name") == "HEARTBEAT" and headers["UNIQUE-ID"] == "u-1"
    assert dict(headers) == {"Event-Name": "HEARTBEAT", "Unique-ID": "u-1"} and headers.get("X", 0) == 0


@each_parser
@pytest.mark.parametrize("data, text", [
    # as FreeSWITCH writes it
    (b"Content-Type: command/reply\nReply-Text: +OK will linger\n\n", "+OK will linger"),
    (b"Content-Type: command/reply\nReply-Text:  \t+OK\n\n", "+OK"),  # leading blanks go, as before
    (b"Content-Type: command/reply\nReply-Text: %2BOK\n\n", "+OK"),
    (b"Content-Type: command/reply\r\nReply-Text: +OK\r\n\r\n", "+OK"),
    (b"content-type: command/reply\nreply-text: +OK\n\n", "+OK"),
])
def test_replies_read_the_same_by_either_path(esl, data, text):
    (frame,) = parse(esl, data)
    assert frame.is_reply and frame.reply_text == text and frame.body is None
    assert frame.headers.get("CONTENT-TYPE") == "command/reply"
    assert frame.headers.get("Content-Length") is None


@each_parser
@pytest.mark.parametrize("first", [b"", reply_frame("+OK")[:10]], ids=["empty-buffer", "a-frame-begun"])
def test_one_read_over_the_buffer_limit_is_refused(esl, first):
    proto = esl.EslProtocol(max_header_bytes=100, max_body_bytes=1000)
    if first:
        proto.receive_data(first)
    with pytest.raises(ProtocolError, match="receive buffer over its limit"):
        proto.receive_data(b"x" * (100 + 1000 + 65536 + 1))


# -- which parser runs -----------------------------------------------------------------------


def test_the_compiled_parser_runs_when_the_core_is_compiled_and_built():
    import tel400
    if tel400.IMPLEMENTATION != "cython":  # TEL400_NO_EXTENSIONS=1, or another interpreter
        assert protocol.IMPLEMENTATION == "python" and list(protocol.PARSERS) == ["python"]
    else:
        try:
            from tel400_freeswitch import _fastparse  # noqa: F401
        except ImportError:  # not built here: the reference, with a warning
            assert protocol.IMPLEMENTATION == "python"
        else:
            assert protocol.IMPLEMENTATION == "cython"
    active = protocol.PARSERS[protocol.IMPLEMENTATION]
    assert (protocol.EslProtocol, protocol.Headers, protocol.parse_event) == (
        active.EslProtocol, active.Headers, active.parse_event)


@each_parser
def test_both_parsers_give_mappings_of_the_same_kind(esl):
    from collections.abc import Mapping
    (frame,) = parse(esl, reply_frame("+OK"))
    assert isinstance(frame.headers, Mapping) and isinstance(frame.headers, esl.Headers)
    assert frame.headers == {"Content-Type": "command/reply", "Reply-Text": "+OK"}  # Mapping's equality
    assert type(frame) is protocol.Frame

