"""What a shell does for one :class:`~tel400_freeswitch.session.Session`, whatever carries its bytes.

The outbound server (:mod:`tel400_freeswitch.server`: one connection per
call) and the inbound client (:mod:`tel400_freeswitch.inbound`: one
connection per FreeSWITCH, carrying all its calls) differ only in how a
session's commands reach FreeSWITCH and how a finished call is let go.
Everything else — answering route requests (at once, or a PIN on the PIN
threads), charging the call's end, arming the session's timer, never
leaving a call parked when tel400 fails — is here, once.
"""

from __future__ import annotations

import asyncio

import structlog

from .session import CLOSED, Session

_log = structlog.get_logger("tel400.esl")


class CallDriver:
    """Carries out what a session asks for; subclasses define :meth:`_write` and :meth:`_close`.

    No task, queue or future per call: the session's timer is one
    ``loop.call_at`` handle, re-armed only for an earlier deadline.

    ``offload``: the router waits on I/O (:attr:`tel400.Router.waits_on_io`:
    Redis counters, a shared call registry), so its decisions and the
    call's end run in the loop's thread pool: one slow round trip then
    holds this call only, not every call the loop serves.
    """

    def __init__(self, router, pin_threads, loop: asyncio.AbstractEventLoop, session: Session, *,
                 offload: bool = False) -> None:
        self.router = router
        self.pin_threads = pin_threads
        self.loop = loop
        self.session = session
        self.offload = offload
        self._charging = False  # an offloaded charge in flight: what follows the end waits for it
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    @property
    def uuid(self) -> str | None:
        return self.session.uuid

    # -- what subclasses say ------------------------------------------------------------------

    def _write(self) -> None:
        """Send the session's pending commands."""
        raise NotImplementedError

    def _close(self) -> None:
        """The session is over (:attr:`Session.close` says how): let the call go."""
        raise NotImplementedError

    # -- the work -----------------------------------------------------------------------------

    def pump(self) -> None:
        """Carry out what the session asks for: decisions, writes, the end, the timer, the close.

        Runs after every batch of frames: it peeks at the session's pending
        request, end and output before taking them, the cheap test first.
        """
        if self._charging:
            return  # _charged pumps again
        session = self.session
        request = session._request
        while request is not None:
            session._request = None
            if request.pin is None and not self.offload:
                try:
                    decision = self.router.route(request.dialed, request.caller, None, "voice", None, request.uuid)
                except Exception as exc:
                    session.route_failed(exc)
                else:
                    session.decided(decision)
            else:
                # a hashed PIN may cost a key derivation (on the PIN threads, bounded), a backend a
                # round trip: neither on the loop that serves every call
                future = self.loop.run_in_executor(None if request.pin is None else self.pin_threads,
                                                   self.router.route, request.dialed, request.caller, None,
                                                   "voice", request.pin, request.uuid)
                future.add_done_callback(self._decided)
            request = session._request
        if session._end is not None:
            end = session.take_end()
            if self.offload:  # charged before anything that follows the end, as inline
                self._charging = True
                self.loop.run_in_executor(None, self._report, end).add_done_callback(self._charged)
                return
            self._report(end)
        if session._out:
            self._write()
        if session.close is not None:
            self.cancel_timer()
            self._close()
            return
        deadline = session.deadline
        # lazy timer: re-armed only for an earlier deadline; an early firing just re-arms
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._timer_fired)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    def fail(self, exc: Exception) -> None:
        """Something inside tel400 broke while handling this call: the fallback notice, never a parked call."""
        try:
            self.session.failed(exc)
        except Exception as again:
            _log.error("esl_fallback_failed", uuid=self.session.uuid, error=str(again))
            self.session.connection_lost()

    def _timer_fired(self) -> None:
        self._timer = self._timer_at = None
        try:
            self.session.deadline_passed()
        except Exception as exc:
            self.fail(exc)
        self.pump()

    def _decided(self, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        if self.session.state == CLOSED:
            # The call went (its connection lost, a shutdown) while it was decided off the loop: its end
            # was reported before the router knew the call.  A decision that admitted it is let go now,
            # as that end would have: else it stays in progress, its place held, until the maximum age.
            if future.exception() is None and future.result().connects:
                self._release(self.session.uuid)
            return
        try:
            error = future.exception()
            if error is not None:
                self.session.route_failed(error)
            else:
                self.session.decided(future.result())
        except Exception as exc:
            self.fail(exc)
        self.pump()

    def _release(self, uuid: str) -> None:
        def release() -> None:
            try:
                self.router.call_ended(uuid, 0)
            except Exception as exc:
                _log.error("esl_call_end_failed", uuid=uuid, error=str(exc))

        if self.offload:
            self.loop.run_in_executor(None, release)
        else:
            release()

    def _charged(self, _future: asyncio.Future) -> None:
        self._charging = False
        self.pump()

    def _report(self, end) -> None:
        """Charge the call (or release it, when its end never came)."""
        try:
            # a call longer than the router keeps calls (--max-call above it) is
            # charged as the longest call, not refused and lost
            seconds = min(end.seconds, self.router.longest_call_s)
            charge = self.router.call_ended(end.uuid, seconds, end.target)
        except Exception as exc:
            _log.error("esl_call_end_failed", uuid=end.uuid, error=str(exc))
            return
        if not end.confirmed and charge is not None:
            _log.warning("esl_call_end_unconfirmed", uuid=end.uuid, charged_s=seconds,
                         why="no CHANNEL_HANGUP_COMPLETE: FreeSWITCH went away or stopped answering")
