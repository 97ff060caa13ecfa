"""``tel400-http --workers N`` and ``tel400-esl --workers N``: the real commands, processes and signals.

Each test runs the console scripts as users do (PYTHONPATH inherited, so the
sources under test serve) and looks at the processes through /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import tel400
from tel400.testing import free_port
from tel400_freeswitch.peer import Call, FreeSwitchPeer

from .conftest import EXAMPLES

BIN = pathlib.Path(sys.executable).parent
NUMBER = "4001000001"
#: one number, bridged to one target; ``calls`` per day capped (the ESL cap test)
PLANS = {"numbers": [{"number": NUMBER, "rules": [{"name": "all", "targets": ["13901010001"]}],
                      "caps": [{"metric": "calls", "per": "day", "limit": 20}]}]}

#: the tests whose servers count in shm:// (atomic operations of the compiled extension)
needs_shm = pytest.mark.skipif(tel400.IMPLEMENTATION != "cython", reason="shm:// counters need the extension")


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (zombies left out: they serve nothing)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def until(condition, timeout_s: float = 20, every_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s: {what() if callable(what) else what}")


class Supervised:
    """A server run with ``--workers``: the parent process, what it printed, its workers."""

    def __init__(self, command: str, *args: str, cwd, banner_end: str) -> None:
        self.proc = subprocess.Popen([str(BIN / command), "--port", "0", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()
        until(lambda: any(banner_end in line for line in self.out + self.err) or self.proc.poll() is not None,
              what=f"{command} to print {banner_end!r}")
        text = "".join(self.out + self.err)
        match = re.search(r"127\.0\.0\.1:(\d+)", text)
        if not match or self.proc.poll() is not None:
            self.stop()
            raise AssertionError(f"{command} did not start: {''.join(self.out + self.err)}")
        self.port = int(match.group(1))

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self, n: int) -> set[int]:
        """The worker pids, once there are ``n``."""
        return until(lambda: (lambda c: c if len(c) == n else None)(children(self.proc.pid)),
                     what=f"{n} workers")

    def stderr(self) -> str:
        return "".join(self.err)

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if not stream.closed and not any(r.is_alive() for r in self._readers):
                stream.close()
        return code


@pytest.fixture
def servers():
    started: list[Supervised] = []

    def start(command: str, *args: str, cwd, banner_end: str) -> Supervised:
        started.append(Supervised(command, *args, cwd=cwd, banner_end=banner_end))
        return started[-1]

    yield start
    for server in started:
        server.stop()
        try:  # nothing of a test may outlive it
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def http(servers, tmp_path, *args: str, workers: int = 4) -> Supervised:
    return servers("tel400-http", "--workers", str(workers), "--counters", f"shm:///{tmp_path}/counters",
                   "--data", str(tmp_path / "data"), *args,
                   cwd=tmp_path, banner_end="  also:")


def esl(servers, tmp_path, plans: str, *args: str, workers: int = 4) -> Supervised:
    return servers("tel400-esl", "--workers", str(workers), "--counters", f"shm:///{tmp_path}/counters",
                   "--plans", plans, *args, cwd=tmp_path, banner_end="workers started")


def get(url: str, timeout_s: float = 10) -> tuple[int, dict, dict]:
    """A GET on a new connection (so that any worker may take it): status, headers, JSON."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return resp.status, dict(resp.headers), json.loads(resp.read())


def health(server: Supervised) -> dict:
    status, headers, body = get(server.url + "/healthz")
    assert status == 200 and headers["x-tel400-worker"] == str(body["worker"])
    return body


