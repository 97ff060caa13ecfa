"""One outbound Event Socket call as a sans-IO state machine.

Frames in (:meth:`Session.receive_frame`, parsed by
:class:`~tel400_freeswitch.protocol.EslProtocol`), the shell's news in
(:meth:`Session.decided`, :meth:`Session.route_failed`,
:meth:`Session.deadline_passed`, :meth:`Session.connection_lost`); out:

* bytes to write (:meth:`Session.data_to_send`);
* :attr:`Session.deadline` — when to call :meth:`Session.deadline_passed`
  (``None``: no timer);
* a :class:`RouteRequest` to fulfil (:meth:`Session.take_request`): a first
  decision the shell makes at once, a PIN check it makes off the loop;
* the call's end for ``router.call_ended`` (:meth:`Session.take_end`), given
  out exactly once per call that sent its channel data;
* :attr:`Session.close` — ``"close"`` (flush, then close) or ``"abort"``.

No sockets, no clock of its own (``clock`` is passed in), no router: the
tests drive it with frames built in memory.  The transitions are in one
place, :data:`TRANSITIONS` (h11's ``_state.py`` is the model): a state and
what happened give the handler; anything not in the table is ignored and
counted in :attr:`Session.ignored` (a late reply, an event of another
application, an event after the end).

States (docs/freeswitch.md has the table):

``CONNECTING``  ``connect``, ``myevents``, ``nixevent …``, ``linger`` sent in one write, waiting for the channel data;
``SUBSCRIBING`` waiting for the other three replies;
``ROUTING``     waiting for a decision (the router, or a PIN check);
``RUNNING``     a step sent, waiting for its reply and its ``CHANNEL_EXECUTE_COMPLETE``;
``ENDING``      waiting for ``CHANNEL_HANGUP_COMPLETE`` (at most ``reply_timeout_s``);
``CLOSING``     ``exit`` sent, waiting for ``+OK bye``;
``CLOSED``      the shell closes the socket; nothing more happens.

Inbound (:meth:`Session.parked`, :mod:`tel400_freeswitch.inbound`) the
same table runs from ``ROUTING``: the ``CHANNEL_PARK`` event stands for the
connect reply, commands name the channel, and ``ENDING`` goes straight to
``CLOSED`` (no ``exit``: the connection is every call's).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import structlog

from tel400.listener import RareLog

from . import actions
from .actions import HANGUP, Settings, Step
from .protocol import Frame, command, hangup, sendmsg

_log = structlog.get_logger("tel400.esl")
#: connections that never sent the channel data: one line per 10 s, with the count
_log_silent = RareLog("esl_connection_silent", 10.0, _log)

CONNECTING, SUBSCRIBING, ROUTING, RUNNING, ENDING, CLOSING, CLOSED = (
    "CONNECTING", "SUBSCRIBING", "ROUTING", "RUNNING", "ENDING", "CLOSING", "CLOSED")

#: The events the session reads.  ``myevents`` subscribes the channel's
#: ~23 event types (mod_event_socket.c); ``nixevent`` drops the others, so
#: FreeSWITCH neither serializes nor sends them and we never parse them.
EVENTS = ("CHANNEL_EXECUTE_COMPLETE", "CHANNEL_BRIDGE", "CHANNEL_HANGUP_COMPLETE")
#: what ``myevents`` turns on besides :data:`EVENTS` (mod_event_socket.c, parse_command)
UNNEEDED_EVENTS = (
    "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_CREATE", "CHANNEL_DATA", "CHANNEL_DESTROY",
    "CHANNEL_EXECUTE", "CHANNEL_HANGUP", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK",
    "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK",
    "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK",
)
#: applications that last as long as the call: bounded by the call's limit, not the application timeout
AS_LONG_AS_THE_CALL = frozenset({"bridge", "callcenter", "conference"})

# FreeSWITCH reads a command at a time (read_packet takes one byte per recv),
# so the commands that need no answer first go in one write: one round trip
# for the channel data and the subscription.
_CONNECT = command("connect")
_MYEVENTS = command("myevents")
_NIXEVENT = command("nixevent", *UNNEEDED_EVENTS)
_LINGER = command("linger")
_EXIT = command("exit")
#: applications that only set variables: sent in the same write as the next step (FreeSWITCH
#: runs a channel's queued sendmsg in order), their end not waited for, a refusal still seen
SETTERS = frozenset({"multiset", "set", "export"})

# what can happen to a session: the keys of TRANSITIONS besides the state
REPLY, EXECUTE_COMPLETE, HANGUP_COMPLETE, BRIDGED, LINGER, DISCONNECT, DECISION, LOST, LATE = (
    "reply", "execute_complete", "hangup_complete", "bridged", "linger", "disconnect", "decision", "lost", "late")


class RouteRequest(NamedTuple):
    """A decision to make: ``pin`` is ``None`` for the first (make it at once), digits after a PIN round."""

    dialed: str | None
    caller: str | None
    uuid: str | None
    pin: str | None


class CallEnd(NamedTuple):
    """What ``router.call_ended`` gets; ``confirmed`` is false without a ``CHANNEL_HANGUP_COMPLETE``."""

    uuid: str
    seconds: int
    target: str | None
    confirmed: bool


_prefix = os.urandom(4).hex()
_event_uuids = itertools.count()


class Session:
    """One call: outbound, from ``connect`` to ``exit``; inbound (:meth:`parked`), from its park to its end.

    ``channel`` is the inbound mode's: the ``Unique-ID`` every command names
    (``sendmsg <uuid>``), on a connection that carries every call of the
    FreeSWITCH; such a session sends no ``connect``, subscription or
    ``exit`` (the connection's, not the call's), and is over when its end
    is reported.  Outbound (``None``) the connection is the call's own.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float], *, channel: str | None = None) -> None:
        self.s = settings
        self.channel = channel
        self.clock = clock
        self.state = CONNECTING
        self._out: list[bytes] = []
        self._awaiting: deque[tuple[str, float]] = deque()  # commands sent, oldest first: (what, sent at)
        self.call_deadline = clock() + settings.max_call_s  # the call's limit, from its first byte
        self._app_deadline: float | None = None  # the running application's bound
        self._end_deadline: float | None = None  # ENDING: how long the channel's end is waited for
        self._request: RouteRequest | None = None
        self._end: CallEnd | None = None
        self._ended = False  # the end was given out (exactly once)
        self.close: str | None = None
        self.uuid: str | None = None
        self.dialed: str | None = None
        self.caller: str | None = None
        self.lingering = False
        self.hungup = False  # the channel is gone (its end event or the linger notice)
        self.hangup_event = None
        self.bridged_at: float | None = None
        self.answered = False
        self.targets: tuple[str, ...] = ()
        self.pin_rounds = 0
        self.decision = None
        self._steps: deque[Step] = deque()
        self._running: Step | None = None
        self._running_uuid: str | None = None
        self._replied = False  # the running step's reply came
        self.ignored = 0  # frames and news the state had no use for (late replies, foreign events)
        if channel is None:
            self._send(_CONNECT, "connect")
            self._send(_MYEVENTS, "myevents")
            self._send(_NIXEVENT, "nixevent")
            self._send(_LINGER, "linger")

    @classmethod
    def parked(cls, settings: Settings, clock: Callable[[], float], event) -> Session:
        """An inbound call: FreeSWITCH's dialplan parked the channel, ``event`` is its ``CHANNEL_PARK``.

        The event carries what the outbound connect reply does (the
        channel's headers and variables), so the session starts in
        ``ROUTING`` with its first decision to make.
        """
        session = cls(settings, clock, channel=event.get("Unique-ID"))
        session._take_channel(event.headers)
        session._route(None)
        return session

    # -- what the shell reads ------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes to write now (``b""`` if none)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def commands_to_send(self) -> list[bytes]:
        """The commands to write now, one item each: on a shared connection each gets one reply, in order."""
        commands, self._out = self._out, []
        return commands

    @property
    def deadline(self) -> float | None:
        """The earliest time something is waited for until (``None``: nothing is)."""
        if self.state == CLOSED:
            return None
        deadline = self._awaiting[0][1] + self.s.reply_timeout_s if self._awaiting else None
        for candidate in (self._app_deadline, self._end_deadline):  # runs after every frame: no list, no min()
            if candidate is not None and (deadline is None or candidate < deadline):
                deadline = candidate
        return deadline

    def take_request(self) -> RouteRequest | None:
        request, self._request = self._request, None
        return request

    def take_end(self) -> CallEnd | None:
        end, self._end = self._end, None
        return end

    # -- what happens --------------------------------------------------------------------------

    def receive_frame(self, frame: Frame) -> None:
        event = frame.event
        if event is not None:
            name = event.headers.get("Event-Name")
            if name == "CHANNEL_EXECUTE_COMPLETE":
                self._on(EXECUTE_COMPLETE, event)
            elif name == "CHANNEL_HANGUP_COMPLETE":
                self.hungup = True
                if self.hangup_event is None:
                    self.hangup_event = event
                self._on(HANGUP_COMPLETE, event)
            elif name == "CHANNEL_BRIDGE":
                if self.bridged_at is None:
                    self.bridged_at = self.clock()
            else:
                self.ignored += 1  # not subscribed (FreeSWITCH without "full" sends every myevents event)
            return
        kind = (frame.headers.get("Content-Type") or "").lower()
        if kind in ("command/reply", "api/response"):
            if not self._awaiting:
                self.ignored += 1  # a reply nothing waits for (its command's wait is over)
                return
            what, _ = self._awaiting.popleft()
            self._on(REPLY, (what, frame))
        elif kind == "text/disconnect-notice":
            if (frame.headers.get("Content-Disposition") or "") == "linger":
                self.hungup = True  # the channel is gone; the socket stays for the last events
                self._on(LINGER, frame)
            else:
                self._on(DISCONNECT, frame)
        else:
            self.ignored += 1

    def decided(self, decision) -> None:
        """The shell's answer to the :class:`RouteRequest`."""
        self._on(DECISION, decision)

    def route_failed(self, error: BaseException) -> None:
        """The router raised: the call hears the fallback notice."""
        _log.error("esl_route_failed", uuid=self.uuid, error=f"{type(error).__name__}: {error}")
        self._on(DECISION, None)

    def failed(self, error: BaseException) -> None:
        """Something inside tel400 broke while handling this call: never leave it parked."""
        _log.error("esl_call_failed", uuid=self.uuid, error=f"{type(error).__name__}: {error}")
        if self.state in (ROUTING, RUNNING):
            self._run_steps(actions.fallback(self.s))
        else:
            self._abandon()

    def deadline_passed(self) -> None:
        """The shell's timer for :attr:`deadline` went off (early or late calls are harmless)."""
        now = self.clock()
        if self._awaiting and now >= self._awaiting[0][1] + self.s.reply_timeout_s:
            what = self._awaiting[0][0]
            why = f"no reply to {what} within {self.s.reply_timeout_s:g} s"
            if self.uuid is None:
                _log_silent(why=why)  # a stranger or a stuck FreeSWITCH, logged by the interval
            elif self.state != CLOSING:
                _log.warning("esl_freeswitch_late", uuid=self.uuid, why=why)
            self._on(LATE, "silent")
        elif self._app_deadline is not None and now >= self._app_deadline:
            why = ("the call's limit" if self._app_deadline == self.call_deadline
                   else f"{self.s.app_timeout_s:g} s")
            _log.warning("esl_freeswitch_late", uuid=self.uuid,
                         why=f"{self._running.app if self._running else 'application'} did not complete within {why}")
            self._app_deadline = None
            self._on(LATE, "application")
        elif self._end_deadline is not None and now >= self._end_deadline:
            self._end_deadline = None
            self._on(LATE, "end")

    def connection_lost(self) -> None:
        """The socket is gone (closed by FreeSWITCH, broken, or a protocol error)."""
        self._on(LOST, None)

    # -- the table ----------------------------------------------------------------------------

    def _on(self, what: str, data) -> None:
        handler = _BY_STATE[self.state].get(what)  # TRANSITIONS, by state: no key tuple to build and hash
        if handler is None:
            self.ignored += 1
            return
        handler(self, data)

    # CONNECTING
    def _connect_reply(self, data) -> None:
        self._take_channel(data[1].headers)
        self.state = SUBSCRIBING

    def _take_channel(self, headers) -> None:
        """Who calls whom, from the connect reply (outbound) or the CHANNEL_PARK event (inbound)."""
        self.uuid = headers.get("Unique-ID") or headers.get("Channel-Call-UUID")
        self.dialed = headers.get("Caller-Destination-Number") or headers.get("variable_sip_req_user")
        self.caller = headers.get("Caller-Caller-ID-Number") or headers.get("variable_sip_from_user")

    # SUBSCRIBING
    def _subscribe_reply(self, data) -> None:
        what, frame = data
        if what == "linger":
            self.lingering = frame.ok
            if not self.lingering:
                # Without "full" in the socket data FreeSWITCH answers -ERR command not found:
                # the call still routes, but its end (and so minutes and cost) can be missed.
                _log.warning("esl_no_linger", uuid=self.uuid, hint='use data="host:port async full"')
            self._route(None)
        elif not frame.ok:  # nixevent without "full": every myevents event comes, and is skipped
            _log.debug("esl_subscribe_refused", uuid=self.uuid, command=what, reply=frame.reply_text)

    def _route(self, pin: str | None) -> None:
        self.state = ROUTING
        self._request = RouteRequest(self.dialed, self.caller, self.uuid, pin)

    # ROUTING
    def _decision(self, decision) -> None:
        if self.hungup:  # the caller left while we decided
            self._wait_for_end()
            return
        if decision is None:
            self._run_steps(actions.fallback(self.s))
            return
        self.decision = decision
        if decision.action in ("bridge", "queue", "conference"):
            self.targets = decision.targets
        self._run_steps(actions.carry_out(decision, self.s, pin_rounds=self.pin_rounds))

    def _run_steps(self, steps: list[Step]) -> None:
        self._steps = deque(steps)
        self._next_step()

    def _next_step(self) -> None:
        while self._steps:
            step = self._steps.popleft()
            if step.app == "answer" and self.answered:
                continue
            if self.hungup:
                break
            self.state = RUNNING
            if step.app in SETTERS and self._steps:
                self._send(sendmsg(step.app, step.arg, event_uuid=f"tel400-{_prefix}-{next(_event_uuids)}",
                                   uuid=self.channel), "setter")
                continue
            self._running, self._replied = step, False
            if step.app == HANGUP:
                self._running_uuid = None
                self._send(hangup(step.arg, uuid=self.channel), "hangup")
            else:
                self._running_uuid = f"tel400-{_prefix}-{next(_event_uuids)}"
                self._send(sendmsg(step.app, step.arg, event_uuid=self._running_uuid, uuid=self.channel),
                           self._running_uuid)
            return
        self._running = None
        self._wait_for_end()

    # RUNNING
    def _step_reply(self, data) -> None:
        what, frame = data
        if what == "setter":
            if not frame.ok:  # refused: the channel is gone; the step sent with it is refused too
                _log.debug("esl_call_ended_early", uuid=self.uuid, why=f"refused: {frame.reply_text}")
            return
        if self._running is None or self._replied or what != (self._running_uuid or "hangup"):
            self.ignored += 1  # the reply of a step given up on (replies come in order: it is not ours)
            return
        self._replied = True
        step = self._running
        if step.app == HANGUP:
            self._running = None
            self._wait_for_end()
        elif not frame.ok:  # refused: the channel is gone (FreeSWITCH: -ERR no channel)
            _log.debug("esl_call_ended_early", uuid=self.uuid, why=f"{step.app} refused: {frame.reply_text}")
            self._running = None
            self._wait_for_end()
        else:
            deadline = self.call_deadline
            if step.app not in AS_LONG_AS_THE_CALL:
                deadline = min(deadline, self.clock() + self.s.app_timeout_s)
            self._app_deadline = deadline  # one bound for the whole wait: events in between do not extend it

    def _step_complete(self, event) -> None:
        if self._running_uuid is None or event.get("Application-UUID") != self._running_uuid:
            self.ignored += 1  # another application's end (the dialplan's own, or one we gave up on)
            return
        step = self._running
        self._app_deadline = None
        self._running = self._running_uuid = None
        if step.app == "answer":
            self.answered = True
        elif step.app == "play_and_get_digits":
            self.pin_rounds += 1
            self._route(event.get(f"variable_{actions.PIN_VARIABLE}") or "")
            return
        elif step.app == "bridge":
            disposition = event.get("variable_originate_disposition") or event.get("Application-Response")
            if self.hungup or self.bridged_at is not None or disposition == "SUCCESS":
                self._wait_for_end()  # answered and over (hangup_after_bridge), or the caller gave up
                return
            _log.info("esl_bridge_failed", uuid=self.uuid, disposition=disposition)
            self._run_steps(actions.fallback(self.s))
            return
        self._next_step()

    def _hung_up_while_running(self, event) -> None:
        if self._running is not None and self._running.app == HANGUP and not self._replied:
            return  # our hangup's reply is still to come: FIFO order, then the end
        self._app_deadline = None
        self._running = self._running_uuid = None
        self._wait_for_end()

    def _hung_up_while_routing(self, event) -> None:
        pass  # the decision, when it comes, sees self.hungup

    # ENDING
    def _wait_for_end(self) -> None:
        """Every path gets here with the channel hung up or asked to: its end is waited for a while."""
        self._app_deadline = None
        self.state = ENDING
        if self.hangup_event is not None:
            self._finish()
        else:
            self._end_deadline = self.clock() + self.s.reply_timeout_s

    def _ended_while_ending(self, _) -> None:
        if self.hangup_event is not None:
            self._finish()

    def _end_not_seen(self, _) -> None:
        self._finish()

    def _finish(self) -> None:
        """Report the end, then say goodbye (``exit``: FreeSWITCH replies +OK bye and closes).

        Inbound, the connection is every call's: the session is simply over.
        """
        self._end_deadline = None
        self._report_end()
        if self.channel is not None:
            self._closed("close")
            return
        self.state = CLOSING
        self._send(_EXIT, "exit")

    # CLOSING
    def _bye(self, data) -> None:
        if data[0] != "exit":
            self.ignored += 1  # the reply of a command sent before the end
            return
        self._closed("close")

    # any state
    def _late(self, why: str) -> None:
        if why == "silent":  # a command got no reply: the peer is not listening
            self._abandon()
        elif why == "application":
            self._run_steps([Step(HANGUP, actions.FAILURE_CAUSE)])
        else:  # no CHANNEL_HANGUP_COMPLETE in time
            self._finish()

    def _late_while_closing(self, why: str) -> None:
        self._closed("close")  # no "+OK bye": close anyway (the shell aborts a socket that does not drain)

    def _abandon(self) -> None:
        """The peer does not answer: write a hangup and ``exit`` without waiting, report, close.

        A peer that answers nothing will not play a notice either; closing
        the socket right after is what is left (FreeSWITCH gets the hangup
        if it reads at all).
        """
        if not self.hungup:
            self._out.append(hangup(actions.FAILURE_CAUSE, uuid=self.channel))
        if self.channel is None:  # inbound, the connection is every call's: it stays
            self._out.append(_EXIT)
        self._report_end()
        self._closed("close")

    def _disconnected(self, _) -> None:
        _log.debug("esl_call_ended_early", uuid=self.uuid, why="FreeSWITCH disconnected")
        self._report_end()
        self._closed("close")

    def _lost(self, _) -> None:
        self._report_end()
        self._closed(None)

    def _closed(self, how: str | None) -> None:
        self.state = CLOSED
        self._awaiting.clear()
        self._app_deadline = self._end_deadline = None
        self._steps.clear()
        self._request = None
        if self.close is None:
            self.close = how or "close"

    # -- helpers -----------------------------------------------------------------------------

    def _send(self, data: bytes, what: str) -> None:
        self._out.append(data)
        self._awaiting.append((what, self.clock()))

    def _report_end(self) -> None:
        """Give out the call's end once: from CHANNEL_HANGUP_COMPLETE, or, when that never came, a release.

        Without the end event the talk time is the time since CHANNEL_BRIDGE
        (none if there was none), logged as unconfirmed by the shell: the
        call does not stay in the router's registry until it expires.
        """
        if self._ended or not self.uuid:
            return
        self._ended = True
        event = self.hangup_event
        if event is not None:
            billsec = event.get("variable_billsec") or "0"
            # digits only, and few enough for int() (a longer one is no talk time tel400 accepts anyway)
            seconds = int(billsec) if billsec.isascii() and billsec.isdigit() and len(billsec) <= 18 else 0
            answered = event.get("variable_bridge_channel") or ""
            target = next((t for t in self.targets if answered.endswith(t)), None)
        else:
            seconds = 0 if self.bridged_at is None else math.ceil(self.clock() - self.bridged_at)
            target = None
        self._end = CallEnd(self.uuid, seconds, target, event is not None)


