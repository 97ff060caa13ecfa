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
