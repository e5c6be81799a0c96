"""Embedded services: SIGTERM to a driver (soak, bench, demo) leaves no child behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

DRIVER = textwrap.dedent("""
    import sys, time
    from streams.embedded import Services, exit_on_sigterm, start_broker, start_redis
    exit_on_sigterm()
    with Services() as s:
        for start in (start_broker, start_redis):
            print(s.start(start()).proc.pid, flush=True)
        print("up", flush=True)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead; only its parent has not reaped it
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_stops_every_service_started_under_services():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
    pids: list[int] = []
    try:
        for line in driver.stdout:
            if line.strip() == "up":
                break
            pids.append(int(line))
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(30) == 143
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in pids if _alive(p)] == [], "SIGTERM left a broker or Redis running"
    finally:
        driver.kill()
        for p in pids:
            if _alive(p):
                os.killpg(p, signal.SIGKILL)
