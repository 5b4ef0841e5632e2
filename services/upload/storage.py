"""Where uploaded bytes live: a directory (`FsStorage`, the default; several pods need a
shared volume) or an S3-compatible object store (`S3Storage`: the client PUTs to a presigned
URL and GETs are redirected to presigned URLs, so file bytes never pass through the pods).

boto3 is imported only by `S3Storage` (the ``s3`` extra): presigning is local computation;
the few calls that reach the store (HEAD, DELETE, the bucket's CORS) run in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from shared.store.uploads import UploadFile

from . import files

log = logging.getLogger(__name__)


class Storage(Protocol):
    direct: bool  # PUT and GET go to the store itself (presigned URLs)

    def put_url(self, f: UploadFile) -> str: ...
    def get_url(self, f: UploadFile, expires_in: int) -> str: ...
    async def write(self, f: UploadFile, chunks: AsyncIterator[bytes]) -> int: ...
    def local_path(self, f: UploadFile) -> Path: ...
    async def exists(self, f: UploadFile) -> bool: ...
    async def delete(self, f: UploadFile) -> None: ...


class FsStorage:
    """Files under ``root``/<first two characters of the id>/<id>."""

    direct = False

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put_url(self, f: UploadFile) -> str:
        raise NotImplementedError  # the service's own URL

    def get_url(self, f: UploadFile, expires_in: int) -> str:
        raise NotImplementedError

    def local_path(self, f: UploadFile) -> Path:
        return self.root / f.id[:2] / f.id

    async def write(self, f: UploadFile, chunks: AsyncIterator[bytes]) -> int:
        """The body into a temporary file, renamed into place once complete; at most
        ``f.size`` bytes (ValueError beyond, the partial file removed)."""
        target = self.local_path(f)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        written = 0
        try:
            with tmp.open("wb") as out:
                async for chunk in chunks:
                    written += len(chunk)
                    if written > f.size:
                        raise ValueError("more bytes than the slot allows")
                    await asyncio.to_thread(out.write, chunk)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return written

    async def exists(self, f: UploadFile) -> bool:
        return self.local_path(f).exists()

    async def delete(self, f: UploadFile) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.local_path(f).unlink()


class S3Storage:
    """Objects ``<id>`` in one bucket of an S3-compatible store."""

    direct = True

    def __init__(self, bucket: str, endpoint: str, region: str, access_key: str,
                 secret_key: str, put_ttl_s: int, cors_origins: list[str]) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.put_ttl_s = put_ttl_s
        self.cors_origins = cors_origins
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint or None, region_name=region,
            aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    async def setup(self) -> None:
        """Let browsers PUT and GET (CORS on the bucket); best effort, the operator may
        have done it (and we may not be allowed to)."""
        rules = {"CORSRules": [{
            "AllowedOrigins": self.cors_origins, "AllowedMethods": ["GET", "PUT", "HEAD"],
            "AllowedHeaders": ["Content-Type", "Content-Length"], "MaxAgeSeconds": 3600,
        }]}
        try:
            await asyncio.to_thread(self.client.put_bucket_cors, Bucket=self.bucket,
                                    CORSConfiguration=rules)
        except Exception as exc:
            log.warning("could not set the CORS rules of bucket %s: %s", self.bucket, exc)

    def put_url(self, f: UploadFile) -> str:
        # the type and length are signed: the store refuses another body
        return str(self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": f.id, "ContentType": f.content_type,
                    "ContentLength": f.size},
            ExpiresIn=self.put_ttl_s))

    def get_url(self, f: UploadFile, expires_in: int) -> str:
        served = files.served_type(f.content_type)
        return str(self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": f.id, "ResponseContentType": served,
                    "ResponseContentDisposition": files.disposition(served, f.filename)},
            ExpiresIn=expires_in))

    def local_path(self, f: UploadFile) -> Path:
        raise NotImplementedError

    async def write(self, f: UploadFile, chunks: AsyncIterator[bytes]) -> int:
        raise NotImplementedError  # clients PUT to the store

    async def exists(self, f: UploadFile) -> bool:
        try:
            await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=f.id)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def delete(self, f: UploadFile) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=f.id)