def seen_workers(server: Supervised, n: int, tries: int = 2000) -> dict[int, int]:
    """worker id → pid, from /healthz on new connections until ``n`` workers answered."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        body = health(server)
        seen[body["worker"]] = body["pid"]
        if len(seen) == n:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered in {tries} requests")


# -- tel400-http ---------------------------------------------------------------------------------


@needs_shm
def test_four_http_workers_serve_one_port_and_the_first_start_happens_once(servers, tmp_path):
    server = http(servers, tmp_path)
    pids = server.workers(4)
    assert set(seen_workers(server, 4).values()) == pids
    status, _, decision = get(server.url + "/v1/ping")
    assert status == 200 and decision == {"pong": True}
    assert server.stop() == 0
    out = "".join(server.out)
    # the banner, the operator's password and the example company's: printed once, by the first start
    assert out.count("listening on") == 1 and out.count("portal:  operator") == 1 and out.count("company 400") == 1
    assert "(cython, 4 workers), listening on" in out
    assert (tmp_path / "data" / "admin-token").exists()
    assert "4 workers started" in server.stderr()
    assert not any(alive(pid) for pid in pids)


@needs_shm
def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(servers, tmp_path):
    server = http(servers, tmp_path)
    before = server.workers(4)
    victim = seen_workers(server, 4)[2]
    os.kill(victim, signal.SIGKILL)
    # the others take the connections meanwhile: every request answers
    for _ in range(50):
        assert get(server.url + "/v1/ping")[0] == 200
    after = until(lambda: (lambda c: c if len(c) == 4 and victim not in c else None)(children(server.proc.pid)),
                  what="the killed worker replaced")
    assert len(after & before) == 3
    assert seen_workers(server, 4)[2] not in before  # worker 2 again, a new process
    assert not os.path.exists(f"/proc/{victim}")  # reaped: no zombie left
    assert f"worker 2 (pid {victim}) was killed by SIGKILL" in server.stderr()
    assert server.stop() == 0


@needs_shm
def test_a_plan_change_reaches_every_worker_within_a_second(servers, tmp_path):
    server = http(servers, tmp_path)
    server.workers(4)
    seen_workers(server, 4)
    token = (tmp_path / "data" / "admin-token").read_text().strip()
    numbers = {body["worker"]: body["numbers"] for body in (health(server) for _ in range(40))}
    plan = {"number": "4009999999", "rules": [{"name": "all", "targets": ["13901010001"]}]}
    req = urllib.request.Request(server.url + "/v1/numbers/4009999999", data=json.dumps(plan).encode(),
                                 method="PUT", headers={"Authorization": f"Bearer {token}",
                                                        "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)
    written = time.monotonic()
    before = max(numbers.values())
    updated: dict[int, float] = {}
    stale_late = []
    while len(updated) < 4 and time.monotonic() - written < 20:
        body = health(server)
        elapsed = time.monotonic() - written
        if body["numbers"] == before + 1:
            updated.setdefault(body["worker"], elapsed)
        elif elapsed > 1.0:
            stale_late.append((body["worker"], round(elapsed, 2)))
    assert sorted(updated) == [0, 1, 2, 3], updated
    # each worker's own watcher polls the shared store (every 0.5 s): none routes by the old plans past 1 s
    assert not stale_late, stale_late
    assert server.stop() == 0


@needs_shm
def test_sigterm_lets_requests_in_flight_finish_then_every_process_exits_0(servers, tmp_path):
    server = http(servers, tmp_path)
    pids = server.workers(4)
    seen_workers(server, 4)
    body = b'{"dialed": "4001100868", "caller": "13901012345"}'
    head = (b"POST /v1/route HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    conns = []
    for _ in range(12):  # requests in flight: heads sent, bodies not yet
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        conn.sendall(head + body[:5])
        conns.append(conn)
    time.sleep(0.5)  # the heads are read
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # every worker is shutting down
    answers = []
    for conn in conns:
        conn.sendall(body[5:])
        answer = b""
        while chunk := conn.recv(65536):  # the answer says "connection: close": read to the end
            answer += chunk
        answers.append(answer)
        conn.close()
    assert all(a.startswith(b"HTTP/1.1 200") and b'"action":"' in a for a in answers), answers
    assert server.stop() == 0
    assert not any(alive(pid) for pid in pids)
    assert "SIGTERM: stopping 4 workers" in server.stderr()


@needs_shm
def test_workers_exit_when_the_parent_is_killed(servers, tmp_path):
    server = http(servers, tmp_path)
    pids = server.workers(4)
    server.proc.kill()
    server.proc.wait(10)
    until(lambda: not any(alive(pid) for pid in pids), what="the workers to exit after their parent")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


@needs_shm
def test_a_crash_loop_makes_the_parent_give_up(servers, tmp_path):
    server = http(servers, tmp_path, "--crash-limit", "3/60", workers=2)
    killed = set()
    for _ in range(3):  # three deaths within the minute
        pid = sorted(server.workers(2) - killed)[0]
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        until(lambda: pid not in children(server.proc.pid), what="the worker reaped")
    assert server.proc.wait(30) == 1
    assert "3 worker deaths within 60 s (--crash-limit 3/60): a crash loop, giving up" in server.stderr()
    until(lambda: not children(server.proc.pid), what="the other worker stopped")


def test_one_worker_is_the_single_process_of_before(servers, tmp_path):
    server = servers("tel400-http", "--data", str(tmp_path / "data"), cwd=tmp_path, banner_end="  also:")
    assert get(server.url + "/healthz")[2] == {"status": "ok"}  # no worker id: nothing forked
    assert children(server.proc.pid) == set() and "workers started" not in server.stderr()
    assert server.stop() == 0


@pytest.mark.parametrize("command", ["tel400-http", "tel400-esl"])
def test_memory_counters_are_refused_with_several_workers(command, tmp_path):
    done = subprocess.run([str(BIN / command), "--workers", "2", "--plans", str(EXAMPLES / "manual.toml"),
                           "--port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers 2 needs counters the workers share" in done.stderr and "memory://" in done.stderr
    done = subprocess.run([str(BIN / command), "--workers", "0", "--plans", str(EXAMPLES / "manual.toml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers: expected at least 1, got 0" in done.stderr


@pytest.mark.parametrize("command", ["tel400-http", "tel400-esl"])
def test_more_workers_than_the_bound_are_refused(command, tmp_path):
    # each worker is a process with its own socket, router and plans: a typo of 100000 must not fork them
    done = subprocess.run([str(BIN / command), "--workers", "100000", "--counters", f"shm:///{tmp_path}/c",
                           "--plans", str(EXAMPLES / "manual.toml"), "--port", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers: at most 256, got 100000" in done.stderr


def test_tel400_http_refuses_per_process_calls_with_several_workers(tmp_path):
    # a call's end reaching another worker than the one that routed it would be unknown there: never charged
    done = subprocess.run([str(BIN / "tel400-http"), "--workers", "2", "--counters", f"shm:///{tmp_path}/c",
                           "--calls", "memory://", "--plans", str(EXAMPLES / "manual.toml"), "--port", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--calls memory:// with --workers 2" in done.stderr


def test_a_busy_port_is_one_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(BIN / "tel400-http"), "--workers", "3", "--counters", f"shm:///{tmp_path}/c",
                               "--port", str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count(f"cannot listen on 127.0.0.1:{port}") == 1 and "workers started" not in done.stderr
    assert not (tmp_path / "tel400-data").exists()  # nothing was made for a server that could not listen


# -- tel400-esl --------------------------------------------------------------------------------


def sqlite_plans(tmp_path) -> str:
    store = tel400.SqliteStore(tmp_path / "plans.db")
    store.replace_all(tel400.PlanSet.from_dict(PLANS), actor="test")
    return store.url


def held_by(pids, port: int) -> dict[int, int]:
    """pid → connections to ``port`` it holds (sockets matched through /proc/net/tcp)."""
    inodes = set()
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # ESTABLISHED, our side
            inodes.add(fields[9])
    held = {}
    for pid in pids:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        held[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return held


@needs_shm
def test_four_esl_workers_serve_and_share_one_cap(servers, tmp_path):
    server = esl(servers, tmp_path, sqlite_plans(tmp_path))
    pids = server.workers(4)
    # each worker logs as it starts serving, with its id: 0, 1, 2 and 3 all do
    until(lambda: {int(w) for w in re.findall(r"esl_worker_serving.*worker=(\d)", server.stderr())} == {0, 1, 2, 3},
          what=lambda: f"workers 0-3 serving; they printed:\n{server.stderr()}")
    # connections that have not spoken yet: held by whichever worker accepted them
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
    try:
        held = until(lambda: (lambda h: h if sum(h.values()) == 60 else None)(held_by(pids, server.port)),
                     what="60 connections accepted")
        assert sum(1 for n in held.values() if n) >= 3, held  # the accepts spread over the workers
    finally:
        for conn in idle:
            conn.close()

    async def calls():
        peer = FreeSwitchPeer()
        return await asyncio.gather(*(peer.play("127.0.0.1", server.port, Call(destination=NUMBER))
                                      for _ in range(50)))

    played = asyncio.run(calls())
    bridged = [c for c in played if any(app == "bridge" for app, _ in c.apps)]
    # the calls cap is counted in shared memory: exactly 20 of 50 calls through 4 workers
    assert len(bridged) == 20 and all(not c.parked for c in played)
    # a plan change in the store: every worker's watcher has it within a second
    store = tel400.SqliteStore(tmp_path / "plans.db")
    changed = {"numbers": [{**PLANS["numbers"][0], "caps": [], "blacklist": ["13901012345"]}]}
    store.replace_all(tel400.PlanSet.from_dict(changed), actor="test")
    time.sleep(1.0)
    played = asyncio.run(calls())
    # (the cap refused every call before: the blacklist's own prompt tells the new plan)
    assert all(c.apps and c.apps[-1][0] == "playback" and "blacklisted" in c.apps[-1][1] for c in played), \
        [c.apps for c in played]
    assert all(not c.parked for c in played)
    assert server.stop() == 0
    assert not any(alive(pid) for pid in pids)


@needs_shm
def test_an_esl_worker_that_cannot_start_is_a_crash_loop(servers, tmp_path):
    plans = sqlite_plans(tmp_path)
    server = esl(servers, tmp_path, plans, "--crash-limit", "3/60", workers=2)
    pids = server.workers(2)
    (tmp_path / "plans.db").unlink()  # the store is gone: a restarted worker fails as it starts
    os.kill(min(pids), signal.SIGKILL)
    assert server.proc.wait(60) == 1
    err = server.stderr()
    assert "a crash loop, giving up" in err and "exited with code" in err, err
    until(lambda: not children(server.proc.pid), what="the other worker stopped")


# -- calls in progress shared: every call charged exactly once ------------------------------------

#: one number, one target, a tariff by the minute; caps out of reach but counted (the test reads them)
BILLED = {"numbers": [{"number": NUMBER, "rules": [{"name": "all", "targets": ["13901010001"]}],
                       "tariff": {"local": 0.1, "long_distance": 0.3, "increment_s": 60},
                       "caps": [{"metric": "calls", "per": "month", "limit": 10**9},
                                {"metric": "minutes", "per": "month", "limit": 10**8}]}]}


class Connection:
    """One keep-alive HTTP/1.1 connection (raw asyncio streams) and the worker that holds it."""

    def __init__(self, reader, writer, worker: int) -> None:
        self.reader, self.writer, self.worker = reader, writer, worker

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = cls(reader, writer, -1)
        status, head, _ = await conn.request("GET", "/healthz")
        assert status == 200
        conn.worker = int(head["x-tel400-worker"])
        return conn

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, dict, dict]:
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)}
        payload = await self.reader.readexactly(int(fields.get("content-length", 0)))
        return int(head[0].split()[1]), fields, json.loads(payload) if payload else {}

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def billed_store(tmp_path) -> tel400.SqliteStore:
    store = tel400.SqliteStore(tmp_path / "plans.db")
    store.replace_all(tel400.PlanSet.from_dict(BILLED), actor="test")
    return store


def used(store, tmp_path) -> dict[str, int]:
    """The month's counters as the shared memory holds them, read by a router of this process."""
    router = tel400.Router.from_store(store, f"shm:///{tmp_path}/counters")
    return {u.cap.metric: int(u.used) for u in router.cap_usage(NUMBER)}


