"""A connection manager with an embedded router reads the router's settings too: a bad one
stops it at start with an error naming the variable, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_bad_router_setting_of_an_embedded_router_names_the_variable() -> None:
    env = {**os.environ, "STANZAD_EMBEDDED_ROUTER": "true", "STANZAD_CACHE_SIZE": "-1"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.connection_manager"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "configuration error: STANZAD_CACHE_SIZE" in proc.stderr
    assert "Traceback" not in proc.stderr
