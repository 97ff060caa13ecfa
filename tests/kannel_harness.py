"""A real Kannel for the tests: bearerbox, smsbox and fakesmsc on free loopback ports.

Everything lives in a temp dir: a generated kannel.conf, the boxes' logs and
fakesmsc's output.  Each program runs in the foreground (Kannel's default
without ``-d``) as a child in its own process group, so ``stop()`` ends it and
anything it forked, and nothing survives a failed test.

Two fake SMSC links, both ``smsc-id = fake``:

* ``fake-mt`` has one long-running ``fakesmsc -m 0``: it sends nothing and
  logs every message bearerbox routes to it (``Got message N: <line>``);
  ``received()`` reads those lines.
* ``fake-mo`` takes the injections: ``inject()`` runs ``fakesmsc -m 1`` with
  one ``sender receiver ucs2 <UTF-16BE, percent-encoded>`` line and stops it
  once bearerbox has counted the message.  Its ``allowed-prefix`` matches no
  real number, so replies (which keep the ``fake`` smsc-id of the message
  they answer) always go to ``fake-mt``.  Bearerbox's fake SMSC serves one
  client at a time, hence two links.

Readiness: bearerbox's admin ``/status.txt`` answers; smsbox is listed under
"Box connections" and its sendsms port accepts; the fake-mt link is "online".
Measured on the 2-core CI machine: start ≈ 1.5 s, stop ≈ 0.3 s.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import attrs

BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
FAKESMSC = "/usr/lib/kannel/test/fakesmsc"
ADMIN_PASSWORD = "harness-admin"
PASSWORD = "harness-secret"
# fakesmsc logs each message it gets as "... DEBUG: Got message 12: <line>".
_GOT = re.compile(rb"Got message \d+: <(.*)>$")
_MO_RCVD = re.compile(r"\[fake-mo\].*?rcvd: sms (\d+)")


@attrs.frozen
class FakeSms:
    """One message fakesmsc received; concatenated parts already joined (``parts`` of them)."""

    sender: str
    to: str
    text: str
    parts: int = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unquote(field: bytes) -> bytes:
    # Kannel's url-encoding writes a space as "+" (and a "+" as %2B).
    return urllib.parse.unquote_to_bytes(field.replace(b"+", b" "))


def _decode_parts(data: bytes) -> str:
    # A concatenated part's line says "udh <udh> data <bytes>" whatever the
    # coding: UCS-2 text has NULs or high bytes (CJK), GSM text is ASCII here.
    if b"\x00" in data or any(b >= 0x80 for b in data):
        return data.decode("utf-16-be")
    return data.decode("ascii")


def parse_fakesmsc_lines(raw: bytes) -> list[FakeSms]:
    """The messages in fakesmsc's output, parts of a concatenated message joined (in arrival order)."""
    done: list[FakeSms] = []
    pending: dict[tuple[str, str, int], dict[int, bytes]] = {}
    for line in raw.split(b"\n"):
        match = _GOT.search(line)
        if not match:
            continue
        fields = match.group(1).split(b" ", 3)
        if len(fields) < 4:
            continue
        sender, to, kind, rest = fields[0].decode(), fields[1].decode(), fields[2], fields[3]
        if kind == b"text":
            done.append(FakeSms(sender, to, rest.decode("latin-1")))
        elif kind == b"data":
            done.append(FakeSms(sender, to, _unquote(rest).decode("latin-1")))
        elif kind == b"ucs-2":
            done.append(FakeSms(sender, to, _unquote(rest).decode("utf-16-be")))
        elif kind == b"udh":
            udh_field, _, data_field = rest.partition(b" ")
            data_field = data_field.partition(b" ")[2] if data_field.startswith(b"data ") else data_field
            udh = _unquote(udh_field)
            data = _unquote(data_field)
            # 05 00 03 ref total seq: the 8-bit concatenation element.
            if len(udh) >= 6 and udh[1] == 0 and udh[2] == 3:
                ref, total, seq = udh[3], udh[4], udh[5]
                got = pending.setdefault((sender, to, ref), {})
                got[seq] = data
                if len(got) == total:
                    del pending[(sender, to, ref)]
                    joined = b"".join(got[i] for i in sorted(got))
                    done.append(FakeSms(sender, to, _decode_parts(joined), parts=total))
            else:
                done.append(FakeSms(sender, to, _decode_parts(data)))
    return done


def _mo_link(ports: dict[str, int]) -> str:
    # The injection link: no real number starts with 20 zeros, so nothing is sent to it.
    return f"""\
group = smsc
smsc = fake
smsc-id = fake
smsc-admin-id = fake-mo
port = {ports["mo"]}
connect-allow-ip = 127.0.0.1
allowed-prefix = "00000000000000000000"
"""


