"""Command-line options that tel400's servers share (tel400-http, tel400-esl).

Each server builds its own parser; what both offer is declared here once, so
that the two cannot drift apart and neither adapter imports the other.
"""

from __future__ import annotations

import argparse

from . import pins


def add_pin_options(p: argparse.ArgumentParser) -> None:
    """The PIN policy's options (docs/limits.md, "PIN guessing")."""
    default_lockout = f"{pins.NUMBER_LOCKOUT_FAILURES}/{pins.NUMBER_LOCKOUT_WINDOW_S}"
    p.add_argument("--pin-number-lockout", metavar="FAILURES/SECONDS", default=None,
                   help="wrong PINs to one number from all callers that lock it for everyone, and the window "
                        f"(default {default_lockout}; 0/1 turns it off)")
    p.add_argument("--pin-derivations", type=int, default=None, metavar="N",
                   help="hashed PINs checked at a time; more are answered backend_error "
                        f"(default {pins.MAX_DERIVATIONS})")


def pin_policy(args: argparse.Namespace) -> pins.PinPolicy:
    """The :class:`tel400.pins.PinPolicy` of the command line (``ValueError`` if it makes none)."""
    return pins.PinPolicy.from_options(args.pin_number_lockout, args.pin_derivations)


def add_worker_options(p: argparse.ArgumentParser) -> None:
    """Worker processes (docs/deploy.md, "Workers")."""
    from .workers import Policy

    default = Policy()
    g = p.add_argument_group("worker processes (docs/deploy.md, \"Workers\")")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes serving the one port (default 1: this process serves, nothing forked); "
                        "N > 1 needs shared counters (shm:// or redis://)")
    g.add_argument("--calls", metavar="URL",
                   help="where calls in progress are kept until their end: memory://, sqlite:///path, "
                        "redis://… (shared by the workers; the default depends on the server: docs/deploy.md)")
    g.add_argument("--crash-limit", metavar="DEATHS/SECONDS",
                   default=f"{default.crash_limit}/{default.crash_window_s:g}",
                   help="with --workers: this many worker deaths within this many seconds are a crash loop; "
                        "the parent then stops the others and exits 1 (default %(default)s)")


#: The most worker processes one server forks (each has its socket, router and compiled plans).
MAX_WORKERS = 256


def worker_policy(args: argparse.Namespace, grace_s: float) -> "Policy":
    """The supervisor's :class:`tel400.workers.Policy` (``ValueError`` if the options make none).

    Also refuses per-process counters with more than one worker: each worker
    would count on its own and every cap would be N times too large.
    """
    from .workers import Policy

    if args.workers < 1:
        raise ValueError(f"--workers: expected at least 1, got {args.workers}")
    if args.workers > MAX_WORKERS:
        raise ValueError(f"--workers: at most {MAX_WORKERS}, got {args.workers} (one per core is the most that helps)")
    if args.workers > 1 and str(args.counters).lower().startswith("memory:"):
        raise ValueError(f"--workers {args.workers} needs counters the workers share: --counters shm:///path "
                         f"(this host) or redis://host/db; {args.counters} counts in each process, so every "
                         "cap would be counted once per worker")
    return Policy.parse_crash_limit(args.crash_limit, stop_timeout_s=grace_s + 10)


def open_call_registry(spec: str | None, **bounds):
    """The calls in progress ``--calls`` names (``None``: this process's memory); ``ValueError`` naming it.

    ``bounds``: ``max_calls``, ``max_age_s`` (:func:`tel400.calls.open_calls`' defaults otherwise).
    """
    from .calls import open_calls

    try:
        return open_calls(spec, **bounds)
    except ValueError as exc:
        raise ValueError(f"--calls: {str(exc).removeprefix('calls: ')}") from None