async def route_all(port: int, ids: list[str], conns: int = 16, workers: int = 4) -> dict[str, int]:
    """Route every call (keep-alive connections, ``conns`` at once or more, till every worker holds one):
    call id → the worker that routed it."""
    pool = [await Connection.open(port) for _ in range(conns)]
    while len({conn.worker for conn in pool}) < workers:  # the kernel's hash left one out: another connection
        pool.append(await Connection.open(port))
        assert len(pool) < 1000
    conns = len(pool)
    routed: dict[str, int] = {}

    async def run(conn: Connection, mine: list[str]) -> None:
        for call_id in mine:
            body = json.dumps({"dialed": NUMBER, "caller": "13901012345", "call_id": call_id}).encode()
            status, _, decision = await conn.request("POST", "/v1/route", body)
            assert status == 200 and decision["action"] == "bridge", decision
            routed[call_id] = conn.worker

    await asyncio.gather(*(run(conn, ids[i::conns]) for i, conn in enumerate(pool)))
    for conn in pool:
        await conn.close()
    return routed


async def end_all(port: int, durations: dict[str, int], tasks: int = 16, per_connection: int = 25,
                  after: tuple[int, callable] | None = None) -> dict[str, list]:
    """Post every call's end on new connections (``per_connection`` ends each, so the kernel spreads them),
    retrying on a connection that breaks; ``after``: (ends done, action) run once that many ends answered.

    Returns call id → [(status, worker), …] of every answered attempt.
    """
    queue = list(durations)
    answers: dict[str, list] = {call_id: [] for call_id in durations}
    done = 0

    async def run() -> None:
        nonlocal done
        while queue:
            batch, queue[:] = queue[:per_connection], queue[per_connection:]
            while batch:
                try:
                    conn = await Connection.open(port)
                except (OSError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.05)
                    continue
                try:
                    while batch:
                        call_id = batch[0]
                        body = json.dumps({"duration": durations[call_id]}).encode()
                        status, head, _ = await conn.request("POST", f"/v1/calls/{call_id}/end", body)
                        answers[call_id].append((status, conn.worker))
                        if status == 503:  # the charge waits for this retry
                            await asyncio.sleep(float(head.get("retry-after", 1)))
                            continue
                        batch.pop(0)
                        done += 1
                        if after is not None and done == after[0]:
                            after[1]()
                except (OSError, asyncio.IncompleteReadError):  # the worker died: again, elsewhere
                    pass
                finally:
                    await conn.close()

    await asyncio.gather(*(run() for _ in range(tasks)))
    return answers


