"""A private Prosody instance for side-by-side runs (Debian package `prosody`, 0.12).

Started by the tool on a free loopback port with its own config, data directory and
self-signed certificate; settings equivalent to the stanzad benchmark cluster: STARTTLS
required, 10,000 SCRAM iterations (internal_hashed), rate limits off, in-band registration
on without throttling (that is how the accounts are created).  Prosody 0.12 offers
SCRAM-SHA-1 and PLAIN, not SCRAM-SHA-256 (docs/interop.md), so comparisons use SCRAM-SHA-1.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devtools import localservers
from tests.support.tls import write_certificate

CONFIG = """\
daemonize = false
run_as_root = true
pidfile = "{work}/prosody.pid"
data_path = "{work}/data"
log = {{ warn = "{work}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = true
authentication = "internal_hashed"
default_iteration_count = {iterations}
allow_registration = true
min_seconds_between_registrations = 0
registration_throttle_max = 1000000
limits = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "register"; "presence";
                    "posix" }}
modules_disabled = {{ "s2s"; "offline"; "c2s_limits"; "limits" }}
admin_socket = "{work}/prosody.sock"
certificates = "{work}/certs"
ssl = {{ certificate = "{work}/certs/localhost.crt"; key = "{work}/certs/localhost.key" }}
VirtualHost "{domain}"
{components}"""

# multi-user chat for loadtest/muc_bench.py: no history on join, no limits of its own
MUC_COMPONENT = """\
Component "conference.{domain}" "muc"
  max_history_messages = 0
  muc_room_default_history_length = 0
  muc_room_locking = false
"""


def available() -> bool:
    return shutil.which("prosody") is not None


@dataclass
class Prosody:
    workdir: Path
    port: int
    domain: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        path = self.workdir / "prosody.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def start(domain: str = "localhost", iterations: int = 10_000, muc: bool = False) -> Prosody:
    """``muc``: with a MUC component on conference.<domain>."""
    binary = shutil.which("prosody")
    if binary is None:
        raise RuntimeError("prosody is not installed (Debian package 'prosody')")
    work = Path(tempfile.mkdtemp(prefix="loadtest-prosody-"))
    (work / "data").mkdir()
    write_certificate(work / "certs" / "localhost.crt", work / "certs" / "localhost.key", domain)
    port = localservers.free_port()
    cfg = work / "prosody.cfg.lua"
    cfg.write_text(CONFIG.format(work=work, port=port, domain=domain, iterations=iterations,
                                 components=MUC_COMPONENT.format(domain=domain) if muc else ""))
    out = open(work / "stdout.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([binary, "--config", str(cfg), "-F"], stdout=out,
                            stderr=subprocess.STDOUT, cwd=work)
    try:
        localservers.wait_port("127.0.0.1", port, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        proc.kill()
        text = (work / "stdout.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"prosody did not start: {exc}\n{text}") from None
    return Prosody(work, port, domain, proc)
