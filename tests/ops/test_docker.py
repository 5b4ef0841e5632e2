"""The Dockerfile's promises (no Docker engine here), and its entry point run for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import localservers
from tests.support.cluster import Cluster

ENTRYPOINT = "ops/docker/entrypoint.sh"


@pytest.fixture(scope="module")
def dockerfile(root: Path) -> str:
    return (root / "Dockerfile").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_slim_base_non_root_one_image_with_a_healthcheck(dockerfile: str) -> None:
    ins = _instructions(dockerfile)
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [r for w, r in ins if w == "ENTRYPOINT"] == ['["stanzad-entrypoint"]']
    assert [r for w, r in ins if w == "CMD"] == ['["connection-manager"]']
    health = [r for w, r in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and '"healthcheck"' in health[0]


def test_copied_sources_pass_the_dockerignore(dockerfile: str, root: Path) -> None:
    ignore = (root / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in _instructions(dockerfile):
        if word == "COPY" and "--from=" not in rest:
            sources = [a for a in rest.split() if not a.startswith("--")][:-1]
            for src in sources:
                assert (root / src).exists(), src
                assert any(src == a or src.startswith(a + "/") for a in allowed), src


def _entrypoint(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", str(root / ENTRYPOINT), *args], capture_output=True,
                          env={**os.environ, **env}, timeout=30)


def test_entrypoint_healthcheck_hits_the_side_port(cluster: Cluster, root: Path) -> None:
    side = str(cluster.side_ports["cm-1"])
    assert _entrypoint(root, "healthcheck", STANZAD_HTTP_PORT=side).returncode == 0
    closed = str(localservers.free_port())
    result = _entrypoint(root, "healthcheck", STANZAD_HTTP_PORT=closed)
    assert result.returncode != 0 and b"unhealthy" in result.stderr


@pytest.mark.parametrize(
    ("command", "module"),
    [("connection-manager", "connection_manager"), ("router", "router"),
     ("presence", "presence"), ("roster", "roster"), ("s2s-gateway", "s2s_gateway"),
     ("admin", "admin")],
)
def test_entrypoint_starts_each_service(root: Path, command: str, module: str) -> None:
    """Each command runs its service: an invalid setting stops it with the service's own
    configuration error (exit 2) before it touches NATS or Redis."""
    text = (root / ENTRYPOINT).read_text()
    assert f"{command}) shift; exec python -m services.{module} " in text
    venv_bin = str(Path(sys.executable).parent)
    result = subprocess.run(
        ["sh", str(root / ENTRYPOINT), command], capture_output=True, timeout=30, cwd=root,
        env={**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
             "STANZAD_PARTITIONS": "0"},
    )
    assert result.returncode == 2, result.stderr
    assert b"configuration error: STANZAD_PARTITIONS" in result.stderr


def test_entrypoint_refuses_no_command_and_runs_others(root: Path) -> None:
    assert _entrypoint(root).returncode == 64
    assert _entrypoint(root, "sh", "-c", "ulimit -n").stdout.strip().isdigit()