S = Session
_LIVE = (CONNECTING, SUBSCRIBING, ROUTING, RUNNING, ENDING, CLOSING)
#: (state, what happened) → handler.  Missing pairs are ignored (and counted).
TRANSITIONS: dict[tuple[str, str], Callable[[Session, object], None]] = {
    (CONNECTING, REPLY): S._connect_reply,
    (SUBSCRIBING, REPLY): S._subscribe_reply,
    (RUNNING, REPLY): S._step_reply,
    (RUNNING, EXECUTE_COMPLETE): S._step_complete,
    (RUNNING, HANGUP_COMPLETE): S._hung_up_while_running,
    (ROUTING, HANGUP_COMPLETE): S._hung_up_while_routing,
    (ROUTING, DECISION): S._decision,
    (ENDING, HANGUP_COMPLETE): S._ended_while_ending,
    (ENDING, LINGER): S._ended_while_ending,
    (CLOSING, REPLY): S._bye,
    (CLOSING, LATE): S._late_while_closing,
    **{(state, LATE): S._late for state in _LIVE if state != CLOSING},
    **{(state, DISCONNECT): S._disconnected for state in _LIVE},
    **{(state, LOST): S._lost for state in _LIVE},
}
del S
#: TRANSITIONS by state, for :meth:`Session._on`
_BY_STATE: dict[str, dict[str, Callable[[Session, object], None]]] = {s: {} for s in _LIVE + (CLOSED,)}
for (_state, _what), _handler in TRANSITIONS.items():
    _BY_STATE[_state][_what] = _handler
