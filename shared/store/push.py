"""XEP-0357 push registrations in PostgreSQL: the app servers (a JID and a node) an account
enabled, what to send them, and for which of its sessions."""

from __future__ import annotations

from dataclasses import dataclass

from shared.store.pg.database import Database


@dataclass(frozen=True, slots=True)
class PushRegistration:
    service: str  # the app server's JID (XEP-0357 §5 'jid')
    node: str
    resource: str = ""  # the session that enabled it
    options: bytes | None = None  # the publish-options form, serialised, as sent along
    include_body: bool = False  # the user allowed the message body in notifications


class PushStore:
    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service

    async def enable(self, owner: str, reg: PushRegistration) -> None:
        """XEP-0357 §5: a second enable of the same (jid, node) replaces the first."""
        await self._db.execute(
            "push_enable",
            "INSERT INTO push_registrations (owner, service, node, resource, options, "
            "include_body) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner, service, node) "
            "DO UPDATE SET resource = excluded.resource, options = excluded.options, "
            "include_body = excluded.include_body, created_at = now()",
            owner, reg.service, reg.node, reg.resource, reg.options, reg.include_body)

    async def disable(self, owner: str, service: str, node: str | None) -> int:
        """XEP-0357 §6: one node of the app server, or all of them (no node); how many."""
        if node is None:
            status = await self._db.execute(
                "push_disable", "DELETE FROM push_registrations WHERE owner = $1 AND "
                "service = $2", owner, service)
        else:
            status = await self._db.execute(
                "push_disable", "DELETE FROM push_registrations WHERE owner = $1 AND "
                "service = $2 AND node = $3", owner, service, node)
        return int(status.rpartition(" ")[2] or 0)

    async def registrations(self, owner: str) -> list[PushRegistration]:
        rows = await self._db.fetch(
            "push_get", "SELECT service, node, resource, options, include_body "
            "FROM push_registrations WHERE owner = $1 ORDER BY created_at", owner)
        return [PushRegistration(r["service"], r["node"], r["resource"],
                                 bytes(r["options"]) if r["options"] is not None else None,
                                 r["include_body"]) for r in rows]
