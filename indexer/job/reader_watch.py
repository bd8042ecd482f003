"""A reader process's death reported even where the main thread cannot hear of it.

torch's DataLoader learns that a reader died from its SIGCHLD handler, which raises in the
main thread wherever it is, and from a check of its readers each time a wait for the data
queue times out (5 s). A reader killed while it hands a batch over (its thumbnails travel
in the message: ~200 KB, through a pipe that holds 64 KB) leaves half a message in the
pipe: the main thread reading it waits for the rest, which never comes, and only a signal
can interrupt that read. Where the signal does not reach it (delivered to another of the
job's threads, or its exception lost in a finaliser) the job waited forever (seen once in
CI). `ReaderWatch` checks the readers on a thread of its own; one dead for GRACE_S while the
batches are still being read ends the others and closes this process's end of the pipe:
the read meets the pipe's end, torch reports the dead readers, and `death` says how the
first one died, as torch's SIGCHLD handler would have.
"""

from __future__ import annotations

import os
import signal
import threading
import time

WATCH_S = 0.5  # how often the readers are checked
GRACE_S = 2.0  # how long torch's own report of a death is waited for before the watch acts


class ReaderWatch:
    def __init__(self, loader_iter):
        """Watch the reader processes of a DataLoader iterator (torch's private `_workers`
        and `_worker_result_queue`: none there, nothing is watched) until `stop()`."""
        self._workers = list(getattr(loader_iter, "_workers", []))
        self._pipe = getattr(getattr(loader_iter, "_worker_result_queue", None), "_writer",
                             None)
        self.death: str | None = None  # torch's words for the first reader seen dead
        self._stop = threading.Event()
        if self._workers and self._pipe is not None:
            threading.Thread(target=self._run, name="satfind-reader-watch",
                             daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        seen = 0.0
        while not self._stop.wait(WATCH_S):
            if self.death is None:
                self.death, seen = _first_death(self._workers), time.monotonic()
            elif time.monotonic() - seen >= GRACE_S:
                for w in self._workers:
                    w.kill()  # SIGKILL; nothing happens to one that is dead already
                self._pipe.close()  # the readers' ends went with them: the read ends
                return


def _first_death(workers) -> str | None:
    """How the first of `workers` that died did, in torch's words; None while all live. The
    dead are not waited for (WNOWAIT): torch's own checks still see them."""
    for w in workers:
        try:
            got = os.waitid(os.P_PID, w.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # waited for already: torch has seen it
            continue
        if got is None:
            continue
        if got.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return (f"DataLoader worker (pid {w.pid}) is killed by signal: "
                    f"{signal.strsignal(got.si_status)}")
        if got.si_status != 0:
            return (f"DataLoader worker (pid {w.pid}) exited unexpectedly with exit code "
                    f"{got.si_status}")
    return None
