"""A fork server for `satfind-index` runs: imports torch and the project once, then forks a
real child process per run (`python -m tests.zygote`). Signals sent to a child hit a real
process at a real point of its work; only the ~5 s of imports are shared, which is what lets
the CI reliability suite kill 20 runs in well under a minute each.

Protocol (JSON lines): stdin gets {"args": [...], "stdout": path, "stderr": path} (and
"killpoint": a tests/killpoint.py scenario, installed in the child before the run); stdout
answers {"pid": N} when the child is started and {"pid": N, "exit": code} when it ends
(code < 0: killed by that signal). No torch code runs before a fork (no thread pools yet).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading


def _child(args: list[str], out: str, err: str, killpoint: str = "") -> None:
    os.setpgid(0, 0)  # the run and its reader processes form one process group
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 1
    try:
        if killpoint:  # SIGKILLed at that point inside the store (tests/killpoint.py)
            from tests import killpoint as kp

            kp._install(killpoint)
        from indexer import cli

        code = cli.main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss  # noqa: F401
    import open_clip  # noqa: F401
    import rasterio  # noqa: F401
    import torch  # noqa: F401

    import indexer.cli  # noqa: F401

    lock = threading.Lock()

    def say(msg: dict) -> None:
        with lock:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()

    def reap(pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        say({"pid": pid, "exit": code})

    say({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req["args"], req["stdout"], req["stderr"], req.get("killpoint", ""))
        say({"pid": pid})
        threading.Thread(target=reap, args=(pid,), daemon=True).start()


if __name__ == "__main__":
    main()
