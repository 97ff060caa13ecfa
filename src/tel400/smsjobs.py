"""Group sends: the gateway protocol and the runner that sends jobs' messages.

:class:`JobRunner` reads the jobs of a :class:`tel400.smsstore.SmsStore`
and hands their messages to an :class:`SmsGateway` (Kannel's ``sendsms``
in production, :class:`tel400.testing.FakeSmsGateway` in tests), paced per
job and per number, inside each job's window of the day, skipping
opted-out recipients and those the number's caps refuse.

Exactly once, across kill -9: before a message goes to the gateway its
recipient is marked ``sending`` and committed; after the gateway took it,
the recipient is marked ``sent`` and the message recorded, in one
transaction.  A runner that starts and finds recipients left ``sending``
does not know whether the gateway got them: it waits up to
``indoubt_wait_s`` for their delivery report (the DLR endpoint calls
:meth:`SmsStore.set_delivery`, which settles them as sent), then resubmits
the rest under the same message id.  So a recipient gets exactly one
message when the gateway's report of a message it took reaches the store
within ``indoubt_wait_s`` of the restart; otherwise the message is sent
again — a duplicate is possible, a skip is not.

One runner per store: a runner takes the store's lease
(:meth:`SmsStore.take_lease`) before it sends anything and renews it every
``lease_renew_s``; a second runner waits until the lease is free or
expired.  A killed runner's lease expires ``lease_ttl_s`` (10 s) after its
last renewal, so a runner restarted after kill -9 starts sending at most
that long after it starts (a clean stop releases the lease at once).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import secrets
import time
from collections.abc import Callable
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from .exceptions import BackendError
from .smsstore import Job, Recipient, SmsStore
from .smstext import OutgoingSms
from .timespec import TimeSlots, parse_time

_log = structlog.get_logger("tel400.smsjobs")

#: The zone of a number whose zone is not given (``zone_of``).
DEFAULT_ZONE = ZoneInfo("Asia/Shanghai")
#: Prefix of the sender address of a number's messages (10657 + the 400 number).
SENDER_PREFIX = "10657"


class GatewayError(BackendError):
    """The SMS gateway refused a message or could not be reached (it does not have it: a retry is safe)."""


class GatewayInDoubt(GatewayError):
    """The request may have reached the gateway but its answer did not come back (a read timeout, a
    connection dropped after the request was written).  The gateway may have the message: resending
    at once could deliver it twice, so the runner waits for its delivery report first.  A subclass of
    GatewayError so older ``except GatewayError`` still catch it; the runner checks it first."""


class SmsGateway(Protocol):
    """Where messages leave: ``submit`` returns once the gateway accepted ``sms``."""

    async def submit(self, sms: OutgoingSms) -> None:
        """Hand over one message.  Raises :class:`GatewayError` when refused or unreachable."""


class _Pace:
    """A strict spacing of sends: at most one every ``1 / rate`` seconds (no bursts after idling)."""

    __slots__ = ("interval", "next_at")

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = float("-inf")


def _reserve(now: float, *paces: _Pace) -> float:
    """Book the next slot free in every pace; returns how long to wait for it.

    The slowest pace wins; a number's pace is shared by all its jobs, so
    their messages together stay under the number's ceiling.  O(paces).
    """
    start = max(now, *(p.next_at for p in paces))
    for p in paces:
        p.next_at = start + p.interval
    return start - now


class JobRunner:
    """Sends the messages of every running job of a store (see the module docstring for the guarantee).

    Args:
        store: the SMS store holding the jobs.
        gateway: where messages go (:class:`SmsGateway`).
        admit: ``admit(number, recipient, parts, at) -> SmsAdmission``
            (``Router.admit_sms``): a message it does not admit is skipped
            (``skipped_cap``) and the job goes on with the next recipient;
            ``reason == "backend_error"`` (or an exception) retries the same
            recipient after ``retry_base_s``.  None admits everything.
        zone_of: ``zone_of(number) -> ZoneInfo`` for jobs' windows (default Asia/Shanghai).
        per_number_rate: messages per second of one number, all its jobs together.
        indoubt_wait_s: how long a recipient left ``sending`` waits for its
            delivery report before it is resubmitted.
        max_attempts: submissions of one message before it is ``failed``.
        retry_base_s: the first retry's delay after a GatewayError (doubling each time).
        submit_timeout_s: a submission taking longer is in doubt (as after a restart).
        poll_s: how often the store is read for new, resumed or paused jobs.
        max_in_flight: messages handed to the gateway and not yet answered, all jobs together.
        wall: the wall clock (POSIX seconds) for windows and records; tests pass their own.
        lease_ttl_s: how long the store's runner lease lasts without renewal (a killed
            runner's successor waits at most this long).
        lease_renew_s: how often the lease is renewed (well under ``lease_ttl_s``).
    """

    def __init__(self, store: SmsStore, gateway: SmsGateway, *, admit=None,
                 zone_of: Callable[[str], ZoneInfo] | None = None, per_number_rate: float = 10.0,
                 indoubt_wait_s: float = 30.0, max_attempts: int = 5, retry_base_s: float = 1.0,
                 submit_timeout_s: float = 30.0, poll_s: float = 1.0, max_in_flight: int = 100,
                 wall: Callable[[], float] = time.time, lease_ttl_s: float = 10.0,
                 lease_renew_s: float = 3.0) -> None:
        if not per_number_rate > 0:
            raise ValueError("per_number_rate must be above 0")
        if not 0 < lease_renew_s < lease_ttl_s:
            raise ValueError("lease_renew_s must be above 0 and below lease_ttl_s")
        if max_attempts < 1 or max_in_flight < 1:
            raise ValueError("max_attempts and max_in_flight must be at least 1")
        self.store = store
        self.gateway = gateway
        self.admit = admit
        self.zone_of = zone_of or (lambda number: DEFAULT_ZONE)
        self.per_number_rate = per_number_rate
        self.indoubt_wait_s = indoubt_wait_s
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.submit_timeout_s = submit_timeout_s
        self.poll_s = poll_s
        self.max_in_flight = max_in_flight
        self.wall = wall
        self.lease_ttl_s = lease_ttl_s
        self.lease_renew_s = lease_renew_s
        self.owner = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._number_paces: dict[str, _Pace] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._sends: set[asyncio.Task] = set()
        self._in_flight: dict[str, int] = {}  # job id -> messages handed over and not yet settled
        self._doubt: dict[str, dict[int, float]] = {}  # job id -> {index: resubmit after (loop time)}
        self._stop = asyncio.Event()  # binds to the loop of run(); stop() before run() makes run() return at once
        self._slots: asyncio.Semaphore | None = None

    def stop(self) -> None:
        """Make :meth:`run` return: no new message starts; those with the gateway are finished.

        A runner runs once: after ``stop`` make a new one.
        """
        self._stop.set()

    async def run(self) -> None:
        """Send until :meth:`stop`: settle what a previous runner left in doubt, then follow the store's jobs."""
        loop = asyncio.get_running_loop()
        if not await self._wait_for_lease():
            return
        try:
            await self._run_leased(loop)
        finally:
            try:
                self.store.release_lease(self.owner)
            except BackendError as exc:  # it expires by itself
                _log.warning("sms_jobs_lease_release_failed", error=str(exc))

    async def _wait_for_lease(self) -> bool:
        """Wait until this runner holds the store's lease; False when stopped first."""
        waited = False
        while not self._stop.is_set():
            try:
                if self.store.take_lease(self.owner, self.lease_ttl_s):
                    return True
            except BackendError as exc:
                _log.warning("sms_jobs_store_error", error=str(exc))
            if not waited:
                _log.info("sms_jobs_waiting_for_lease", ttl_s=self.lease_ttl_s)
                waited = True
            try:
                await asyncio.wait_for(self._stop.wait(), min(self.poll_s, self.lease_renew_s))
            except TimeoutError:
                pass
        return False

    async def _run_leased(self, loop) -> None:
        self._slots = asyncio.Semaphore(self.max_in_flight)
        renewed = loop.time()
        deadline = loop.time() + self.indoubt_wait_s
        for r in self.store.in_doubt():
            self._doubt.setdefault(r.job_id, {})[r.index] = deadline
        if self._doubt:
            _log.info("sms_jobs_in_doubt", recipients=sum(map(len, self._doubt.values())), wait_s=self.indoubt_wait_s)
        try:
            while not self._stop.is_set():
                if loop.time() - renewed >= self.lease_renew_s:
                    try:
                        held = self.store.take_lease(self.owner, self.lease_ttl_s)
                    except BackendError as exc:  # the store is busy: renew at the next poll
                        _log.warning("sms_jobs_store_error", error=str(exc))
                    else:
                        renewed = loop.time()
                        if not held:  # stalled past the expiry and another runner took over: it sends now
                            _log.error("sms_jobs_lease_lost", owner=self.owner)
                            return
                try:
                    for job in self.store.active_jobs():
                        task = self._tasks.get(job.job_id)
                        if task is None or task.done():
                            self._tasks[job.job_id] = asyncio.create_task(self._run_job(job))
                except BackendError as exc:  # the store is busy or gone for a moment: try at the next poll
                    _log.warning("sms_jobs_store_error", error=str(exc))
                try:
                    await asyncio.wait_for(self._stop.wait(), min(self.poll_s, self.lease_renew_s))
                except TimeoutError:
                    pass
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
            await asyncio.gather(*self._sends, return_exceptions=True)

    # --- one job ------------------------------------------------------------

    async def _run_job(self, job: Job) -> None:
        try:
            await self._job_loop(job)
        except BackendError as exc:  # the poll starts the job again
            _log.warning("sms_job_store_error", job_id=job.job_id, error=str(exc))
        except Exception:  # a bug must not end the other jobs; the poll starts this one again
            _log.exception("sms_job_crashed", job_id=job.job_id)

    def _window(self, job: Job) -> TimeSlots | None:
        if job.not_before is None and job.not_after is None:
            return None
        return parse_time(f"{job.not_before or '00:00'}-{job.not_after or '23:59'}")

    def _until_open(self, job: Job, window: TimeSlots | None) -> float:
        """0 inside the job's window; else the seconds to the next minute (when the window is looked at again)."""
        if window is None:
            return 0.0
        local = _dt.datetime.fromtimestamp(self.wall(), self.zone_of(job.number))
        if window.matches(local.hour * 60 + local.minute):
            return 0.0
        return 60.0 - local.second - local.microsecond / 1e6

    def _due_in_doubt(self, job_id: str) -> tuple[Recipient | None, bool]:
        """A recipient in doubt whose wait is over (to resubmit), and whether others still wait."""
        waiting = self._doubt.get(job_id)
        if not waiting:
            return None, False
        now = asyncio.get_running_loop().time()
        for index, deadline in list(waiting.items()):
            r = self.store.recipient(job_id, index)
            if r is None or r.state != "sending":  # settled by its delivery report (or the job is gone)
                del waiting[index]
            elif now >= deadline:
                del waiting[index]
                return r, bool(waiting)
        return None, bool(waiting)

    async def _job_loop(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        window = self._window(job)
        job_pace = _Pace(job.rate)
        number_pace = self._number_paces.setdefault(job.number, _Pace(self.per_number_rate))
        started = False
        while True:
            if self.store.job_state(job.job_id) not in ("scheduled", "running"):
                return  # paused or cancelled: before the next message; resume starts a new loop
            wait = self._until_open(job, window)
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            resend, doubt_waits = self._due_in_doubt(job.job_id)
            pending = None if resend else self.store.next_pending(job.job_id)
            if resend is None and pending is None:
                if doubt_waits or self._in_flight.get(job.job_id):
                    await asyncio.sleep(min(0.2, self.poll_s))  # their reports or answers settle them
                    continue
                if self.store.finish_if_done(job.job_id):
                    _log.info("sms_job_done", job_id=job.job_id, number=job.number)
                return
            await asyncio.sleep(_reserve(loop.time(), job_pace, number_pace))
            # Paused, cancelled or out of the window while waiting for the slot: not now.
            active = self.store.job_state(job.job_id) in ("scheduled", "running")
            if not active or self._until_open(job, window) > 0:
                if resend is not None:  # resubmitted when the job goes on
                    self._doubt.setdefault(job.job_id, {})[resend.index] = loop.time()
                if not active:
                    return
                continue
            recipient = resend or await self._claim(job, pending)
            if recipient is None:
                continue
            if not started:
                self.store.mark_running(job.job_id)
                started = True
            await self._slots.acquire()
            self._in_flight[job.job_id] = self._in_flight.get(job.job_id, 0) + 1
            task = asyncio.create_task(self._send(job, recipient))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _claim(self, job: Job, r: Recipient | None) -> Recipient | None:
        """From ``r`` (the job's first pending recipient, read before the pace's wait) on, the next one to
        send to, marked ``sending``; skipped ones are settled on the way.  Only this job's loop moves its
        pending recipients, so ``r`` is still pending."""
        while r is not None:
            if self.store.is_opted_out(job.number, r.phone):
                self.store.set_recipient(job.job_id, r.index, "skipped_opted_out", expect=("pending",))
                r = self.store.next_pending(job.job_id)
                continue
            if self.admit is not None:
                try:
                    admission = self.admit(job.number, r.phone, r.parts, self.wall())
                    admitted, reason = admission.admitted, admission.reason
                except Exception as exc:  # a counter backend that died: the same recipient, later
                    _log.warning("sms_job_admit_error", job_id=job.job_id, error=repr(exc))
                    admitted, reason = False, "backend_error"
                if not admitted and reason == "backend_error":
                    await asyncio.sleep(self.retry_base_s)
                    return None
                if not admitted:
                    self.store.set_recipient(job.job_id, r.index, "skipped_cap", expect=("pending",))
                    r = self.store.next_pending(job.job_id)
                    continue
            if self.store.set_recipient(job.job_id, r.index, "sending", expect=("pending",)):
                return r
            r = self.store.next_pending(job.job_id)
        return None

    async def _send(self, job: Job, r: Recipient) -> None:
        msg = OutgoingSms(message_id=r.message_id, number=job.number, sender=SENDER_PREFIX + job.number,
                          to=r.phone, text=r.text, parts=r.parts, kind="job")
        attempts = r.attempts
        ever_in_doubt = False
        try:
            while True:
                attempts += 1
                try:
                    async with asyncio.timeout(self.submit_timeout_s):
                        await self.gateway.submit(msg)
                except GatewayInDoubt as exc:
                    doubted = await self._in_doubt(msg, r, exc, attempts)
                    if doubted:
                        return
                    ever_in_doubt = True
                    continue
                except GatewayError as exc:  # refused or never reached: the gateway does not have it
                    if not self._still_sending(r):  # a report settled it meanwhile (an earlier in-doubt try)
                        return
                    if attempts >= self.max_attempts:
                        if ever_in_doubt:  # an earlier try may have reached the phone: never call it failed
                            _log.warning("sms_job_message_left_in_doubt", message_id=msg.message_id)
                            return
                        _log.warning("sms_job_message_failed", message_id=msg.message_id, error=str(exc))
                        self.store.mark_failed(msg, r, attempts=attempts, at=self.wall())
                        return
                    await asyncio.sleep(self.retry_base_s * 2 ** (attempts - 1))
                    if not self._still_sending(r):
                        return
                    continue
                except Exception as exc:  # noqa: BLE001 - a timeout, or a gateway that broke mid-way
                    if await self._in_doubt(msg, r, exc, attempts):
                        return
                    ever_in_doubt = True
                    continue
                self.store.mark_sent(msg, r, attempts=attempts, at=self.wall())
                return
        except BackendError as exc:  # left "sending": in doubt, like after a restart
            _log.warning("sms_job_store_error", message_id=msg.message_id, error=str(exc))
            loop = asyncio.get_running_loop()
            self._doubt.setdefault(job.job_id, {})[r.index] = loop.time() + self.indoubt_wait_s
        finally:
            self._in_flight[job.job_id] -= 1
            self._slots.release()

    def _still_sending(self, r: Recipient) -> bool:
        now = self.store.recipient(r.job_id, r.index)
        return now is not None and now.state == "sending"

    async def _in_doubt(self, msg: OutgoingSms, r: Recipient, exc: BaseException, attempts: int) -> bool:
        """The gateway may have the message: wait for its report; True when this send is over.

        Over means settled by a report, or out of attempts: then the
        recipient stays ``sending`` (never ``failed``: the phone may have it)
        until its report arrives or the job is cancelled.
        """
        _log.warning("sms_job_message_in_doubt", message_id=msg.message_id, error=repr(exc))
        if await self._settled_by_report(r):
            return True
        if attempts >= self.max_attempts:
            _log.warning("sms_job_message_left_in_doubt", message_id=msg.message_id)
            return True
        return False

    async def _settled_by_report(self, r: Recipient) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.indoubt_wait_s
        while True:
            now = self.store.recipient(r.job_id, r.index)
            if now is None or now.state != "sending":
                return True
            if self._stop.is_set():  # left "sending": the next runner settles it like any in doubt
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(0.2, self.indoubt_wait_s))
