"""Server CPU as the load tool counts it (loadtest/procstat.py): PostgreSQL's work is done
by its backends, so its CPU is the postmaster's tree, exited children included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from loadtest import procstat

BURN = "n = 0\nfor i in range(3_000_000):\n    n += i\n"


def test_a_process_tree_counts_its_live_and_exited_children() -> None:
    me = os.getpid()
    before = procstat.tree_cpu_seconds(me)
    subprocess.run([sys.executable, "-c", BURN], check=True)  # exited and reaped: cutime
    after_exited = procstat.tree_cpu_seconds(me)
    assert after_exited > before
    live = subprocess.Popen([sys.executable, "-c", BURN + "import time\ntime.sleep(30)\n"])
    try:
        deadline = time.monotonic() + 30  # hang guard: the child burns, then sleeps
        while procstat.cpu_seconds(live.pid) == 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.pid in procstat._children(me)
        assert procstat.tree_cpu_seconds(me) >= after_exited + procstat.cpu_seconds(live.pid)
    finally:
        live.kill()
        live.wait()
    assert procstat.tree_cpu_seconds(me) >= procstat.cpu_seconds(me)
