"""Critical sections that a Ctrl-C (SIGINT), SIGTERM or a signal handler that raises (torch's
SIGCHLD handler when a DataLoader worker dies) must not cut in half.

Inside `deferred_interrupts()` those signals are recorded instead of acted on; on leaving
the block the first one recorded is delivered (SIGINT raises KeyboardInterrupt as usual).
Only the main thread can install signal handlers: elsewhere the block runs unprotected,
which is fine because signals are only ever delivered to the main thread.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# SIGCHLD too: torch's DataLoader raises from its SIGCHLD handler when a worker dies.
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, object]] = []
    previous = {}

    def hold(signum, frame):
        caught.append((signum, frame))

    for s in _SIGNALS:
        previous[s] = signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if signal.getsignal(s) is hold:  # a handler installed inside the block stays
                signal.signal(s, handler)
        for signum, frame in dict.fromkeys(caught):  # each signal delivered once, in order
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL and signum != signal.SIGCHLD:
                signal.raise_signal(signum)


class StopRequest:
    """Set by the first Ctrl-C / SIGTERM inside `stop_between_steps()`."""

    requested = False

    def check(self) -> None:
        """Call at a safe point: raises KeyboardInterrupt there if a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def stop_between_steps() -> Iterator[StopRequest]:
    """The first SIGINT/SIGTERM only asks to stop (the loop calls `check()` between steps, so
    nothing is cut half-way, not even a fork or a finaliser); a second one stops at once."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def ask(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
