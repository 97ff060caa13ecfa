"""Every server writes each log event as one line in one write.

Workers (``--workers N``) share their parent's stderr: a pipe to journald,
a container runtime or a test.  A pipe keeps a write of up to PIPE_BUF
bytes whole, so one write per line keeps two workers' lines apart.  Two
writes per line (``print`` does ``message`` then ``"\\n"``, each a system
call when Python runs unbuffered, as ``PYTHONUNBUFFERED=1`` in most
container images makes it) let another worker's line fall between them:
``worker=3 … worker=2\\n\\n``, two events on one line.
"""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from tel400 import cli
from tel400_freeswitch import server as esl_server
from tel400_http import server as http_server


class Writes(io.TextIOBase):
    """A text stream that records each ``write`` call (what an unbuffered stderr passes to the kernel)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)


CONFIGURE = {
    "tel400": cli._configure_logging,
    "tel400-esl": esl_server.configure_logging,
    "tel400-http": lambda: http_server.configure_logging("info"),
}


@pytest.mark.parametrize("command", sorted(CONFIGURE))
def test_each_event_is_one_write_of_one_line(command, monkeypatch):
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    CONFIGURE[command]()
    log = structlog.get_logger("test")
    log.warning("first_event", worker=3)
    log.warning("second_event", worker=2)
    assert len(stderr.calls) == 2, stderr.calls
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in stderr.calls), stderr.calls
    assert "first_event" in stderr.calls[0] and "second_event" in stderr.calls[1]