def config_from_sample(sample: str, directory: Path, ports: dict[str, int], get_url: str) -> str:
    """adapters/kannel/kannel.conf made runnable here: its ports, paths, passwords and get-url replaced
    (each exactly once, or ValueError: the sample changed in a way the tests do not follow), and the
    injection link added."""
    edits = [
        (r"^admin-port = \d+$", f"admin-port = {ports['admin']}"),
        (r"^admin-password = .*$", f"admin-password = {ADMIN_PASSWORD}"),
        (r"^smsbox-port = \d+$", f"smsbox-port = {ports['smsbox']}"),
        (r"^bearerbox-port = \d+$", f"bearerbox-port = {ports['smsbox']}"),
        (r"^sendsms-port = \d+$", f"sendsms-port = {ports['sendsms']}"),
        (r"^smsc-id = fake\nport = \d+$", f"smsc-id = fake\nsmsc-admin-id = fake-mt\nport = {ports['mt']}"),
        (r"^password = .*$", f"password = {PASSWORD}"),
        (r"^get-url = .*$", f'get-url = "{get_url}"'),
    ]
    for pattern, replacement in edits:
        sample, count = re.subn(pattern, lambda _m, r=replacement: r, sample, flags=re.M)
        if count != 1:
            raise ValueError(f"the sample kannel.conf has {count} lines matching {pattern!r}")
    sample = sample.replace('"/var/log/kannel/', f'"{directory}/').replace('"/var/spool/kannel/', f'"{directory}/')
    return sample + "\n" + _mo_link(ports)


def _write_config(path: Path, ports: dict[str, int], get_url: str, dlr_retries: int, queue_delay: int) -> None:
    d = path.parent
    path.write_text(f"""\
group = core
admin-port = {ports["admin"]}
admin-interface = 127.0.0.1
admin-password = {ADMIN_PASSWORD}
smsbox-port = {ports["smsbox"]}
smsbox-interface = 127.0.0.1
box-allow-ip = 127.0.0.1
log-file = "{d}/bearerbox.log"
log-level = 1
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = fake
smsc-admin-id = fake-mt
port = {ports["mt"]}
connect-allow-ip = 127.0.0.1

{_mo_link(ports)}
group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {ports["smsbox"]}
sendsms-port = {ports["sendsms"]}
sendsms-interface = 127.0.0.1
log-file = "{d}/smsbox.log"
log-level = 1
mo-recode = true
http-request-retry = {dlr_retries}
http-queue-delay = {queue_delay}
reply-couldnotfetch = ""
reply-couldnotrepresent = ""
reply-requestfailed = ""
reply-emptymessage = ""

group = sendsms-user
username = tel400
password = {PASSWORD}
max-messages = 10
concatenation = true
user-allow-ip = 127.0.0.1

group = sms-service
keyword = default
catch-all = true
get-url = "{get_url}"
max-messages = 10
concatenation = true
accept-x-kannel-headers = true
omit-empty = true
""")


#: Starts tried with fresh ports when one chosen was taken meanwhile.
PORT_ATTEMPTS = 3


