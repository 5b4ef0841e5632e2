"""One PostgreSQL server per test process (devtools.localservers.LocalPostgres), on a free
loopback port with its data in a temporary directory; each cluster gets a database of its own.

The `postgres` fixture (tests/conftest.py) starts it for the session and stops it at the end;
a cluster made outside pytest (the load tools) starts it on first use, stopped at exit.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path

from devtools import localservers

_lock = threading.Lock()
_server: localservers.LocalPostgres | None = None
_names = itertools.count(1)
# Tests trade durability for speed (fsync off); the load tools measure what users deploy and
# call `durable()` before the first cluster.
_durable = False


def durable() -> None:
    """The server this process starts keeps PostgreSQL's default durability (fsync on)."""
    global _durable
    _durable = True


def server() -> localservers.LocalPostgres:
    """The process's PostgreSQL server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            workdir = Path(tempfile.mkdtemp(prefix="stanzad-pg-"))
            pg = localservers.LocalPostgres(workdir / "data", localservers.free_port(),
                                            durable=_durable)
            pg.start(workdir / "postgres.log")
            _server = pg
            atexit.register(stop)
        return _server


def pid() -> int | None:
    """The postmaster's pid, once the server runs (its backends are its children)."""
    with _lock:
        proc = _server.proc if _server is not None else None
    return proc.pid if proc is not None and proc.poll() is None else None


def new_database() -> str:
    """A fresh, empty database on the process's server; its URL."""
    return server().create_database(f"stanzad_{os.getpid()}_{next(_names)}")


def new_database_with_roles() -> tuple[str, str]:
    """A fresh database owned by the owner role, with the application role's grants
    (shared/store/pg/roles.py): (owner URL, application URL)."""
    pg = server()
    name = f"stanzad_{os.getpid()}_{next(_names)}"
    pg.create_database(name)
    return pg.setup_roles(name)


def stop() -> None:
    global _server
    with _lock:
        pg, _server = _server, None
    if pg is not None:
        pg.stop()
        shutil.rmtree(pg.datadir.parent, ignore_errors=True)
