"""Log events on stderr, each line in one write: what every tel400 command's structlog set-up shares."""

from __future__ import annotations

import sys

import structlog


def stderr_logger(*_args) -> structlog.WriteLogger:
    """A ``logger_factory`` for :func:`structlog.configure`: each event is one write of one line to stderr.

    ``sys.stderr`` is looked up per logger, so a replaced stream (a test's,
    a daemon's) is honoured.

    Why not :class:`structlog.PrintLogger`: ``print`` writes the message and
    its newline separately, and with Python unbuffered
    (``PYTHONUNBUFFERED=1``, as most container images set it) each is a
    system call.  The workers of ``--workers N`` share their parent's stderr
    pipe, so another worker's line could fall between the two: two events on
    one line, then an empty one, which log collectors split wrongly.  One
    write of at most ``PIPE_BUF`` (4,096) bytes to a pipe is never
    interleaved.
    """
    return structlog.WriteLogger(sys.stderr)
