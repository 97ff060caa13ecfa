"""A pre-fork supervisor: one listening socket, N worker processes serving it.

``tel400-http --workers N`` and ``tel400-esl --workers N`` run through
:func:`supervise`:

1. the parent binds the listening sockets once (:func:`listening_sockets`:
   a busy port is one error, port 0 one port), one per worker on the same
   port with ``SO_REUSEPORT``;
2. :func:`run_once` does the first-start work (data directory, seeded store,
   passwords printed) in a short-lived child, so that it happens once and
   the parent holds no thread, database connection or Redis client that a
   fork would copy half-way;
3. the parent forks N workers; each builds its own router and event loop
   after the fork and serves its inherited socket.

Why a socket per worker rather than one shared by all: with one socket,
every idle worker wakes for a new connection and the first takes all that
are waiting (a burst), so a few long-lived connections (keep-alive HTTP
clients, a switch's pool) can all land on one or two workers.  With
``SO_REUSEPORT`` the kernel spreads connections over the sockets by a hash
of their addresses.  The parent keeps every socket open, so connections the
kernel gave a dead worker's socket wait in its backlog for the restarted
worker instead of being refused.

The parent then only supervises: a worker that dies is restarted after a
back-off (:attr:`Policy.backoff_s`, doubling per death of that worker up to
:attr:`Policy.backoff_max_s`, reset once it has lived
:attr:`Policy.crash_window_s`); :attr:`Policy.crash_limit` deaths within
:attr:`Policy.crash_window_s` are a crash loop: the others are stopped and
the parent exits 1.  SIGTERM or SIGINT is passed on to every worker as
SIGTERM (each finishes what it is doing within its grace); the parent exits
0 once all have exited, or kills those still running after
:attr:`Policy.stop_timeout_s` and exits 1.  Each worker asks the kernel for
SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), so a parent killed with
SIGKILL leaves no orphan serving on.

The parent waits for signals with ``sigtimedwait`` (SIGCHLD, SIGTERM and
SIGINT blocked): no handler runs between two system calls, so no signal is
lost between a check and a wait.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

#: The signals the parent waits for (blocked in the parent, unblocked in each child).
_WATCHED = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

#: This process's worker id (0 … N-1) under :func:`supervise`; ``None`` elsewhere.
_worker_id: int | None = None


def worker_id() -> int | None:
    """The id (0 … N-1) of the worker this process is, or ``None`` when it is no supervised worker."""
    return _worker_id


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the supervisor restarts workers and when it gives up.

    Attributes:
        crash_limit, crash_window_s: this many worker deaths (of any
            workers) within this many seconds are a crash loop: the
            supervisor stops the others and exits 1.
        backoff_s: the wait before restarting a worker after its first
            death; doubled at each further death of the same worker.
        backoff_max_s: the longest wait between restarts.
        stop_timeout_s: after SIGTERM, how long the workers have to exit
            before they are killed (set it above the servers' grace).
    """

    crash_limit: int = 5
    crash_window_s: float = 60.0
    backoff_s: float = 0.1
    backoff_max_s: float = 5.0
    stop_timeout_s: float = 40.0

    def __post_init__(self) -> None:
        if self.crash_limit < 1 or not 0 < self.crash_window_s < float("inf"):
            raise ValueError("crash limit: expected at least 1 death within a positive number of seconds")
        if not 0 <= self.backoff_s <= self.backoff_max_s < float("inf") or not self.stop_timeout_s > 0:
            raise ValueError("worker back-off and stop timeout: expected 0 <= backoff <= max < inf, "
                             "timeout > 0")

    @classmethod
    def parse_crash_limit(cls, text: str, **others) -> Policy:
        """``"DEATHS/SECONDS"`` (``--crash-limit``) into a policy (``ValueError`` naming the option)."""
        try:
            deaths, seconds = text.split("/")
            return cls(crash_limit=int(deaths), crash_window_s=float(seconds), **others)
        except ValueError as exc:
            raise ValueError(f"--crash-limit: expected DEATHS/SECONDS (e.g. 5/60), got {text!r}: {exc}") \
                from None

    def backoff(self, deaths: int) -> float:
        """The wait before restarting a worker that died ``deaths`` times in a row (1, 2, …)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** min(deaths - 1, 30))


def listening_sockets(host: str, port: int, n: int, backlog: int) -> list:
    """``n`` sockets listening on one port (``SO_REUSEPORT``): the first binds ``port`` (0: any free one).

    Raises:
        OSError: the address cannot be bound (the port is taken, say).
    """
    from .listener import listening_socket

    socks = [listening_socket(host, port, backlog, reuse_port=True)]
    try:
        port = socks[0].getsockname()[1]
        for _ in range(n - 1):
            socks.append(listening_socket(host, port, backlog, reuse_port=True))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def own_socket(socks: list, worker: int):
    """In worker ``worker``: close the other workers' sockets (inherited) and return its own.

    Else a socket would stay open in every worker after its own worker
    stopped, and connections the kernel gives it would wait there in vain.
    """
    for i, sock in enumerate(socks):
        if i != worker:
            sock.close()
    return socks[worker]


def _say(name: str, text: str) -> None:
    # one write per line: the workers' log lines share this stderr (tel400.loglines says why)
    sys.stderr.write(f"{name}: {text}\n")
    sys.stderr.flush()


def _fork(child: Callable[[], int]) -> int:
    """Fork; the child unblocks signals, runs ``child()`` and exits with its code (never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for sig in _WATCHED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED)
        _die_with(parent)
        code = child()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    raise AssertionError("unreachable")


