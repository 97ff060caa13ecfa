"""``tel400-esl``: an Event Socket outbound server that carries out every decision.

FreeSWITCH hands a call over with
``<action application="socket" data="127.0.0.1:8040 async full"/>``; for
each connection this server asks for the channel's data, subscribes to its
events, routes with ``Router.route()`` and makes FreeSWITCH do it:

* ``bridge`` — ``multiset continue_on_fail=true hangup_after_bridge=true``,
  then ``bridge`` with the targets as a ``|`` failover dial string (each leg
  with its ring timeout, the caller ID set); if no target answers, the
  ``unavailable`` notice and a hangup;
* ``reject`` — ``answer``, ``playback`` of the prompt's sound file,
  ``hangup`` with a fitting cause;
* ``collect_pin`` — ``play_and_get_digits`` (4–8 digits), then routing again
  with the PIN, a few attempts per call, lockout honoured;
* ``queue`` — ``callcenter``; ``conference`` — ``conference``;
* at ``CHANNEL_HANGUP_COMPLETE`` — ``router.call_ended(uuid, billsec)``.

Every path ends with the call bridged or hung up: a failure inside tel400 or
a refused application ends in the fallback notice and a hangup, and the
socket is closed only after that.  Every wait is bounded (``--reply-timeout``
for a reply, ``--app-timeout`` for an application, ``--max-call`` for the
call): a late application or a call over its limit is hung up; a FreeSWITCH
that does not reply at all gets a hangup and ``exit`` written without waiting,
and its socket closed.  Connections are accepted by
:class:`tel400.listener.Listener` (an allow-list of addresses, ``--allow``,
this host by default; a total, a share per address, a back-off when
descriptors run out); see docs/limits.md.

Whoever can connect is FreeSWITCH to this server: it names the dialed number
and the caller and reports the talk time that is charged.  Hence the
allow-list, checked before the first byte is written.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import re
import signal
import sys
import uuid as uuidlib

import structlog

import tel400
from tel400 import pins
from tel400.addresses import LOOPBACK, LOOPBACK_NETWORKS, AllowList
from tel400.listener import Listener, RareLog, listening_socket, raise_descriptor_limit
from tel400.server_options import add_pin_options, pin_policy

from .protocol import EslProtocol, Event, Frame, ProtocolError, command, hangup, sendmsg

_log = structlog.get_logger("tel400.esl")
#: connections that never sent the channel data: one line per 10 s, with the count
_log_silent = RareLog("esl_connection_silent", 10.0, _log)
_log_shed = RareLog("esl_connection_shed", 10.0, _log)

#: FreeSWITCH hangup cause for each refusal.
HANGUP_CAUSES = {
    "unknown_number": "UNALLOCATED_NUMBER",
    "blacklisted": "CALL_REJECTED",
    "bad_caller": "CALL_REJECTED",
    "bad_pin": "CALL_REJECTED",
    "pin_locked": "CALL_REJECTED",
    "closed": "NORMAL_CLEARING",
    "rule_reject": "NORMAL_CLEARING",
    "cap_exceeded": "USER_BUSY",
    "backend_error": "NORMAL_TEMPORARY_FAILURE",
    "pin_required": "CALL_REJECTED",
}
#: connections open at once (calls in progress) and from one address (a FreeSWITCH host carries all its calls)
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_PER_ADDRESS = 2048
_NUMBER = re.compile(r"\A[+*#]?[0-9*#]{1,32}\Z")
#: applications that last as long as the call: bounded by the call's limit, not the application timeout
_AS_LONG_AS_THE_CALL = frozenset({"bridge", "callcenter", "conference"})


class Hangup(Exception):
    """The channel hung up (or the connection went away) while we waited."""


class Deadline(Exception):
    """FreeSWITCH did not answer in time: a command's reply, an application's end, the call's limit.

    ``silent`` is true when a command got no reply: the peer is not listening,
    so nothing more is waited for.
    """

    def __init__(self, message: str, *, silent: bool) -> None:
        super().__init__(message)
        self.silent = silent


class Settings:
    """What an ESL server does with decisions; every field has a command-line option."""

    def __init__(self, *, gateway: str = "gw1", number_template: str = "sofia/gateway/{gateway}/{target}",
                 uri_template: str = "sofia/external/{target}", prompt_dir: str = "/usr/share/freeswitch/sounds/tel400",
                 prompt_ext: str = "wav", ring_timeout_s: int = 20, pin_attempts: int = 3, pin_timeout_ms: int = 5000,
                 queue_template: str = "{queue}@default", conference_template: str = "{room}@default",
                 caller_id: str = "caller", fallback_prompt: str = "unavailable", reply_timeout_s: float = 10.0,
                 app_timeout_s: float = 60.0, max_call_s: float = 4 * 3600) -> None:
        self.gateway = gateway
        self.number_template = number_template
        self.uri_template = uri_template
        self.prompt_dir = prompt_dir.rstrip("/")
        self.prompt_ext = prompt_ext
        self.ring_timeout_s = ring_timeout_s
        self.pin_attempts = pin_attempts
        self.pin_timeout_ms = pin_timeout_ms
        self.queue_template = queue_template
        self.conference_template = conference_template
        if caller_id not in ("caller", "number"):
            raise ValueError("caller_id: 'caller' (the caller's number) or 'number' (the 400 number)")
        self.caller_id = caller_id
        self.fallback_prompt = fallback_prompt
        for name, value in (("reply_timeout_s", reply_timeout_s), ("app_timeout_s", app_timeout_s),
                            ("max_call_s", max_call_s)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        self.reply_timeout_s = reply_timeout_s
        self.app_timeout_s = app_timeout_s
        self.max_call_s = max_call_s

    def sound(self, prompt: str) -> str:
        """The sound file of a prompt name (names are [A-Za-z0-9_.-], checked by the plans)."""
        return f"{self.prompt_dir}/{prompt}.{self.prompt_ext}"

    def leg(self, target: str) -> str:
        template = self.number_template if _NUMBER.match(target) else self.uri_template
        return f"[leg_timeout={int(self.ring_timeout_s)}]" + template.format(gateway=self.gateway, target=target)

    def dial_string(self, decision: tel400.Decision) -> str:
        """The bridge argument: every target, ``|`` for failover, the caller ID in ``{}``."""
        if self.caller_id == "caller" and decision.caller and _NUMBER.match(decision.caller):
            shown = decision.caller
        else:
            shown = decision.number or ""
        head = f"{{origination_caller_id_number={shown}}}" if _NUMBER.match(shown) else ""
        return head + "|".join(self.leg(t) for t in decision.targets)


class EslCall:
    """One connection from FreeSWITCH: one call, carried out to its end."""

    _event_uuids = itertools.count()

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, router, settings: Settings,
                 pin_threads=None) -> None:
        self.reader = reader
        self.writer = writer
        self.router = router
        self.s = settings
        self.pin_threads = pin_threads  # where PINs are checked (None: the loop's default executor)
        self.protocol = EslProtocol()
        self.replies: list[asyncio.Future] = []
        self.events: asyncio.Queue = asyncio.Queue()
        self.hungup = False
        self.hangup_event: Event | None = None
        self.gone = False
        self.uuid: str | None = None
        self.targets: tuple[str, ...] = ()
        self.answered = False
        self.abandoned = False  # the peer stopped answering: nothing more is waited for
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.deadline = loop.time() + settings.max_call_s  # the call's limit, from its first byte
        self.bridged_at: float | None = None

    # -- plumbing -----------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                self.protocol.receive_data(data)
                if not data:
                    break
                for frame in self.protocol.frames():
                    self._dispatch(frame)
        except (ProtocolError, ConnectionError) as exc:
            _log.warning("esl_connection_broken", uuid=self.uuid, error=str(exc))
        finally:
            self.gone = True
            for future in self.replies:
                if not future.done():
                    future.set_exception(Hangup("connection closed"))
            self.replies.clear()
            self.events.put_nowait(None)

    def _dispatch(self, frame: Frame) -> None:
        if frame.is_reply:
            if self.replies:
                future = self.replies.pop(0)
                if not future.done():
                    future.set_result(frame)
            return
        if frame.is_disconnect:
            self.events.put_nowait(frame)
            return
        if frame.event is not None:
            name = frame.event.name
            if name == "CHANNEL_BRIDGE" and self.bridged_at is None:
                self.bridged_at = self.loop.time()
            elif name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
                self.hungup = True
                if name == "CHANNEL_HANGUP_COMPLETE":
                    self.hangup_event = frame.event
            self.events.put_nowait(frame.event)

    async def _send(self, data: bytes) -> Frame:
        """Send a command and wait for its reply, at most ``reply_timeout_s`` (sending included).

        Raises:
            Hangup: the connection is gone.
            Deadline: no reply in time (``silent``: the peer is not listening).
        """
        if self.gone:
            raise Hangup("connection closed")
        future = self.loop.create_future()
        self.replies.append(future)
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.s.reply_timeout_s):
                await self.writer.drain()  # a peer that does not read is as silent as one that does not answer
                return await future  # on timeout the future is cancelled: a late reply goes nowhere
        except TimeoutError:
            raise Deadline(f"no reply within {self.s.reply_timeout_s:g} s", silent=True) from None

    async def execute(self, app: str, arg: str = "") -> Event:
        """Run an application and wait for it to complete (or the channel to end).

        The wait is bounded by ``app_timeout_s`` (``bridge``, ``callcenter``
        and ``conference`` last as long as the call: by the call's limit).

        Raises:
            Hangup: the channel hung up, or the application was refused.
            Deadline: no reply, or the application did not complete in time.
        """
        if self.hungup:
            raise Hangup("channel already hung up")
        event_uuid = f"tel400-{next(self._event_uuids)}-{uuidlib.uuid4().hex[:8]}"
        reply = await self._send(sendmsg(app, arg, event_uuid=event_uuid))
        if not reply.ok:
            raise Hangup(f"{app} refused: {reply.reply_text}")
        deadline = self.deadline
        if app not in _AS_LONG_AS_THE_CALL:
            deadline = min(deadline, self.loop.time() + self.s.app_timeout_s)
        try:
            async with asyncio.timeout_at(deadline):  # one bound for the whole wait: events in between do not extend it
                while True:
                    event = await self._next_event()
                    if event.name == "CHANNEL_EXECUTE_COMPLETE" and event.get("Application-UUID") == event_uuid:
                        return event
                    if self.hungup and event.name == "CHANNEL_HANGUP_COMPLETE":
                        raise Hangup("channel hung up")
        except TimeoutError:
            why = "the call's limit" if deadline == self.deadline else f"{self.s.app_timeout_s:g} s"
            raise Deadline(f"{app} did not complete within {why}", silent=False) from None

    async def _next_event(self) -> Event:
        """The next event (callers bound the wait)."""
        while True:
            item = await self.events.get()
            if item is None:
                raise Hangup("connection closed")
            if isinstance(item, Event):
                return item
            # a disconnect notice: linger means the channel is gone, the socket stays
            if item.disposition == "linger":
                self.hungup = True
                continue
            raise Hangup("FreeSWITCH disconnected")

    async def _hangup(self, cause: str) -> None:
        if not self.hungup and not self.gone:
            await self._send(hangup(cause))

    # -- the call -----------------------------------------------------------------------

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            await self._run()
        except Hangup as exc:
            _log.debug("esl_call_ended_early", uuid=self.uuid, why=str(exc))
        except Deadline as exc:
            if self.uuid is None:  # no channel data: a stranger or a stuck FreeSWITCH, logged by the interval
                _log_silent(why=str(exc))
            else:
                _log.warning("esl_freeswitch_late", uuid=self.uuid, why=str(exc))
            await self._end_late(exc)
        except Exception as exc:  # never leave a call parked: fall back to a notice and a hangup
            _log.error("esl_call_failed", uuid=self.uuid, error=f"{type(exc).__name__}: {exc}")
            await self._fallback()
        finally:
            await self._finish()
            reader.cancel()
            await self._close()

    async def _close(self) -> None:
        """Close the socket; one whose peer does not read what is left is dropped after the reply timeout."""
        self.writer.close()
        try:
            async with asyncio.timeout(self.s.reply_timeout_s):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except (ConnectionError, OSError):
            pass

    async def _end_late(self, late: Deadline) -> None:
        """FreeSWITCH was late: hang up now, or, when it does not answer at all, ask for it and stop waiting."""
        if late.silent:
            self._abandon()
            return
        try:
            await self._hangup("NORMAL_TEMPORARY_FAILURE")
        except Hangup:
            pass
        except Deadline:
            self._abandon()

    def _abandon(self) -> None:
        """The peer does not answer: write a hangup and ``exit`` without waiting for replies.

        A peer that answers nothing will not play a notice either; closing
        the socket right after is what is left (FreeSWITCH gets the hangup
        if it reads at all).
        """
        self.abandoned = True
        if self.gone:
            return
        data = (b"" if self.hungup else hangup("NORMAL_TEMPORARY_FAILURE")) + command("exit")
        try:
            self.writer.write(data)
        except (ConnectionError, OSError, RuntimeError):
            pass

    async def _run(self) -> None:
        channel = await self._send(command("connect"))
        headers = channel.headers
        self.uuid = headers.get("Unique-ID") or headers.get("Channel-Call-UUID")
        await self._send(command("myevents"))
        lingering = (await self._send(command("linger"))).ok
        if not lingering:
            # Without "full" in the socket data FreeSWITCH answers -ERR command not found:
            # the call still routes, but its end (and so minutes and cost) can be missed.
            _log.warning("esl_no_linger", uuid=self.uuid, hint='use data="host:port async full"')
        dialed = headers.get("Caller-Destination-Number") or headers.get("variable_sip_req_user")
        caller = headers.get("Caller-Caller-ID-Number") or headers.get("variable_sip_from_user")
        try:
            decision = self.router.route(dialed, caller, None, "voice", None, self.uuid)
        except Exception as exc:
            _log.error("esl_route_failed", uuid=self.uuid, error=f"{type(exc).__name__}: {exc}")
            await self._fallback()
            return
        await self._carry_out(decision, dialed, caller)

    async def _carry_out(self, decision, dialed, caller) -> None:
        if decision.action == "collect_pin":
            ask = decision.prompt  # "enter_pin", or the plan's name for it
            for attempt in range(1, self.s.pin_attempts + 1):
                pin = await self._collect_pin(ask)
                # a hashed PIN may cost a key derivation: never on the loop that serves every call
                decision = await asyncio.get_running_loop().run_in_executor(
                    self.pin_threads, self.router.route, dialed, caller, None, "voice", pin, self.uuid)
                if decision.reason != "bad_pin" or attempt == self.s.pin_attempts:
                    break
                await self.execute("playback", self.s.sound(decision.prompt))  # wrong: say so, ask again
            # ok → carried out below; bad_pin (attempts used up) or pin_locked → their notice
        if decision.action == "bridge":
            await self._bridge(decision)
        elif decision.action == "queue":
            self.targets = decision.targets
            await self.execute("callcenter", self.s.queue_template.format(queue=decision.targets[0]))
            await self._hangup("NORMAL_CLEARING")
        elif decision.action == "conference":
            self.targets = decision.targets
            await self._answer()
            await self.execute("conference", self.s.conference_template.format(room=decision.targets[0]))
            await self._hangup("NORMAL_CLEARING")
        else:
            await self._notice(decision.prompt, HANGUP_CAUSES.get(decision.reason, "CALL_REJECTED"))

    async def _answer(self) -> None:
        if not self.answered:
            await self.execute("answer")
            self.answered = True

    async def _collect_pin(self, prompt: str | None) -> str:
        await self._answer()
        s = self.s
        arg = (f"4 8 3 {s.pin_timeout_ms} # {s.sound(prompt or 'enter_pin')} {s.sound('bad_pin_format')} "
               "tel400_pin \\d{4,8}")
        event = await self.execute("play_and_get_digits", arg)
        return event.get("variable_tel400_pin") or ""

    async def _bridge(self, decision) -> None:
        self.targets = decision.targets
        await self.execute("multiset", "continue_on_fail=true hangup_after_bridge=true")
        done = await self.execute("bridge", self.s.dial_string(decision))
        if self.hungup:
            return  # answered and over (hangup_after_bridge), or the caller gave up
        disposition = done.get("variable_originate_disposition") or done.get("Application-Response")
        _log.info("esl_bridge_failed", uuid=self.uuid, disposition=disposition)
        await self._notice(self.s.fallback_prompt, "NORMAL_TEMPORARY_FAILURE")

    async def _notice(self, prompt: str | None, cause: str) -> None:
        await self._answer()
        if prompt:
            await self.execute("playback", self.s.sound(prompt))
        await self._hangup(cause)

    async def _fallback(self) -> None:
        try:
            await self._notice(self.s.fallback_prompt, "NORMAL_TEMPORARY_FAILURE")
        except Hangup:
            pass
        except Deadline as exc:
            await self._end_late(exc)
        except Exception as exc:
            _log.error("esl_fallback_failed", uuid=self.uuid, error=str(exc))
            try:
                await self._hangup("NORMAL_TEMPORARY_FAILURE")
            except Exception:
                pass

    async def _finish(self) -> None:
        """Wait for the channel's end (charging it), then say goodbye.

        Every path gets here with the channel hung up or asked to hang up, so
        the end is waited for ``reply_timeout_s`` at most, events or not.
        """
        if not self.abandoned:
            try:
                async with asyncio.timeout(self.s.reply_timeout_s):
                    while not self.hangup_event and not self.gone:
                        await self._next_event()
            except (Hangup, TimeoutError):
                pass
        self._report_end()
        if not self.gone and not self.abandoned:
            try:
                await self._send(command("exit"))  # "+OK bye"; FreeSWITCH then closes its side
            except (Hangup, Deadline, ConnectionError, OSError):
                pass

    def _report_end(self) -> None:
        """Charge the call from its CHANNEL_HANGUP_COMPLETE, or, when that never came, release it.

        Without the end event the talk time is the time since CHANNEL_BRIDGE
        (none if there was none), logged as unconfirmed: the call does not
        stay in the router's registry until it expires.
        """
        if not self.uuid:
            return
        event = self.hangup_event
        if event is not None:
            billsec = event.get("variable_billsec") or "0"
            seconds = int(billsec) if billsec.isascii() and billsec.isdigit() else 0
            answered = event.get("variable_bridge_channel") or ""
            target = next((t for t in self.targets if answered.endswith(t)), None)
        else:
            seconds = 0 if self.bridged_at is None else math.ceil(self.loop.time() - self.bridged_at)
            target = None
        # a call longer than the router keeps calls (--max-call above it) is
        # charged as the longest call, not refused and lost
        seconds = min(seconds, self.router.longest_call_s)
        try:
            charge = self.router.call_ended(self.uuid, seconds, target)
        except Exception as exc:
            _log.error("esl_call_end_failed", uuid=self.uuid, error=str(exc))
            return
        if event is None and charge is not None:
            _log.warning("esl_call_end_unconfirmed", uuid=self.uuid, charged_s=seconds,
                         why="no CHANNEL_HANGUP_COMPLETE: FreeSWITCH went away or stopped answering")


class _CallProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, telling the listener when its connection is gone."""

    def __init__(self, on_closed, client_connected_cb) -> None:
        super().__init__(asyncio.StreamReader(limit=1 << 20), client_connected_cb)
        self._on_closed = on_closed

    def connection_lost(self, exc) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._on_closed()


class EslServer:
    """Accepts FreeSWITCH's outbound connections; one :class:`EslCall` each.

    Args:
        router: the :class:`~tel400.Router`.
        settings: what calls do (:class:`Settings`).
        max_connections: connections open at once at most; at the limit the
            oldest connections that have not sent the channel data are
            closed, and if there are none, new ones wait in the listen
            backlog until a call ends.
        max_per_address: connections from one address at most; more are
            closed at once (FreeSWITCH's dialplan then goes on after ``socket``).
        allow: the addresses FreeSWITCH may connect from (default: this
            host); a connection from another is closed as soon as it is
            accepted, before a word is written.
    """

    def __init__(self, router, settings: Settings | None = None, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_per_address: int = DEFAULT_MAX_PER_ADDRESS, allow: AllowList = LOOPBACK) -> None:
        self.router = router
        self.settings = settings or Settings()
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.allow = allow
        # a stand-in router (tests) may have no policy: the default's bound then
        self.pin_threads = pins.check_executor(getattr(router, "pin_policy", None) or pins.PinPolicy())
        self.handled = 0
        self.shed = 0  # connections without channel data closed at max_connections to make room
        self.listener: Listener | None = None
        self._calls: dict[asyncio.Task, EslCall] = {}  # in the order they came

    @property
    def active(self) -> int:
        return len(self._calls)

    async def _handle(self, reader, writer) -> None:
        task = asyncio.current_task()
        call = EslCall(reader, writer, self.router, self.settings, self.pin_threads)
        self._calls[task] = call
        try:
            await call.run()
        finally:
            del self._calls[task]
            self.handled += 1

    def make_room(self) -> None:
        """At the connection limit: close the oldest connections that have not sent the channel data.

        A sixteenth of the places at most.  Calls under way are never
        touched; a connection that says nothing would be closed at its reply
        timeout anyway.  Cost: a pass over the calls.
        """
        budget = max(1, self.max_connections // 16)
        for call in self._calls.values():  # oldest first
            if budget == 0:
                break
            if call.uuid is None and not call.gone and not call.writer.transport.is_closing():
                call.writer.transport.abort()
                self.shed += 1
                budget -= 1
                _log_shed(shed=self.shed, max_connections=self.max_connections)

    async def start(self, host: str = "127.0.0.1", port: int = 8040) -> Listener:
        sock = listening_socket(host, port, backlog=1024)
        self.listener = Listener(sock, lambda on_closed: _CallProtocol(on_closed, self._handle),
                                 max_connections=self.max_connections, max_per_address=self.max_per_address,
                                 allow=self.allow, on_full=self.make_room, name="tel400-esl").start()
        return self.listener

    @property
    def port(self) -> int:
        return self.listener.sock.getsockname()[1]

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop accepting calls, let the calls in progress finish (up to ``grace_s``)."""
        if self.listener is not None:
            self.listener.close()
        if self._calls:
            _, pending = await asyncio.wait(set(self._calls), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.pin_threads.shutdown(wait=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tel400-esl", description="tel400's FreeSWITCH Event Socket outbound server")
    p.add_argument("--plans", required=True, help="a plan file, sqlite:///path or redis://host/db")
    p.add_argument("--port", type=int, default=8040)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--counters", default="memory://", help="counter backend URL (shm:///path, redis://host/db)")
    p.add_argument("--gateway", default="gw1", help="the sofia gateway that number targets are sent to")
    p.add_argument("--number-template", default="sofia/gateway/{gateway}/{target}")
    p.add_argument("--uri-template", default="sofia/external/{target}", help="for user@host targets")
    p.add_argument("--prompt-dir", default="/usr/share/freeswitch/sounds/tel400")
    p.add_argument("--prompt-ext", default="wav")
    p.add_argument("--ring-timeout", type=int, default=20, help="seconds per target before failover")
    p.add_argument("--pin-attempts", type=int, default=3)
    p.add_argument("--queue-template", default="{queue}@default")
    p.add_argument("--conference-template", default="{room}@default")
    p.add_argument("--caller-id", choices=("caller", "number"), default="caller",
                   help="what the targets see: the caller's number or the 400 number")
    p.add_argument("--fallback-prompt", default="unavailable", help="played when a bridge fails or tel400 does")
    p.add_argument("--reply-timeout", type=float, default=10.0,
                   help="seconds FreeSWITCH has to answer a command (the first: the channel data); "
                        "then the call is hung up and the socket closed")
    p.add_argument("--app-timeout", type=float, default=60.0,
                   help="seconds an application (answer, playback, PIN entry) has to complete; "
                        "then the call is hung up")
    p.add_argument("--max-call", type=float, default=4 * 3600,
                   help="seconds a call may last (bridge, queue, conference); then it is hung up")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help="connections (calls) at once; at the limit connections that sent no channel data "
                        "are closed, or new ones wait until a call ends")
    p.add_argument("--max-per-address", type=int, default=DEFAULT_MAX_PER_ADDRESS,
                   help="connections from one address at once; beyond, new ones are closed at once")
    p.add_argument("--allow", metavar="NETS", default=",".join(LOOPBACK_NETWORKS),
                   help="comma-separated addresses or networks FreeSWITCH may connect from, or 'any'; "
                        "others are closed at once (default: %(default)s, this host)")
    add_pin_options(p)
    from tel400.server_options import add_worker_options  # here: the module head is another change's

    add_worker_options(p)
    return p


def settings_from(args) -> Settings:
    """The :class:`Settings` the command-line options ask for."""
    return Settings(
        gateway=args.gateway, number_template=args.number_template, uri_template=args.uri_template,
        prompt_dir=args.prompt_dir, prompt_ext=args.prompt_ext, ring_timeout_s=args.ring_timeout,
        pin_attempts=args.pin_attempts, queue_template=args.queue_template,
        conference_template=args.conference_template, caller_id=args.caller_id, fallback_prompt=args.fallback_prompt,
        reply_timeout_s=args.reply_timeout, app_timeout_s=args.app_timeout, max_call_s=args.max_call,
    )


def allow_list(text: str) -> AllowList:
    """The ``--allow`` option's :class:`~tel400.addresses.AllowList` (``ValueError`` naming the option)."""
    try:
        return AllowList.parse(text)
    except ValueError as exc:
        raise ValueError(f"--allow: {exc}") from None


def main(argv=None) -> int:
    from tel400.server_options import worker_policy

    args = build_parser().parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                        logger_factory=lambda *a: structlog.PrintLogger(sys.stderr))
    try:
        for option in ("reply_timeout", "app_timeout", "max_call"):
            if not 0 < getattr(args, option) < float("inf"):
                raise ValueError(f"--{option.replace('_', '-')}: expected a positive number of seconds")
        if args.max_connections < 1 or args.max_per_address < 1:
            raise ValueError("--max-connections and --max-per-address: expected at least 1")
        settings = settings_from(args)
        policy = pin_policy(args)
        allow = allow_list(args.allow)
        supervision = worker_policy(args, grace_s=_GRACE_S)
    except ValueError as exc:
        print(f"tel400-esl: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _serve_workers(args, settings, policy, allow, supervision)
    try:
        router, store = _router(args, policy)
    except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
        print(f"tel400-esl: {exc}", file=sys.stderr)
        return 2
    raise_descriptor_limit(args.max_connections + 64, name="tel400-esl")
    asyncio.run(_serve(args, router, settings, allow, f"{router.number_count} numbers from {store.url}"))
    return 0


#: Seconds the calls in progress have to finish after SIGTERM.
_GRACE_S = 30.0


def _router(args, policy) -> tuple[tel400.Router, object]:
    """The router and its store, the plan watcher started (each worker makes its own, after the fork)."""
    from tel400.server_options import open_call_registry

    store = tel400.open_store(args.plans, create=False)  # a mistyped path is an error, not an empty store
    # A call's end comes on the call's own connection, so one worker's memory keeps its calls (the
    # default); --calls shares them (a registry tel400-http's end_url reports into too).
    extra = {} if args.calls is None else {"calls": open_call_registry(args.calls, max_age_s=args.max_call)}
    # Streamed: each number is compiled as it is read; the watcher then applies changed numbers only.
    router = tel400.Router.from_store(store, args.counters, pin_policy=policy, **extra)
    tel400.PlanWatcher(router, store, version=router.plans_version).start()
    return router, store


async def _serve(args, router, settings, allow, what: str | None) -> None:
    """Serve until SIGTERM or SIGINT; ``what``: print the banner with it once listening."""
    server = EslServer(router, settings, max_connections=args.max_connections,
                       max_per_address=args.max_per_address, allow=allow)
    await server.start(args.host, args.port)
    if what is not None:
        print(f"tel400-esl: {what}, listening on {args.host}:{server.port} ({tel400.IMPLEMENTATION}) "
              f"for FreeSWITCH at {allow} (--allow)", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close(_GRACE_S)


def _serve_workers(args, settings, policy, allow, supervision) -> int:
    """--workers N: bind once, check the plans once, then N processes serve (:mod:`tel400.workers`)."""
    import os

    from tel400 import workers
    from tel400.listener import hand_over

    try:
        socks = workers.listening_sockets(args.host, args.port, args.workers, 1024)
    except OSError as exc:
        print(f"tel400-esl: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    port = socks[0].getsockname()[1]

    def close() -> None:
        for sock in socks:
            sock.close()

    def first_start() -> int:
        try:
            router, store = _router(args, policy)
        except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
            print(f"tel400-esl: {exc}", file=sys.stderr)
            return 2
        print(f"tel400-esl: {router.number_count} numbers from {store.url}, listening on {args.host}:{port} "
              f"({tel400.IMPLEMENTATION}, {args.workers} workers) for FreeSWITCH at {allow} (--allow)",
              file=sys.stderr, flush=True)
        return 0

    def serve(worker: int) -> int:
        structlog.contextvars.bind_contextvars(worker=worker)  # every log line says which worker
        router, _ = _router(args, policy)
        raise_descriptor_limit(args.max_connections + 64, name="tel400-esl")
        hand_over(args.host, args.port, workers.own_socket(socks, worker))  # EslServer.start serves it
        _log.info("esl_worker_serving", pid=os.getpid(), port=port)
        asyncio.run(_serve(args, router, settings, allow, None))
        return 0

    try:
        code = workers.run_once("tel400-esl", first_start)
        if code:
            return code
        return workers.supervise(args.workers, serve, name="tel400-esl", policy=supervision, on_stop=close)
    finally:
        close()


if __name__ == "__main__":
    sys.exit(main())
