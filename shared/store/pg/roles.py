"""PostgreSQL least privilege: an owner role that runs the migrations and owns the tables,
and an application role that the services use at run time, with only SELECT, INSERT, UPDATE
and DELETE on the tables and USAGE on their sequences (no DDL: it cannot DROP, ALTER or
CREATE a table, nor TRUNCATE one).

`grants` is what a superuser (or the owner itself) runs once in the database;
devtools/localservers.py runs it for the local and test clusters and docs/operations.md
("PostgreSQL roles") shows it for a managed PostgreSQL.  Default privileges make every table
the owner creates later (a new migration) usable by the application role without another
grant.
"""

from __future__ import annotations

import re
from typing import Final

OWNER_ROLE: Final = "stanzad_owner"
APP_ROLE: Final = "stanzad_app"
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]*")


def _check(*names: str) -> None:
    for name in names:
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain role name: {name!r}")


def grants(owner: str = OWNER_ROLE, app: str = APP_ROLE) -> list[str]:
    """The statements, in order, that give ``app`` the rights of a stanzad service in the
    current database's ``public`` schema, whose tables ``owner`` creates."""
    _check(owner, app)
    rows = "SELECT, INSERT, UPDATE, DELETE"
    return [
        # only the owner creates objects in the schema (PUBLIC's CREATE went in PostgreSQL 15
        # already; said again for older servers)
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {app}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
        f"GRANT {rows} ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
        f"GRANT USAGE ON SEQUENCES TO {app}",
        # the tables of the migrations applied before
        f"GRANT {rows} ON ALL TABLES IN SCHEMA public TO {app}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {app}",
    ]