def _die_with(parent: int) -> None:
    """Get SIGTERM when the parent dies; exit now if it died before we asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's death goes unnoticed
        return
    if os.getppid() != parent:
        os._exit(1)


def run_once(name: str, work: Callable[[], int]) -> int:
    """Run ``work()`` in a child process and return its exit code.

    For first-start work whose objects (threads, connections) must not be
    inherited by the workers forked later.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    try:
        pid = _fork(work)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                return 1
        return os.waitstatus_to_exitcode(status)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED)


class _Slot:
    """One worker's place: its process, its deaths in a row, when it may start again."""

    __slots__ = ("wid", "pid", "started", "deaths", "due")

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.pid: int | None = None
        self.started = 0.0
        self.deaths = 0
        self.due = 0.0


def run(name: str, socks: list, first_start: Callable[[], int], serve: Callable[[int], int], *,
        policy: Policy = Policy()) -> int:
    """A server's ``--workers N``: ``first_start()`` once in a child, then one worker per socket of ``socks``
    (:func:`listening_sockets`) under :func:`supervise`; the exit code.

    The parent's copies of ``socks`` are closed when the workers are told to stop, and on every way out.
    """
    def close() -> None:
        for sock in socks:
            sock.close()

    try:
        code = run_once(name, first_start)
        if code:
            return code
        return supervise(len(socks), serve, name=name, policy=policy, on_stop=close)
    finally:
        close()


def supervise(n: int, serve: Callable[[int], int], *, name: str, policy: Policy = Policy(),
              on_stop: Callable[[], None] | None = None) -> int:
    """Run ``serve(worker_id)`` in ``n`` worker processes until a signal stops them; the exit code.

    ``serve`` runs in the child after the fork: it builds everything it
    needs there and returns its exit code when it has stopped.  ``on_stop``
    runs in the parent once, when the workers are told to stop (the
    parent's copies of the listening sockets are closed there, so that the
    sockets close with the workers' copies).

    Returns:
        0 when every worker exited after SIGTERM/SIGINT; 1 on a crash loop
        or when workers had to be killed at :attr:`Policy.stop_timeout_s`.
    """
    if n < 1:
        raise ValueError(f"workers: expected at least 1, got {n}")
    if threading.active_count() > 1:  # a thread's locks would be copied held into every worker
        _say(name, f"warning: forking with {threading.active_count() - 1} threads running")
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    slots = [_Slot(wid) for wid in range(n)]
    by_pid: dict[int, _Slot] = {}
    deaths: deque[float] = deque()
    stopping_since: float | None = None
    failed = False

    def start(slot: _Slot) -> None:
        def child() -> int:
            global _worker_id
            _worker_id = slot.wid
            return serve(slot.wid)

        slot.pid = _fork(child)
        slot.started = time.monotonic()
        by_pid[slot.pid] = slot

    def stop_all(sig: int = signal.SIGTERM) -> None:
        nonlocal on_stop
        if on_stop is not None:
            on_stop, done = None, on_stop
            done()
        for pid in by_pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for slot in slots:
        start(slot)
    _say(name, f"{n} workers started (pids {' '.join(str(s.pid) for s in slots)})")
    while True:
        now = time.monotonic()
        # reap every child that exited
        while by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                by_pid.clear()
                break
            if pid == 0:
                break
            slot = by_pid.pop(pid, None)
            if slot is None:
                continue
            slot.pid = None
            if stopping_since is not None:
                continue
            how = _how_it_ended(status)
            lived = now - slot.started
            slot.deaths = 1 if lived >= policy.crash_window_s else slot.deaths + 1
            slot.due = now + policy.backoff(slot.deaths)
            deaths.append(now)
            while deaths and deaths[0] < now - policy.crash_window_s:
                deaths.popleft()
            if len(deaths) >= policy.crash_limit:
                _say(name, f"worker {slot.wid} (pid {pid}) {how}; {len(deaths)} worker deaths within "
                           f"{policy.crash_window_s:g} s (--crash-limit {policy.crash_limit}/"
                           f"{policy.crash_window_s:g}): a crash loop, giving up")
                failed = True
                stopping_since = now
                stop_all()
            else:
                _say(name, f"worker {slot.wid} (pid {pid}) {how} after {lived:.1f} s; "
                           f"restarting it in {slot.due - now:.1f} s")
        if stopping_since is not None:
            if not by_pid:
                return 1 if failed else 0
            if now - stopping_since > policy.stop_timeout_s:
                _say(name, f"{len(by_pid)} workers still running {policy.stop_timeout_s:g} s after SIGTERM: "
                           "killing them")
                stop_all(signal.SIGKILL)
                failed = True
                stopping_since = now + 1e9  # killed: wait for them to be reaped, nothing else
                continue
            wait = 0.5
        else:
            for slot in slots:
                if slot.pid is None and slot.due <= now:
                    start(slot)
            pending = [slot.due - now for slot in slots if slot.pid is None]
            wait = max(0.0, min(pending, default=1.0))
        got = signal.sigtimedwait(_WATCHED, wait) if wait > 0 else None
        if got is not None and got.si_signo in (signal.SIGTERM, signal.SIGINT) and stopping_since is None:
            _say(name, f"{signal.Signals(got.si_signo).name}: stopping {len(by_pid)} workers")
            stopping_since = time.monotonic()
            # SIGTERM to each, whatever came: a second SIGINT would make uvicorn drop requests in flight
            stop_all()


def _how_it_ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


__all__ = ["Policy", "listening_sockets", "own_socket", "run_once", "supervise", "worker_id"]