def billed_minutes(durations: dict[str, int]) -> int:
    return sum(-(-d // 60) for d in durations.values())


def shared_http(servers, tmp_path, store, *args, records: str = "none") -> Supervised:
    return servers("tel400-http", "--workers", "4", "--counters", f"shm:///{tmp_path}/counters",
                   "--data", str(tmp_path / "data"), "--plans", store.url, "--records", records,
                   *args, cwd=tmp_path, banner_end="  also:")


def report(server: Supervised, tmp_path) -> dict:
    """This month's report of NUMBER (from the call records every worker writes)."""
    token = (tmp_path / "data" / "admin-token").read_text().strip()
    req = urllib.request.Request(f"{server.url}/v1/numbers/{NUMBER}/report",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@needs_shm
def test_20000_calls_ended_at_random_workers_are_each_charged_exactly_once(servers, tmp_path):
    import random

    store = billed_store(tmp_path)
    # calls: the default, sqlite:///DATA/calls.db; records: DATA/records.db, written by every worker
    server = shared_http(servers, tmp_path, store, records=str(tmp_path / "data" / "records.db"))
    server.workers(4)
    seen_workers(server, 4)
    rng = random.Random(15)
    ids = [f"c{i}" for i in range(20_000)]
    durations = {call_id: rng.randint(1, 600) for call_id in ids}
    routed = asyncio.run(route_all(server.port, ids))
    assert set(routed.values()) == {0, 1, 2, 3}
    answers = asyncio.run(end_all(server.port, durations))
    # every end answered once, 200: charged; ends went to other workers than the one that routed
    assert all([status for status, _ in a] == [200] for a in answers.values())
    elsewhere = sum(1 for call_id, a in answers.items() if a[0][1] != routed[call_id])
    assert elsewhere > len(ids) // 2, elsewhere
    assert {a[0][1] for a in answers.values()} == {0, 1, 2, 3}
    # a second report of an end, to any worker: nothing left to charge
    again = asyncio.run(end_all(server.port, {call_id: 60 for call_id in ids[:500]}))
    assert all([status for status, _ in a] == [404] for a in again.values())
    assert used(store, tmp_path) == {"calls": 20_000, "minutes": billed_minutes(durations)}
    # the month's report sums the records of all workers: the same figures (each writer flushes in a second)
    until(lambda: (lambda r: r["calls"] == 20_000 and r["minutes"] == billed_minutes(durations))(
        report(server, tmp_path)), timeout_s=30, every_s=0.5, what="the report to sum every call")
    assert "record_write_failed" not in server.stderr() and "record_end_unmatched" not in server.stderr()
    assert server.stop() == 0


@needs_shm
def test_a_calls_cap_is_exact_across_workers(servers, tmp_path):
    capped = {"numbers": [{**BILLED["numbers"][0], "caps": [{"metric": "calls", "per": "day", "limit": 500}]}]}
    store = tel400.SqliteStore(tmp_path / "plans.db")
    store.replace_all(tel400.PlanSet.from_dict(capped), actor="test")
    server = shared_http(servers, tmp_path, store)
    server.workers(4)

    async def attempt() -> list[str]:
        pool = [await Connection.open(server.port) for _ in range(16)]
        body = json.dumps({"dialed": NUMBER, "caller": "13901012345"}).encode()

        async def run(conn: Connection) -> list[str]:
            return [(await conn.request("POST", "/v1/route", body))[2]["action"] for _ in range(125)]

        actions = [a for got in await asyncio.gather(*(run(conn) for conn in pool)) for a in got]
        assert len({conn.worker for conn in pool}) >= 3
        for conn in pool:
            await conn.close()
        return actions

    actions = asyncio.run(attempt())
    assert actions.count("bridge") == 500 and actions.count("reject") == 1500
    assert server.stop() == 0


@needs_shm
def test_calls_of_a_killed_worker_are_charged_through_the_others(servers, tmp_path):
    import random

    store = billed_store(tmp_path)
    server = shared_http(servers, tmp_path, store)
    server.workers(4)
    pids = seen_workers(server, 4)
    rng = random.Random(16)
    ids = [f"k{i}" for i in range(4_000)]
    durations = {call_id: rng.randint(1, 600) for call_id in ids}
    routed = asyncio.run(route_all(server.port, ids))
    victim = routed[ids[0]]
    assert sum(1 for w in routed.values() if w == victim) > 100
    os.kill(pids[victim], signal.SIGKILL)  # between its calls' routing and their ends
    answers = asyncio.run(end_all(server.port, durations))
    assert f"worker {victim} (pid {pids[victim]}) was killed by SIGKILL" in server.stderr()
    assert all([status for status, _ in a] == [200] for a in answers.values())
    # the victim's calls ended at the other workers (or its successor), charged once: the totals are exact
    assert used(store, tmp_path) == {"calls": 4_000, "minutes": billed_minutes(durations)}
    assert server.stop() == 0


@needs_shm
def test_a_worker_killed_while_charging_leaves_no_call_uncharged(servers, tmp_path):
    """SIGKILL lands mid-run, most likely inside an end being charged: no call goes uncharged.

    An end whose worker died after adding some of its counters and before
    settling it is charged again when the switch retries (docs/limits.md,
    "A process that dies between claim and settle"): at most the ends that
    were in flight at that worker, one per client task here.
    """
    import random

    store = billed_store(tmp_path)
    server = shared_http(servers, tmp_path, store)
    server.workers(4)
    pids = seen_workers(server, 4)
    rng = random.Random(17)
    ids = [f"m{i}" for i in range(4_000)]
    durations = {call_id: rng.randint(1, 600) for call_id in ids}
    asyncio.run(route_all(server.port, ids))
    tasks = 16
    answers = asyncio.run(end_all(server.port, durations, tasks=tasks,
                                  after=(1_000, lambda: os.kill(pids[1], signal.SIGKILL))))
    assert f"worker 1 (pid {pids[1]}) was killed by SIGKILL" in server.stderr()
    retried = 0
    for a in answers.values():
        statuses = [status for status, _ in a]
        assert statuses.count(200) <= 1 and statuses[-1] in (200, 404), a
        retried += statuses[-1] == 404  # its first try died with the worker, unanswered, after the charge
    assert retried <= tasks
    expected = billed_minutes(durations)
    got = used(store, tmp_path)
    assert got["calls"] == 4_000
    assert expected <= got["minutes"] <= expected + tasks * 10, (got, expected)  # 10: the longest call's minutes
    assert server.stop() == 0


@pytest.mark.parametrize("counters, calls", [
    ("redis://h:6379/2?timeout_ms=50&max_connections=100", "redis://h:6379/2"),
    ("rediss://u:p@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=%2Fetc%2Fca.pem&timeout_ms=50&open_after=5",
     "rediss://u:p@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=%2Fetc%2Fca.pem"),
    ("redis+cluster://a:7000,b:7001/", "redis+cluster://a:7000,b:7001/"),
    ("unix:///run/redis.sock?db=3&timeout_ms=50", "unix:///run/redis.sock?db=3"),  # was DATA/calls.db
])
def test_the_default_calls_registry_keeps_the_counters_redis_connection_options(tmp_path, counters, calls):
    """--workers N with Redis counters and no --calls: the calls go to the same Redis, reached the same way.

    The counters' own options (timeout_ms, max_connections, ...) are not the
    registry's; redis-py's (TLS certificates, say) are how the server is
    reached: without them a rediss:// server with a private CA refused the
    registry's connections.
    """
    from tel400.calls import open_calls
    from tel400_http import server as http_server

    args = http_server.build_parser().parse_args(["--workers", "2", "--counters", counters])
    url = http_server.calls_url(args, tmp_path)
    assert url == calls
    if counters.startswith("rediss"):
        registry = open_calls(url)  # redis-py reads the options; nothing connects until a call
        kwargs = registry._client.connection_pool.connection_kwargs
        assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"]) == ("required", "/etc/ca.pem")


def test_with_redis_counters_the_workers_share_calls_in_the_same_redis(servers, tmp_path, redis_url):
    """--workers N with redis:// counters: the calls registry defaults to that Redis (no --calls)."""
    import random

    store = billed_store(tmp_path)
    server = servers("tel400-http", "--workers", "3", "--counters", redis_url, "--data", str(tmp_path / "data"),
                     "--plans", store.url, "--records", "none", cwd=tmp_path, banner_end="  also:")
    server.workers(3)
    rng = random.Random(18)
    ids = [f"r{i}" for i in range(2_000)]
    durations = {call_id: rng.randint(1, 600) for call_id in ids}
    routed = asyncio.run(route_all(server.port, ids, conns=8, workers=3))
    answers = asyncio.run(end_all(server.port, durations, tasks=8))
    assert all([status for status, _ in a] == [200] for a in answers.values())
    assert sum(1 for call_id, a in answers.items() if a[0][1] != routed[call_id]) > len(ids) // 3
    router = tel400.Router.from_store(store, redis_url)
    assert {u.cap.metric: int(u.used) for u in router.cap_usage(NUMBER)} == {
        "calls": 2_000, "minutes": billed_minutes(durations)}
    assert not (tmp_path / "data" / "calls.db").exists()  # the calls were in Redis
    assert server.stop() == 0


def test_the_supervisor_policy():
    from tel400.workers import Policy

    policy = Policy.parse_crash_limit("3/30", stop_timeout_s=40)
    assert (policy.crash_limit, policy.crash_window_s, policy.stop_timeout_s) == (3, 30.0, 40)
    # the back-off doubles per death in a row, up to its maximum
    assert [Policy().backoff(n) for n in (1, 2, 3, 6, 7, 100)] == [0.1, 0.2, 0.4, 3.2, 5.0, 5.0]
    for bad in ("3", "0/30", "3/0", "3/inf", "x/30", "3/30/1"):
        with pytest.raises(ValueError, match="--crash-limit"):
            Policy.parse_crash_limit(bad)
    with pytest.raises(ValueError):
        Policy(backoff_s=10, backoff_max_s=5)


def test_a_call_end_taken_before_its_record_is_written_waits_for_the_record(tmp_path):
    """Two workers' record writers on one database: the call's end (worker B) may come before the routing
    worker (A) wrote the call's record; B keeps it for the next batches, then drops and counts it."""
    import sqlite3
    import zoneinfo
    from decimal import Decimal
    from types import SimpleNamespace

    from tel400_http.records import CallRecords

    def zone(number):
        return zoneinfo.ZoneInfo("Asia/Shanghai")

    path = str(tmp_path / "records.db")
    a = CallRecords(path, zone_of=zone, interval_s=0.02, retention_days=1e6)
    b = CallRecords(path, zone_of=zone, interval_s=0.02, retention_days=1e6, end_wait_s=1.0)
    try:
        def charge(call_id):
            return SimpleNamespace(call_id=call_id, duration_s=61, billed_s=120, cost=Decimal("0.2"), target=None)

        b.ended(charge("x1"))
        assert b.flush()
        time.sleep(0.1)  # B has tried: no record yet
        a.decision(SimpleNamespace(call_id="x1", number=NUMBER, caller="13901012345", province="CN-BJ", rule="r",
                                   action="bridge", reason="ok", channel="voice", targets=("13901010001",)),
                   time.time())
        assert a.flush()

        def billed():
            with sqlite3.connect(path) as db:
                return db.execute("SELECT billed_s FROM records WHERE call_id = 'x1'").fetchone()

        assert until(lambda: billed() == (120,), timeout_s=5, what="the end written on the record")
        b.ended(charge("never"))  # a call whose record never comes
        until(lambda: b.ends_unmatched == 1, timeout_s=5, what="the end dropped after end_wait_s")
        assert not b._waiting
    finally:
        a.close()
        b.close()


@needs_shm
def test_esl_workers_with_shared_calls_charge_each_call_once(servers, tmp_path):
    """tel400-esl --calls sqlite://: the calls wait in the shared registry for their end; all charged once."""
    store = billed_store(tmp_path)
    calls_db = tmp_path / "calls.db"
    server = esl(servers, tmp_path, store.url, "--calls", f"sqlite:///{calls_db}", workers=3)
    server.workers(3)

    async def calls():
        peer = FreeSwitchPeer()
        return await asyncio.gather(*(peer.play("127.0.0.1", server.port,
                                                Call(destination=NUMBER, bridge=lambda legs: (legs[0], 61)))
                                      for _ in range(60)))

    played = asyncio.run(calls())
    assert all(not c.parked and c.hangup_cause == "NORMAL_CLEARING" for c in played)
    assert used(store, tmp_path) == {"calls": 60, "minutes": 120}  # 61 s: 2 minutes each
    import sqlite3

    with sqlite3.connect(calls_db) as db:  # every call was remembered there (its end found it) and settled
        assert db.execute("SELECT count(*) FROM calls").fetchone() == (0,)
        assert db.execute("SELECT n FROM calls_count").fetchone() == (0,)
    assert server.stop() == 0


@needs_shm
def test_esl_workers_finish_calls_in_progress_on_sigterm(servers, tmp_path):
    """SIGTERM while calls are bridged: each worker lets its calls end (here at --max-call), then exits."""
    server = esl(servers, tmp_path, sqlite_plans(tmp_path), "--max-call", "3", workers=3)
    server.workers(3)

    async def calls():
        peer = FreeSwitchPeer()
        placed = [asyncio.ensure_future(peer.play("127.0.0.1", server.port,
                                                  Call(destination=NUMBER, stuck_apps=frozenset({"bridge"}))))
                  for _ in range(12)]
        await asyncio.sleep(1.0)  # every call is in its bridge
        server.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*placed)

    started = time.monotonic()
    played = asyncio.run(calls())
    assert all(c.apps and c.apps[-1][0] == "bridge" for c in played), [c.apps for c in played]
    assert all(not c.parked and c.hangup_cause for c in played)  # hung up by the server at --max-call
    assert server.proc.wait(30) == 0 and time.monotonic() - started >= 2.5
    assert "SIGTERM: stopping 3 workers" in server.stderr()
