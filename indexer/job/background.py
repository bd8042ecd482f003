"""The store side of the job on its own thread: while the main thread encodes batch i, this
thread writes batch i-1 (rows, float16 copies, ANN codes, parts) and commits every
job.commit_every tiles, behind a bounded queue, so the encoder never waits on disk.

Only this thread touches the IndexWriter while it runs; the job joins it before its own
final commit. An exception here is re-raised in the main thread at its next `put()` or at
`close()`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from indexer.critical import deferred_interrupts

_STOP = object()


class BackgroundWriter:
    def __init__(self, write: Callable, depth: int = 2):
        """`write(*args)` runs on the thread for each `put(*args)`, in order."""
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # raised once, in the main thread
        self._failed = False  # for good: nothing more is written
        self.busy_s = 0.0  # seconds spent writing
        self.cpu_s = 0.0  # of them, this thread's CPU time (the rest: waiting on disk, the
        # GIL, a raster's hash, thumbnails still being encoded)
        self.wait_s = 0.0  # seconds the main thread waited for room in the queue
        self._thread = threading.Thread(target=self._run, name="satfind-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._failed:
                    continue  # failed: drain without writing, until told to stop
                t, c = time.perf_counter(), time.thread_time()
                try:
                    self._write(*job)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    self._error, self._failed = e, True
                self.busy_s += time.perf_counter() - t
                self.cpu_s += time.thread_time() - c
            finally:
                self._queue.task_done()

    def check(self) -> None:
        """Raise (in the calling thread) what the writer thread raised, if anything."""
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def put(self, *args) -> None:
        self.check()
        t = time.perf_counter()
        self._queue.put(args)
        self.wait_s += time.perf_counter() - t

    def drain(self) -> None:
        """Wait until everything queued is written (the writer is then idle: the caller may
        use the store until its next `put`)."""
        t = time.perf_counter()
        self._queue.join()
        self.wait_s += time.perf_counter() - t
        self.check()

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its error if it had one. A
        Ctrl-C meanwhile waits until the queue is written (at most `depth` batches): the
        writer must be idle before anyone else uses the store."""
        with deferred_interrupts():
            self._queue.put(_STOP)
            self._thread.join()
        self.check()
