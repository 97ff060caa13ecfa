"""Slow, silent and too many connections: tel400-http and tel400-esl on real sockets.

Every bound here is set short through the servers' options; the assertions
are about what happened (closed, refused, served, logged), with generous
upper bounds only for "was closed".
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from tel400.testing import free_port
from tel400_freeswitch.peer import Call, FreeSwitchPeer
from tel400_freeswitch.server import EslServer, Settings

from .conftest import EXAMPLES
from .http_harness import ServerProcess

SOUNDS = "/sounds"
PLANS = {"numbers": [
    {"number": "4001012345", "rules": [{"targets": ["13901010001"]}],
     "caps": [{"metric": "minutes", "per": "day", "limit": 1000}]},
    {"number": "4001000001", "default": {"action": "reject", "prompt": "closed"}},
]}
ROUTE = b'{"dialed": "4001012345", "caller": "13901012345"}'
CLOSED_WITHIN = 10  # seconds: a generous bound for "the server closed it"


# -- helpers ---------------------------------------------------------------------------------


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLOSED_WITHIN, source_address=(source, 0))


def closed_by_server(sock: socket.socket, timeout: float = CLOSED_WITHIN) -> bool:
    """True when the server closes ``sock`` within ``timeout`` (whatever it sent before)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return False
    except ConnectionResetError:
        pass
    return True


def http_get(port: int, path: str = "/healthz", source: str = "127.0.0.1") -> int:
    with connect(port, source) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else 0


