"""The core budget of a run (loadtest/cores.py): servers on one CPU, the load on the rest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loadtest import cores


def test_split_gives_the_servers_one_cpu_and_the_load_the_others() -> None:
    split = cores.split()
    if len(cores.ALL) < 2:
        assert split is None
        return
    assert split is not None
    assert len(split.server) == 1 and split.server | split.load == cores.ALL
    assert not split.server & split.load


def test_a_server_started_in_the_block_stays_on_the_server_cpu() -> None:
    split = cores.split()
    if split is None:
        pytest.skip("one CPU: nothing to split")
    try:
        with cores.starting_servers(split):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        assert os.sched_getaffinity(0) == split.load
        assert os.sched_getaffinity(child.pid) == split.server
        child.kill()
        child.wait(10)
    finally:
        cores.unpinned()
    assert os.sched_getaffinity(0) == cores.ALL
