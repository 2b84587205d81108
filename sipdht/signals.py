"""Stop signals that arrive while `sipdht run` (or `node`) is still loading its modules.

They are remembered and honoured as a clean stop once the event loop runs, instead of
killing the process half-started (exit -2). Kept free of imports so that `python -m sipdht`
can install it before anything slow is loaded.
"""

from __future__ import annotations

import signal

early: list[int] = []
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _remember(signum: int, _frame: object) -> None:
    early.append(signum)


def catch() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)


def release() -> None:
    """Back to the defaults (for commands that a Ctrl-C should interrupt), and act on a
    signal that came in the meantime."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if early:
        raise KeyboardInterrupt
