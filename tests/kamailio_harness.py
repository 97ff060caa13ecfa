"""Real Kamailio and sipp for the adapter's tests.

Kamailio (Debian's 5.6) runs adapters/kamailio/kamailio.cfg with the tel400
KEMI script on a free loopback port; sipp instances play the callers and the
targets.  Everything is started and stopped here, in a temporary directory.
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import uuid

from tel400.testing import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "adapters" / "kamailio"
SCENARIOS = pathlib.Path(__file__).resolve().parent / "sipp"


def free_udp_port() -> int:
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def modules_dir() -> str:
    """Kamailio's module directory (its path names the architecture)."""
    found = sorted(pathlib.Path("/usr/lib").glob("*/kamailio/modules/app_python3.so"))
    if not found:
        raise RuntimeError("kamailio-python3-modules is not installed")
    return str(found[0].parent)


def options_ping(port: int, timeout: float = 0.3) -> str | None:
    """Send an OPTIONS over UDP; the status line of the answer, or None."""
    call_id = uuid.uuid4().hex
    message = (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id[:12]}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag={call_id[:8]}\r\nTo: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        message = message.replace("127.0.0.1:9", f"127.0.0.1:{s.getsockname()[1]}")
        s.sendto(message.encode(), ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(65535)
        except OSError:
            return None
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


class Kamailio:
    """Kamailio with the tel400 script, on 127.0.0.1:<port>."""

    def __init__(self, workdir: pathlib.Path, env: dict[str, str], *, children: int = 4, shm_mb: int = 256,
                 script: pathlib.Path | None = None, cfg: pathlib.Path | None = None,
                 defines: dict[str, str] | None = None) -> None:
        if shutil.which("kamailio") is None:
            raise RuntimeError("kamailio is not installed (apt-get install kamailio kamailio-python3-modules)")
        self.dir = workdir
        self.port = free_udp_port()
        self.children = children
        self.shm_mb = shm_mb
        self.script = script or ADAPTER / "tel400_kemi.py"
        self.cfg = cfg or ADAPTER / "kamailio.cfg"
        self.defines = defines or {}
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",  # the embedded Python must find the system's stdlib
            "TEL400_SITE_PACKAGES": sysconfig.get_paths()["purelib"],
            **env,
        }
        self.log_path = workdir / "kamailio.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Kamailio:
        defines = {
            "TEL400_LISTEN": f"udp:127.0.0.1:{self.port}",
            "TEL400_SCRIPT": f'"{self.script}"',
            "TEL400_RUNDIR": f'"{self.dir}"',
            "TEL400_CHILDREN": str(self.children),
            "TEL400_MODULES": f'"{modules_dir()}/"',
            **self.defines,
        }
        command = ["kamailio", "-f", str(self.cfg), "-DD", "-E", "-x", "tlsf", "-m", str(self.shm_mb),
                   "-w", str(self.dir)]
        for name, value in defines.items():
            command += ["-A", f"{name}={value}"]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=self.dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"kamailio exited ({code}):\n{self.log()[-3000:]}")
            if (options_ping(self.port) or "").startswith("SIP/2.0 200"):
                return self
        self.stop()
        raise RuntimeError(f"kamailio did not answer OPTIONS:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if getattr(self, "_log", None) and not self._log.closed:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cpu_seconds(self) -> float:
        """User + system CPU of every Kamailio process so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in _session_pids(self.process.pid):
            try:
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of /proc/pid/stat: the session id
            pids.append(int(entry.name))
    return pids


def _last_counts(path: pathlib.Path) -> dict[str, int]:
    rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {name: int(value) for name, value in zip(header[2:], last[2:]) if value.isdigit()}


class SippUAS:
    """A sipp playing a target (answering, busy, accepting messages)."""

    def __init__(self, workdir: pathlib.Path, scenario: str) -> None:
        self.dir = workdir / f"uas-{scenario}-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir()
        self.scenario = SCENARIOS / f"{scenario}.xml"
        self.port = free_udp_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> SippUAS:
        out = subprocess.run(
            ["sipp", "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port), "-trace_counts", "-fd", "1",
             "-nostdin", "-bg"],
            cwd=self.dir, capture_output=True, text=True, timeout=10,
        )
        match = re.search(r"PID=\[(\d+)\]", out.stdout + out.stderr)
        if match is None:
            raise RuntimeError(f"sipp did not start: {out.stdout}{out.stderr}")
        self.pid = int(match.group(1))
        time.sleep(0.2)
        return self

    def counts(self) -> dict[str, int]:
        """The latest per-step counters (sipp writes them every second)."""
        time.sleep(1.2)
        files = list(self.dir.glob("*_counts.csv"))
        return _last_counts(files[0]) if files else {}

    def calls(self) -> int:
        counts = self.counts()
        return counts.get("0_INVITE_Recv", 0) + counts.get("0_MESSAGE_Recv", 0)

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def sipp_uac(workdir: pathlib.Path, scenario: str, port: int, service: str, callers: list[str], *,
             calls: int, rate: float = 200, duration_ms: int = 0, timeout_s: int = 60) -> dict[str, int]:
    """Run a sipp caller to completion; the counts of each scenario step."""
    run_dir = workdir / f"uac-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir()
    injection = run_dir / "callers.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{c};\n" for c in callers))
    subprocess.run(
        ["sipp", "-sf", str(SCENARIOS / f"{scenario}.xml"), "-inf", str(injection), "-s", service,
         f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_udp_port()), "-m", str(calls), "-r", str(rate),
         "-l", "200", "-d", str(duration_ms), "-timeout", f"{timeout_s}s", "-trace_counts", "-nostdin",
         "-recv_timeout", "15000", "-t", "u1"],
        cwd=run_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s + 30, check=False,
    )
    files = list(run_dir.glob("*_counts.csv"))
    return _last_counts(files[0]) if files else {}


def answers(counts: dict[str, int]) -> dict[int, int]:
    """Final answers a caller saw: {status code: count} from its step counters."""
    out: dict[int, int] = {}
    for name, value in counts.items():
        parts = name.split("_")
        if len(parts) == 3 and parts[2] == "Recv" and parts[1].isdigit() and int(parts[1]) >= 200 and value:
            code = int(parts[1])
            if name.startswith(("15_",)):  # the 200 to the BYE, not to the INVITE
                continue
            out[code] = out.get(code, 0) + value
    return out


def _headers(message: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def invite(port: int, dialed: str, caller: str, *, timeout: float = 5.0) -> tuple[str, dict[str, list[str]]]:
    """One INVITE over UDP, read until a final answer (which is ACKed).

    Returns the status line and the answer's headers.
    """
    call_id = uuid.uuid4().hex
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        me = f"127.0.0.1:{s.getsockname()[1]}"
        branch = f"z9hG4bK{call_id[:16]}"
        common = (f"From: <sip:{caller}@{me}>;tag={call_id[:8]}\r\nCall-ID: {call_id}\r\nMax-Forwards: 70\r\n")
        request = (f"INVITE sip:{dialed}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch}\r\n"
                   f"{common}To: <sip:{dialed}@127.0.0.1:{port}>\r\nCSeq: 1 INVITE\r\nContact: <sip:{caller}@{me}>\r\n"
                   "Content-Length: 0\r\n\r\n")
        s.sendto(request.encode(), ("127.0.0.1", port))
        while True:
            data = s.recv(65535).decode(errors="replace")
            status = data.split("\r\n", 1)[0]
            code = int(status.split()[1])
            if code >= 200:
                break
        headers = _headers(data)
        if code >= 300:
            to = headers["to"][0]
            ack = (f"ACK sip:{dialed}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch}\r\n"
                   f"{common}To: {to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
            s.sendto(ack.encode(), ("127.0.0.1", port))
        return status, headers


#: (From, To) header pairs Kamailio could not relay: the sanity check before routing answers 400.
BROKEN_HEADERS = [
    (";tag=x1", None),  # no URI at all
    ('"Alice";tag=x2', None),  # a display name without a URI
    ("Alice;tag=x3", None),  # not a URI
    ("<sip:13901010001@127.0.0.1>;tag=x4", "Bob"),  # a To that is not a URI
    ("<sip:13901010001@127.0.0.1>;tag=x5;tag=x6", None),  # two tags
]


def raw_invite(port: int, dialed: str, from_header: str, *, to_header: str | None = None,
               timeout: float = 5.0) -> str:
    """One INVITE with the From (and To) header given verbatim; the status line of the final answer.

    For requests a caller's parser would never build (a From without a URI).
    """
    call_id = uuid.uuid4().hex
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        me = f"127.0.0.1:{s.getsockname()[1]}"
        to_header = to_header or f"<sip:{dialed}@127.0.0.1:{port}>"
        request = (f"INVITE sip:{dialed}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id[:16]}\r\n"
                   f"From: {from_header}\r\nTo: {to_header}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                   f"Max-Forwards: 70\r\nContact: <sip:caller@{me}>\r\nContent-Length: 0\r\n\r\n")
        s.sendto(request.encode(), ("127.0.0.1", port))
        while True:
            status = s.recv(65535).decode(errors="replace").split("\r\n", 1)[0]
            if int(status.split()[1]) >= 200:
                return status


class CapturingMediaServer:
    """A stand-in media server: keeps every INVITE it gets and answers 486."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.invites: list[dict[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                continue
            text = data.decode(errors="replace")
            if not text.startswith("INVITE"):
                continue
            headers = _headers(text)
            self.invites.append(headers)
            lines = [f"Via: {v}" for v in headers.get("via", [])]
            reply = ("SIP/2.0 486 Busy Here\r\n" + "\r\n".join(lines) + "\r\n"
                     f"From: {headers['from'][0]}\r\nTo: {headers['to'][0]};tag=media\r\n"
                     f"Call-ID: {headers['call-id'][0]}\r\nCSeq: {headers['cseq'][0]}\r\nContent-Length: 0\r\n\r\n")
            self.sock.sendto(reply.encode(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
