"""docs/kamailio.md's commands, run as a newcomer runs them.

Everything but ``apt-get`` and the virtual environment (the test's own stands
in: building one takes minutes) runs as written, with the page's paths moved
under a temporary directory and its ports made free ones.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import sysconfig
import time

from .conftest import ROOT
from .kamailio_harness import free_udp_port, invite, options_ping

PAGE = ROOT / "docs" / "kamailio.md"
SYSTEM_PATH = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def block(marker: str) -> list[str]:
    """The lines of the page's ``sh`` block after ``<!-- marker -->``, continuations joined."""
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", PAGE.read_text(encoding="utf-8"), re.S)
    assert match, marker
    return match.group(1).replace("\\\n", " ").splitlines()


class Here:
    """The page's paths and ports, moved to this test's directory and free ports."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.tmp = tmp_path
        self.sip_port = free_udp_port()
        self.gateway_port = free_udp_port()

    def __call__(self, line: str) -> str:
        venv_bin = pathlib.Path(sys.executable).parent
        replacements = [
            ("/opt/tel400/venv/lib/python3.11/site-packages", sysconfig.get_paths()["purelib"]),
            ("/opt/tel400/venv/bin/", f"{venv_bin}/"),
            ("/opt/tel400", f"{self.tmp}/opt/tel400"),
            ("/var/lib/tel400", f"{self.tmp}/var/lib/tel400"),
            ("/dev/shm/tel400.counters", f"{self.tmp}/counters"),
            ("/tmp/callers.csv", f"{self.tmp}/callers.csv"),
            ("127.0.0.1:5060", f"127.0.0.1:{self.sip_port}"),
            ("127.0.0.1:5070", f"127.0.0.1:{self.gateway_port}"),
            ("-p 5070", f"-p {self.gateway_port}"),
            # Kamailio's run directory and fewer workers: this machine is shared.
            (SYSTEM_PATH, f"{SYSTEM_PATH} TEL400_RUNDIR={self.tmp} TEL400_CHILDREN=2"),
        ]
        for old, new in replacements:
            line = line.replace(old, new)
        return line


def run(line: str, *, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode in ok, (line, done.stdout, done.stderr)
    return done


def test_the_install_lines_name_the_system_python_the_redis_extra_and_both_files():
    apt, venv, pip, copy, store = block("kamailio-install")
    assert apt.startswith("apt-get install ") and "kamailio-python3-modules" in apt
    assert "sip-tester" in apt  # Debian's package of sipp
    assert venv == "/usr/bin/python3 -m venv /opt/tel400/venv"  # the Python Kamailio embeds
    assert pip == "/opt/tel400/venv/bin/pip install '.[redis]'"
    assert "tel400_kemi.py" in copy and "kamailio.cfg" in copy
    assert store.startswith("/opt/tel400/venv/bin/tel400 store import examples/manual.toml sqlite:////")


def test_the_page_installs_starts_and_routes_a_call(tmp_path):
    here = Here(tmp_path)
    (tmp_path / "opt" / "tel400").mkdir(parents=True)  # what the venv line would have made
    for line in block("kamailio-install")[3:]:  # cp and tel400 store import, as written
        run(here(line))
    assert (tmp_path / "var" / "lib" / "tel400" / "plans.db").exists()

    gateway_line, kamailio_line = block("kamailio-start")
    started = run(here(gateway_line), ok=(99,))  # sipp -bg exits 99 once its background process runs
    gateway = re.search(r"PID=\[(\d+)\]", started.stdout)
    assert gateway, "sipp did not start"
    log = open(tmp_path / "kamailio.log", "w")
    kamailio = subprocess.Popen(["bash", "-c", here(kamailio_line)], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (options_ping(here.sip_port) or "").startswith("SIP/2.0 200"):
            assert kamailio.poll() is None, (tmp_path / "kamailio.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "kamailio.log").read_text()
        for line in block("kamailio-check"):
            run(here(line))
        status, headers = invite(here.sip_port, "4001012345", "13901012345")
        # The stand-in gateway's 200 in the plan's hours, its 480 outside them.
        assert status == "SIP/2.0 200 OK" or (status.startswith("SIP/2.0 480")
                                             and headers["x-tel400-reason"] == ["closed"]), status
    finally:
        os.kill(int(gateway.group(1)), signal.SIGKILL)
        if kamailio.poll() is None:
            os.killpg(kamailio.pid, signal.SIGTERM)
            kamailio.wait(timeout=15)
        log.close()
    text = (tmp_path / "kamailio.log").read_text()
    assert "3 numbers from sqlite:///" in text and "Traceback" not in text