def low_fd_limit(n: int = 64):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def log_lines(text: str, event: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                out.append(entry)
    return out


# -- tel400-http -----------------------------------------------------------------------------


def test_http_idle_connections_are_closed_after_the_header_timeout_while_clients_are_served(tmp_path):
    server = ServerProcess(tmp_path, "--records", "none", "--header-timeout", "1").start()
    try:
        idle = [connect(server.port) for _ in range(20)]
        assert server.request("POST", "/v1/route", ROUTE)[0] == 200  # served meanwhile
        assert all(closed_by_server(s) for s in idle)
        for s in idle:
            s.close()
    finally:
        server.stop()


def test_http_more_idle_connections_than_places_do_not_lock_the_switch_out(tmp_path):
    # before: uvicorn accepted them all and answered every request 503 while they stayed
    # a header timeout longer than the client waits: only making room at the limit lets the switch in
    server = ServerProcess(tmp_path, "--records", "none", "--header-timeout", "60", "--max-connections", "40",
                           "--max-per-address", "40").start()
    try:
        idle = [connect(server.port) for _ in range(60)]  # 40 taken, 20 in the backlog
        time.sleep(0.2)
        assert http_get(server.port, "/v1/ping", source="127.0.0.2") == 200
        metrics = server.request("GET", "/metrics")[1].decode()
        for s in idle:
            s.close()
    finally:
        server.stop()
    assert "tel400_http_connections_shed_total 0.0" not in metrics
    assert "tel400_http_connections_at_limit_total 0.0" not in metrics


def test_http_slow_loris_is_cut_off(tmp_path):
    server = ServerProcess(tmp_path, "--records", "none", "--header-timeout", "1").start()
    try:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
        with connect(server.port) as s:
            started = time.monotonic()
            sent = 0
            try:
                while sent < len(head) and time.monotonic() - started < CLOSED_WITHIN:
                    s.sendall(head[sent:sent + 1])  # one byte every 50 ms: the head would take 12 s
                    sent += 1
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert closed_by_server(s) and sent < len(head)
        assert http_get(server.port) == 200
    finally:
        server.stop()


def test_http_slow_body_is_cut_off(tmp_path):
    server = ServerProcess(tmp_path, "--records", "none", "--body-timeout", "1").start()
    try:
        with connect(server.port) as s:
            s.sendall(b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(ROUTE) + ROUTE[:5])
            assert closed_by_server(s)
    finally:
        server.stop()


def test_http_keep_alive_connection_is_closed_after_the_idle_timeout(tmp_path):
    server = ServerProcess(tmp_path, "--records", "none", "--idle-timeout", "0.5", "--header-timeout", "30").start()
    try:
        with connect(server.port) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            assert closed_by_server(s)
    finally:
        server.stop()


def test_http_per_address_limit_refuses_extra_connections_while_another_address_is_served(tmp_path):
    server = ServerProcess(tmp_path, "--records", "none", "--max-per-address", "3", "--header-timeout", "30").start()
    try:
        held = [connect(server.port) for _ in range(3)]
        time.sleep(0.2)  # let the server take them before the next
        with connect(server.port) as extra:
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b'"too_many_connections"' in answer
        assert http_get(server.port, source="127.0.0.2") == 200
        for s in held:
            s.close()
        time.sleep(0.2)
        assert http_get(server.port) == 200  # the places are given back
        metrics = server.request("GET", "/metrics")[1].decode()
        assert "tel400_http_connections_refused_per_address_total 1.0" in metrics
    finally:
        server.stop()


def test_http_out_of_descriptors_keeps_serving_and_logs_a_bounded_number_of_times(tmp_path):
    server = ServerProcess(tmp_path, "--records", "none", "--header-timeout", "30")
    server.start_options = {"preexec_fn": low_fd_limit(64)}
    server.start()
    try:
        held = []
        for _ in range(150):  # more than the server has descriptors for
            try:
                held.append(connect(server.port))
            except OSError:
                break
        time.sleep(1.5)
        for s in held:
            s.close()
        deadline = time.monotonic() + CLOSED_WITHIN
        while http_get(server.port) != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.stop()
    failures = log_lines(server.stderr(), "accept_failed")
    assert 1 <= len(failures) <= 3 and len(server.stderr()) < 20_000


# -- tel400-esl ------------------------------------------------------------------------------


@pytest.fixture
def router(make_router):
    return make_router(PLANS)


def esl_settings(**options) -> Settings:
    return Settings(gateway="gw1", prompt_dir=SOUNDS, **options)


async def esl_server(router, settings: Settings, **limits) -> EslServer:
    server = EslServer(router, settings, **limits)
    await server.start("127.0.0.1", 0)
    return server


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while chunk := await reader.read(65536):
        data += chunk
    return data


def test_esl_a_silent_peer_is_closed_within_the_reply_timeout(router):
    async def scenario():
        server = await esl_server(router, esl_settings(reply_timeout_s=0.5))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            sent = await asyncio.wait_for(read_until_closed(reader), CLOSED_WITHIN)
            writer.close()
            return sent
        finally:
            await server.close(grace_s=1)

    sent = asyncio.run(scenario())
    assert sent.startswith(b"connect\n\n")
    assert b"call-command: hangup" in sent  # the channel is hung up before the socket closes


def test_esl_a_peer_that_stops_replying_gets_a_hangup_and_is_closed(router):
    call = Call(destination="4001000001", silent_after_commands=5)  # connect, myevents, nixevent, linger, answer

    async def scenario():
        server = await esl_server(router, esl_settings(reply_timeout_s=0.5))
        try:
            return await FreeSwitchPeer().play("127.0.0.1", server.port, call, timeout=CLOSED_WITHIN)
        finally:
            await server.close(grace_s=1)

    asyncio.run(scenario())
    assert call.closed_by_adapter
    assert ("sendmsg", "hangup") in call.ignored


def test_esl_an_application_that_never_completes_ends_in_a_hangup(router):
    # the playback never ends, and heartbeats keep coming: the bound is on the application, not between events
    call = Call(destination="4001000001", stuck_apps=frozenset({"playback"}), heartbeat_s=0.1)

    async def scenario():
        server = await esl_server(router, esl_settings(app_timeout_s=0.5))
        try:
            return await FreeSwitchPeer().play("127.0.0.1", server.port, call, timeout=CLOSED_WITHIN)
        finally:
            await server.close(grace_s=1)

    asyncio.run(scenario())
    assert call.apps == [("answer", ""), ("playback", f"{SOUNDS}/closed.wav")]
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and not call.parked
    assert call.commands[-1] == "exit"


@pytest.mark.parametrize("peer_replies", [True, False], ids=["peer-replies", "peer-silent"])
def test_esl_a_call_over_the_call_limit_is_hung_up_and_released(router, peer_replies):
    # connect, myevents, nixevent, linger, multiset, bridge: then the bridge outlasts the call limit
    call = Call(stuck_apps=frozenset({"bridge"}), silent_after_commands=None if peer_replies else 6)

    async def scenario():
        server = await esl_server(router, esl_settings(max_call_s=0.5, reply_timeout_s=0.5))
        try:
            return await FreeSwitchPeer().play("127.0.0.1", server.port, call, timeout=CLOSED_WITHIN)
        finally:
            await server.close(grace_s=1)

    asyncio.run(scenario())
    assert [app for app, _ in call.apps] == ["multiset", "bridge"]
    if peer_replies:
        assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and not call.parked
        assert call.commands[-1] == "exit"
    else:
        assert ("sendmsg", "hangup") in call.ignored and call.closed_by_adapter
    assert router.calls_in_progress == 0  # ended, not left in the registry for 12 hours


def test_esl_per_address_limit_refuses_extra_connections_while_another_address_is_served(router):
    async def scenario():
        server = await esl_server(router, esl_settings(reply_timeout_s=30), max_per_address=2)
        try:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
            await asyncio.sleep(0.1)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            refused = await asyncio.wait_for(read_until_closed(reader), CLOSED_WITHIN)
            writer.close()
            other = await asyncio.wait_for(_play_from("127.0.0.2", server.port, Call(destination="4001000001")),
                                           CLOSED_WITHIN)
            stats = server.listener.stats
            for _, w in held:
                w.close()
            return refused, other, stats
        finally:
            await server.close(grace_s=1)

    refused, other, stats = asyncio.run(scenario())
    assert refused == b""  # closed before a word
    assert other.apps == [("answer", ""), ("playback", f"{SOUNDS}/closed.wav")] and not other.parked
    assert stats.refused_per_address == 1


async def _play_from(source: str, port: int, call: Call) -> Call:
    """The FreeSWITCH peer, connecting from another loopback address."""
    from tel400_freeswitch.peer import _Conversation

    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        await _Conversation(FreeSwitchPeer().core_uuid, call, writer).run(reader)
    finally:
        writer.close()
    return call


def test_esl_allow_list_closes_other_addresses_before_a_word_while_allowed_ones_are_served(tmp_path):
    # the real command: --allow 127.0.0.1, a stranger on 127.0.0.2
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tel400-esl")
    process = subprocess.Popen([exe, "--plans", str(EXAMPLES / "manual.toml"), "--port", str(port),
                                "--allow", "127.0.0.1", "--prompt-dir", SOUNDS], stderr=subprocess.PIPE, text=True)

    async def scenario():
        strangers = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            strangers.append(await asyncio.wait_for(read_until_closed(reader), CLOSED_WITHIN))
            writer.close()
        served = await asyncio.wait_for(_play_from("127.0.0.1", port, Call(caller="13800000000")), CLOSED_WITHIN)
        return strangers, served

    try:
        line = process.stderr.readline()
        assert "listening on 127.0.0.1:" in line and "127.0.0.1/32" in line
        strangers, served = asyncio.run(scenario())
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
        log = process.stderr.read()
        process.stderr.close()
    assert strangers == [b"", b"", b""]  # closed before "connect": no protocol work for a stranger
    assert served.apps == [("answer", ""), ("playback", f"{SOUNDS}/blacklisted.wav")] and not served.parked
    refusals = [line for line in log.splitlines() if "connection_refused_address" in line]
    assert len(refusals) == 1 and "127.0.0.2" in refusals[0]  # one line for the burst, not one per connection
    assert code == 0


def test_esl_default_allow_list_serves_this_host_through_a_dual_stack_socket(router):
    # --host ::: an IPv4 client arrives as ::ffff:127.0.0.1, which the loopback default must let in
    async def scenario():
        server = EslServer(router, esl_settings())
        await server.start("::", 0)
        try:
            served = await asyncio.wait_for(_play_from("127.0.0.1", server.port, Call(destination="4001000001")),
                                            CLOSED_WITHIN)
            return served, server.listener.stats
        finally:
            await server.close(grace_s=1)

    served, stats = asyncio.run(scenario())
    assert served.apps == [("answer", ""), ("playback", f"{SOUNDS}/closed.wav")] and not served.parked
    assert stats.refused_address == 0


def test_esl_refuses_a_connection_outside_the_allow_list_in_the_library_too(router):
    from tel400.addresses import AllowList

    async def scenario():
        server = await esl_server(router, esl_settings(), allow=AllowList.parse("127.0.0.2"))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            refused = await asyncio.wait_for(read_until_closed(reader), CLOSED_WITHIN)
            writer.close()
            other = await asyncio.wait_for(_play_from("127.0.0.2", server.port, Call(destination="4001000001")),
                                           CLOSED_WITHIN)
        finally:
            await server.close(grace_s=5)
        return refused, other, server

    refused, other, server = asyncio.run(scenario())
    assert refused == b"" and not other.parked
    stats = server.listener.stats
    assert (stats.refused_address, stats.accepted, server.handled) == (1, 1, 1)  # the stranger never became a call


@pytest.mark.parametrize("value, why", [
    ("10.0.0.0/33", "'10.0.0.0/33' is not an address or network"),
    ("localhost", "'localhost' is not an address or network"),
    ("", "expected comma-separated addresses or networks"),
])
def test_esl_a_bad_allow_list_is_refused_at_start(value, why):
    exe = os.path.join(os.path.dirname(sys.executable), "tel400-esl")
    done = subprocess.run([exe, "--plans", str(EXAMPLES / "manual.toml"), "--allow", value],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and f"tel400-esl: --allow: {why}" in done.stderr and "Traceback" not in done.stderr


def test_esl_total_limit_holds_new_connections_until_a_call_ends(router):
    async def scenario():
        server = await esl_server(router, esl_settings(app_timeout_s=0.5), max_connections=1)
        peer = FreeSwitchPeer()
        try:
            # the first call holds the only place (its playback sticks until the app timeout); the second waits
            first = asyncio.create_task(peer.play("127.0.0.1", server.port, Call(
                destination="4001000001", stuck_apps=frozenset({"playback"})), timeout=CLOSED_WITHIN))
            await asyncio.sleep(0.1)
            second = await peer.play("127.0.0.1", server.port, Call(destination="4001000001"), timeout=CLOSED_WITHIN)
            return await first, second, server.listener.stats, server.shed
        finally:
            await server.close(grace_s=1)

    first, second, stats, shed = asyncio.run(scenario())
    assert first.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and second.hangup_cause == "NORMAL_CLEARING"
    assert stats.at_limit >= 1 and stats.accepted == 2 and shed == 0  # a call under way is never shed


def test_esl_at_the_total_limit_silent_connections_make_room_for_a_call(router):
    async def scenario():
        server = await esl_server(router, esl_settings(reply_timeout_s=60), max_connections=3)
        try:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
            await asyncio.sleep(0.1)
            call = await FreeSwitchPeer().play("127.0.0.1", server.port, Call(destination="4001000001"),
                                               timeout=CLOSED_WITHIN)
            for _, w in held:
                w.close()
            return call, server.shed
        finally:
            await server.close(grace_s=1)

    call, shed = asyncio.run(scenario())
    assert call.apps == [("answer", ""), ("playback", f"{SOUNDS}/closed.wav")] and not call.parked
    assert shed >= 1


def test_esl_out_of_descriptors_keeps_serving_and_logs_a_bounded_number_of_times(tmp_path):
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tel400-esl")
    log = tmp_path / "esl.log"
    with open(log, "wb") as err:
        process = subprocess.Popen([exe, "--plans", str(EXAMPLES / "manual.toml"), "--port", str(port),
                                    "--reply-timeout", "30", "--prompt-dir", SOUNDS],
                                   stderr=err, preexec_fn=low_fd_limit(64))
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        held = []
        for _ in range(150):
            try:
                held.append(connect(port))
            except OSError:
                break
        time.sleep(1.5)
        for s in held:
            s.close()
        call = asyncio.run(FreeSwitchPeer().play("127.0.0.1", port, Call(caller="13800000000"),
                                                 timeout=CLOSED_WITHIN))
        assert call.apps == [("answer", ""), ("playback", f"{SOUNDS}/blacklisted.wav")]
    finally:
        process.terminate()
        process.wait(timeout=20)
    text = log.read_text()
    assert len(text) < 20_000, f"{len(text)} bytes of log"
    assert 1 <= text.count("accept_failed") <= 3


def test_http_deadlines_spare_a_slow_application_pipelining_and_a_prompt_client():
    import uvicorn

    from tel400_http.connections import Deadlines, LimitedServer

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        await asyncio.sleep(0.5 if scope["path"] == "/slow" else 0)  # longer than both deadlines
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def answers(reader, n: int) -> int:
        got = 0
        data = b""
        while got < n:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
            got = data.count(b"HTTP/1.1 200 ")
        return got

    async def scenario():
        config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning",
                                ws="none", timeout_keep_alive=30)
        server = LimitedServer(config, deadlines=Deadlines(0.3, 0.3), max_connections=8, max_per_address=8)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", config.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            slow = await answers(reader, 1)
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined
            pipelined = await answers(reader, 3)
            for part in (b"GET /c HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):  # a head in pieces, in time
                writer.write(part)
                await asyncio.sleep(0.1)
            pieces = await answers(reader, 1)
            closed = await asyncio.wait_for(reader.read(), CLOSED_WITHIN) == b""  # then idle: the head deadline
            writer.close()
            return slow, pipelined, pieces, closed, server.deadlines.header_timeouts
        finally:
            server.should_exit = True
            await serving

    slow, pipelined, pieces, closed, header_timeouts = asyncio.run(scenario())
    assert (slow, pipelined, pieces, closed, header_timeouts) == (1, 3, 1, True, 1)


@pytest.mark.parametrize("command, option, value", [
    ("tel400-http", "--header-timeout", "0"), ("tel400-http", "--body-timeout", "nan"),
    ("tel400-http", "--idle-timeout", "-1"), ("tel400-http", "--max-per-address", "0"),
    ("tel400-esl", "--reply-timeout", "0"), ("tel400-esl", "--app-timeout", "inf"),
    ("tel400-esl", "--max-call", "-5"), ("tel400-esl", "--max-connections", "0"),
])
def test_limits_that_would_serve_nobody_are_refused_at_start(tmp_path, command, option, value):
    exe = os.path.join(os.path.dirname(sys.executable), command)
    args = ["--plans", str(EXAMPLES / "manual.toml"), "--data", str(tmp_path)] if command == "tel400-http" else \
        ["--plans", str(EXAMPLES / "manual.toml")]
    done = subprocess.run([exe, *args, option, value], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and option in done.stderr and "Traceback" not in done.stderr


def test_rare_log_tells_every_occurrence_in_at_most_one_line_per_interval():
    from tel400.listener import RareLog

    class Lines:
        def __init__(self):
            self.lines = []

        def warning(self, event, **fields):
            self.lines.append(fields)

    async def scenario():
        logger = Lines()
        log = RareLog("accept_failed", 0.2, logger)
        for i in range(1000):
            log(n=i)
        await asyncio.sleep(0.3)  # the 999 held back are told at the interval's end
        for i in range(5):
            log(n=i)
        await asyncio.sleep(0.3)
        return logger.lines

    lines = asyncio.run(scenario())
    assert len(lines) == 3 and sum(line["occurrences"] for line in lines) == 1005
    assert lines[1]["n"] == 999  # with the last occurrence's fields
