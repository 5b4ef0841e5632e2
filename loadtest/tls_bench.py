"""Server CPU per TLS handshake and per small record, in-process, for each c2s TLS backend.

`python -m loadtest.tls_bench [-n 300] [-r 20000] [backend ...]` runs, for each backend, n
full handshakes (a CPython ``ssl`` client over memory BIOs, TLS 1.3, the same self-signed
P-256 certificate the load tool's servers use) and then r record round trips on one session
(a ~300 B stanza in, one out), and prints the *server side's* CPU per operation: the client's
work is done outside the timed calls.

Backends:

* ``ssl`` — `shared.tls.session.TLSSession` over `shared.tls.context.server_context` (the c2s layer:
  CPython's ``ssl``, the system OpenSSL, no session tickets);
* ``ssl-lean`` — the same with a `KeyLog` (``STANZAD_TLS_LEAN_SESSIONS``): OpenSSL's
  handshake, then `shared.tls.records.Records13` on ``cryptography``'s AEADs;
* ``ssl-tickets2`` — the same with OpenSSL's default of two TLS 1.3 session tickets.

In ``ssl-lean`` the records run on OpenSSL until the session is handed over; `records` hands
it over (`TLSSession.hibernate`) before timing, so they measure `Records13`.  The pyOpenSSL
backends measured in session 3 (loadtest/RESULTS.md) are no longer here.

`loadtest.conn_memory` measures the same backends' memory per idle session.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Callable
from typing import Final

from loadtest import tls_harness
from loadtest.tls_harness import STANZA, Client, Session, certificate
from shared.tls.context import server_context
from shared.tls.keylog import KeyLog
from shared.tls.session import TLSSession

MAX_SECONDS: Final = 20.0  # per backend and phase: the loops stop early past it


def makers(cert: str, key: str) -> dict[str, Callable[[], Session]]:
    """A new server-side session of each backend."""
    plain = server_context(cert, key)
    tickets = server_context(cert, key, session_tickets=2)
    lean = server_context(cert, key)
    keylog = KeyLog()
    keylog.attach(lean)
    return {
        "ssl": lambda: TLSSession(plain),
        "ssl-lean": lambda: TLSSession(lean, keylog=keylog),
        "ssl-tickets2": lambda: TLSSession(tickets),
    }


def handshakes(make: Callable[[], Session], client: Client, n: int) -> float:
    """Server CPU seconds per handshake (`tls_harness.handshakes`, bounded by MAX_SECONDS)."""
    return tls_harness.handshakes(make, client, n, MAX_SECONDS)


def records(make: Callable[[], Session], client: Client, n: int) -> float:
    """Server CPU seconds per record round trip (`tls_harness.records`)."""
    return tls_harness.records(make, client, n, MAX_SECONDS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="handshakes per backend (max 5,000)")
    ap.add_argument("-r", type=int, default=20_000, help="records per backend (max 200,000)")
    cert, key = certificate("stanzad-tlsbench-")
    backends = makers(cert, key)
    ap.add_argument("backends", nargs="*", help=f"of {', '.join(backends)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.backends) - set(backends)
    if unknown:
        ap.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    n, r = max(1, min(args.n, 5000)), max(1, min(args.r, 200_000))
    client = Client(cert)
    print(f"server CPU; {n:,} handshakes (TLS 1.3, P-256 certificate), {r:,} records of "
          f"{len(STANZA)} B in + out")
    print("| backend | OpenSSL | handshakes/CPU-s | µs/handshake | records/CPU-s | µs/record |")
    print("|---|---|---|---|---|---|")
    for name in args.backends or backends:
        make = backends[name]
        version = ssl.OPENSSL_VERSION
        hs = handshakes(make, client, n)
        rec = records(make, client, r)
        print(f"| {name} | {version.split()[1]} | {1 / hs:,.0f} | {hs * 1e6:.0f} | "
              f"{1 / rec:,.0f} | {rec * 1e6:.2f} |", flush=True)


if __name__ == "__main__":
    main()
