"""XEP-0363 upload slots and files in PostgreSQL (services/upload): quotas per account,
the metadata a GET needs, and what the cleanup removes."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import asyncpg

from shared.store.pg.database import Database


@dataclass(frozen=True, slots=True)
class UploadFile:
    id: str
    owner: str
    filename: str
    size: int
    content_type: str
    put_expires_at: float  # Unix time
    expires_at: float
    uploaded: bool


def _ts(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


def _row(r: asyncpg.Record) -> UploadFile:
    return UploadFile(r["id"], r["owner"], r["filename"], int(r["size"]), r["content_type"],
                      r["put_expires_at"].timestamp(), r["expires_at"].timestamp(),
                      bool(r["uploaded"]))


class UploadStore:
    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service

    async def reserve(self, f: UploadFile, quota: int, now: float) -> bool:
        """Record a slot unless the owner's live files and open slots would then pass
        ``quota`` bytes (0: no quota); False when they would.  One transaction holding the
        owner's advisory lock, so two requests at once cannot both pass."""
        async with self._db.transaction("upload_reserve") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f.owner)
            if quota:
                used = await conn.fetchval(
                    "SELECT coalesce(sum(size), 0) FROM upload_files WHERE owner = $1 AND "
                    "expires_at > $2 AND (uploaded OR put_expires_at > $2)", f.owner, _ts(now))
                if int(used) + f.size > quota:
                    return False
            await conn.execute(
                "INSERT INTO upload_files (id, owner, filename, size, content_type, "
                "put_expires_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                f.id, f.owner, f.filename, f.size, f.content_type, _ts(f.put_expires_at),
                _ts(f.expires_at))
        return True

    async def get(self, file_id: str) -> UploadFile | None:
        row = await self._db.fetchrow("upload_get", "SELECT * FROM upload_files WHERE id = $1",
                                      file_id)
        return _row(row) if row is not None else None

    async def mark_uploaded(self, file_id: str) -> bool:
        """The bytes arrived; False when the slot was already used (or is gone)."""
        status = await self._db.execute(
            "upload_done", "UPDATE upload_files SET uploaded = true WHERE id = $1 AND NOT "
            "uploaded", file_id)
        return status.rpartition(" ")[2] == "1"

    async def expired(self, now: float, limit: int = 1000) -> list[UploadFile]:
        """Files past their expiry, and slots whose PUT URL expired unused (those may still
        hold bytes in an object store that the service did not see arrive)."""
        rows = await self._db.fetch(
            "upload_expired", "SELECT * FROM upload_files WHERE expires_at <= $1 OR (NOT "
            "uploaded AND put_expires_at <= $1) ORDER BY expires_at LIMIT $2", _ts(now), limit)
        return [_row(r) for r in rows]

    async def delete(self, file_id: str) -> None:
        await self._db.execute("upload_delete", "DELETE FROM upload_files WHERE id = $1",
                               file_id)

    async def used(self, owner: str, now: float) -> int:
        value = await self._db.fetchval(
            "upload_used", "SELECT coalesce(sum(size), 0) FROM upload_files WHERE owner = $1 "
            "AND expires_at > $2 AND (uploaded OR put_expires_at > $2)", owner, _ts(now))
        return int(value)
