"""Critical sections that a Ctrl-C (SIGINT) or SIGTERM must not cut in half.

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

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
            signal.signal(s, handler)
        if caught:
            signum, frame = caught[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
