"""`satfind-demo` starts the API and the explorer on loopback and stops both on Ctrl-C or
SIGTERM (a service manager's stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests import chaos
from tests.conftest import OFFLINE_CONFIG, ROOT

pytest.importorskip("streamlit")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_demo_starts_both_and_stops_both(real_index, stop):
    port = chaos.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.demo", "--index", str(real_index[0]), "--config",
         str(OFFLINE_CONFIG), "--port", str(port)],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "satfind explorer:" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "satfind-demo exited early"
        assert f"http://127.0.0.1:{port}" in line
        api = line.split("(API ")[1].split(";")[0]
        assert '"status":"ok"' in (_get(f"{api}/health") or "")
        ui_ok = None
        while time.monotonic() < deadline and ui_ok != "ok":
            ui_ok = _get(f"http://127.0.0.1:{port}/_stcore/health")
            time.sleep(0.3)
        assert ui_ok == "ok"
        proc.send_signal(stop)
        proc.wait(timeout=60)
        assert _get(f"{api}/health") is None  # the API is gone too
        assert _get(f"http://127.0.0.1:{port}/_stcore/health") is None  # and the explorer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
