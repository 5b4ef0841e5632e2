"""`python -m loadtest SCENARIO [options]`: one bounded run against a stanzad cluster that
the tool starts itself on free loopback ports.  See loadtest/RESULTS.md for the commands."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from loadtest import bounds, report
from loadtest.runner import AUTHS, DEFAULT_MECHANISM, MECHANISMS, SERVERS, run
from loadtest.scenarios import SCENARIOS, Options

OUT = Path(__file__).resolve().parent / "out"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--server", choices=SERVERS, default="stanzad",
                   help="prosody, ejabberd: a private instance of that server "
                   "(Debian package), started by the tool")
    p.add_argument("-n", "--connections", type=int, default=100, help="users / connections")
    p.add_argument("--workers", type=int, default=2, help="load processes (more if RLIMIT)")
    p.add_argument("--sources", type=int, default=4, help="loopback source addresses")
    p.add_argument("--concurrency", type=int, default=100, help="logins in flight")
    p.add_argument("--rate", type=float, default=1000, help="total stanzas/s (chat, presence)")
    p.add_argument("--seconds", type=float, default=10, help="send phase bound")
    p.add_argument("--messages", type=int, default=100_000, help="stanza count bound")
    p.add_argument("--contacts", type=int, default=10, help="roster size (presence, scale)")
    p.add_argument("--online-share", type=float, default=1.0,
                   help="scale: share of the users sending initial presence (online)")
    p.add_argument("--presence-rate", type=float, default=100,
                   help="scale: presence broadcasts/s of its presence phase")
    p.add_argument("--hold", dest="hold_s", type=float, default=5,
                   help="idle, scale: seconds held idle")
    p.add_argument("--mechanism", choices=MECHANISMS, default=None,
                   help="SASL mechanism; default: SCRAM-SHA-256, with --auth token "
                   "OAUTHBEARER, with --auth http PLAIN")
    p.add_argument("--auth", choices=AUTHS, default="internal",
                   help="stanzad: the users' domain checks secrets with its stored keys "
                   "(internal), a JWT (token) or an HTTP endpoint (http); loadtest/identity.py")
    p.add_argument("--iterations", type=int, default=10_000, help="SCRAM iterations")
    p.add_argument("--cms", type=int, default=1, help="connection managers")
    p.add_argument("--routers", type=int, default=1,
                   help="router processes; 0: each connection manager embeds a router")
    p.add_argument("--no-archive", dest="archive", action="store_false",
                   help="stanzad with XEP-0313 archiving off on every service")
    p.add_argument("--no-durable", dest="durable", action="store_false",
                   help="stanzad with durable delivery off (core NATS; on is the default)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="leave processes where the kernel puts them (default: every server "
                   "process on one CPU, the load generator on the others)")
    p.add_argument("--ramp-start", type=float, default=500)
    p.add_argument("--ramp-factor", type=float, default=1.5)
    p.add_argument("--ramp-steps", type=int, default=8)
    p.add_argument("--ramp-step-seconds", dest="ramp_step_s", type=float, default=5)
    p.add_argument("--p99-bound-ms", type=float, default=50)
    p.add_argument("--drain", dest="drain_s", type=float, default=5)
    p.add_argument("--sm", action="store_true",
                   help="every client enables XEP-0198 (resume) and answers the server's <r/>")
    p.add_argument("--host", default="127.0.0.1", help="connection managers' address")
    p.add_argument("--out", type=Path, default=None, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def options(ns: argparse.Namespace) -> Options:
    fields = Options.__dataclass_fields__
    given = {k: v for k, v in vars(ns).items() if k in fields}
    if given.get("mechanism") is None:
        given["mechanism"] = DEFAULT_MECHANISM[given.get("auth", "internal")]
    return Options(**given)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    # SIGTERM, and SIGINT even when started in the background (where a shell ignores it),
    # stop the run through its cleanup: workers, cluster and PostgreSQL are stopped
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        opt = options(ns)
        bounds.require_loopback("--host", ns.host)
        doc = run(opt, host=ns.host, quiet=ns.quiet)
    except bounds.BoundsError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    out = ns.out or OUT / f"{opt.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    written = report.write_all(doc, out)
    print(report.markdown(report.clean(doc)))
    print("written: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
