"""`streamrec demo`: runs headless to a summary, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from streams.embedded import free_port

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_headless_demo_prints_a_summary_with_recommendations_and_copy():
    web = free_port()
    out = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--events", "120", "--headless",
                          "--no-llm", "--rate", "60", "--web-port", str(web)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = next(line for line in out.stdout.splitlines() if line.startswith("summary:"))
    recs = int(re.search(r"recommendations\s+(\d+)", summary).group(1))
    copies = sum(int(n) for n in re.findall(r"(?:llm|template|cache)=(\d+)", summary))
    assert recs == 120 and copies == 120
    assert "Online Retail" in out.stdout and "template copy only" in out.stdout


def test_ctrl_c_stops_every_child():
    web = free_port()
    # as from a terminal: a suite started in the background (``cmd &`` in a script) passes
    # SIGINT down ignored, and a Python started that way never sees Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--no-llm", "--rate", "20",
                             "--web-port", str(web)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ports, lines = [], []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            m = re.search(r"on 127\.0\.0\.1:(\d+)", line)
            if m:
                ports.append(int(m.group(1)))
            if line.startswith("  stream"):
                break
        assert _listening(web), "".join(lines)
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:  # SIGTERM first: the demo stops its children on it
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert len(ports) >= 2  # broker and store
    time.sleep(1)
    assert not [p for p in ports + [web] if _listening(p)], "a child outlived the demo"