class KannelServers:
    """bearerbox + smsbox + fakesmsc for one test; a context manager.

    ``get_url`` is the sms-service get-url (Kannel escapes in it: ``%p`` ...);
    ``dlr_base`` is kept for the caller (the dlr-url travels with each sendsms).
    ``sample``: run that kannel.conf (adapters/kannel/kannel.conf) instead of
    the generated one, rewritten by ``config_from_sample``.
    """

    def __init__(self, tmp_path, *, get_url: str, dlr_base: str | None = None,
                 http_retries: int = 10, queue_delay: int = 1, sample: Path | None = None,
                 start_timeout: float = 20.0) -> None:
        self.dir = Path(tmp_path) / "kannel"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dlr_base = dlr_base
        # free_port() only finds ports free now: another process may take one before Kannel binds it
        # (bearerbox then logs "Address already in use" and exits). Then again, with other ports.
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self.ports = {name: free_port() for name in ("admin", "smsbox", "mt", "mo", "sendsms")}
                self.sendsms_url = f"http://127.0.0.1:{self.ports['sendsms']}/cgi-bin/sendsms"
                self.username, self.password = "tel400", PASSWORD
                self.config = self.dir / "kannel.conf"
                if sample is None:
                    _write_config(self.config, self.ports, get_url, http_retries, queue_delay)
                else:
                    self.config.write_text(config_from_sample(Path(sample).read_text(), self.dir, self.ports, get_url))
                self._procs: list[subprocess.Popen] = []
                self._received_log = self.dir / "fakesmsc-mt.log"
                started = time.monotonic()
                try:
                    self._spawn("bearerbox", [BEARERBOX, str(self.config)])
                    self._wait(lambda: self.status() is not None, start_timeout, "bearerbox admin port")
                    self._spawn("smsbox", [SMSBOX, str(self.config)])
                    self._wait(lambda: "smsbox:" in (self.status() or "") and self._accepts(self.ports["sendsms"]),
                               start_timeout, "smsbox")
                    self._spawn("fakesmsc-mt", [FAKESMSC, "-H", "127.0.0.1", "-r", str(self.ports["mt"]),
                                                "-m", "0", "0 0 text unused"], log=self._received_log)
                    self._wait(lambda: re.search(r"\[fake-mt\][^\n]*\(online", self.status() or "") is not None,
                               start_timeout, "fakesmsc on the fake-mt link")
                except BaseException:
                    self.stop()
                    raise
            except RuntimeError:
                if attempt == PORT_ATTEMPTS or not self._port_taken():
                    raise
                for log in self.dir.glob("*.log"):  # the next start's logs say only what it met
                    log.unlink()
                continue
            break
        self.start_seconds = time.monotonic() - started

    def _port_taken(self) -> bool:
        """A box of this start exited because a port it was given was taken (its log says so)."""
        return any("Address already in use" in path.read_text(errors="replace")
                   for path in self.dir.glob("*.log"))

    # -- processes ---------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], *, log: Path | None = None) -> subprocess.Popen:
        out = open(log or self.dir / f"{name}.out", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.dir, start_new_session=True)
        finally:
            out.close()
        proc.name = name
        self._procs.append(proc)
        return proc

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for proc in self._procs:
                if proc.poll() is not None and proc.name != "fakesmsc-mo":
                    raise RuntimeError(f"{proc.name} exited ({proc.returncode}) waiting for {what}: "
                                       f"see {self.dir}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready in {timeout} s: see {self.dir}")
            time.sleep(0.05)

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    @staticmethod
    def _end(proc: subprocess.Popen, sig: int, grace: float) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """End fakesmsc, smsbox, bearerbox (TERM, then KILL after a grace period); idempotent."""
        order = {"fakesmsc-mo": 0, "fakesmsc-mt": 1, "smsbox": 2, "bearerbox": 3}
        for proc in sorted(self._procs, key=lambda p: order[p.name]):
            self._end(proc, signal.SIGINT if proc.name.startswith("fakesmsc") else signal.SIGTERM, 5.0)
        self._procs.clear()

    @property
    def pids(self) -> list[int]:
        """The running children's process ids (their process groups have the same ids)."""
        return [proc.pid for proc in self._procs]

    def __enter__(self) -> KannelServers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- what the tests use ------------------------------------------------

    def status(self) -> str | None:
        """bearerbox's status.txt, or None while it does not answer."""
        url = f"http://127.0.0.1:{self.ports['admin']}/status.txt?password={ADMIN_PASSWORD}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError):
            return None

    def _mo_count(self) -> int:
        match = _MO_RCVD.search(self.status() or "")
        return int(match.group(1)) if match else -1

    def inject(self, sender: str, to: str, text: str, timeout: float = 10.0, *, count: int = 1) -> None:
        """A phone ``sender`` sends ``text`` to ``to`` (``count`` times, 10 ms apart): returns once bearerbox
        has them all."""
        if not (sender.isdigit() and to.isdigit()):
            raise ValueError("fakesmsc addresses are digits (a space would end the field)")
        before = self._mo_count()
        data = urllib.parse.quote(text.encode("utf-16-be"), safe="")
        proc = self._spawn("fakesmsc-mo", [FAKESMSC, "-H", "127.0.0.1", "-r", str(self.ports["mo"]),
                                           "-i", "0.01", "-m", str(count), f"{sender} {to} ucs2 {data}"])
        try:
            self._wait(lambda: self._mo_count() >= before + count, timeout, "the injected message")
        finally:
            self._end(proc, signal.SIGINT, 5.0)
            self._procs.remove(proc)

    def received(self) -> list[FakeSms]:
        """Every message fakesmsc got so far (concatenated parts joined), in order."""
        try:
            raw = self._received_log.read_bytes()
        except FileNotFoundError:
            return []
        # Only whole lines: the last may still be being written.
        return parse_fakesmsc_lines(raw[: raw.rfind(b"\n") + 1])

    def wait_received(self, n: int, timeout: float = 10.0) -> list[FakeSms]:
        """Wait until fakesmsc has ``n`` messages (TimeoutError naming what it has), return them."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received()
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"fakesmsc received {len(got)} of {n} messages: {got[-3:]}")
            time.sleep(0.05)
