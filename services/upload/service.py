"""The HTTP upload service (XEP-0363): slots over XMPP, files over HTTP.

XMPP side: the upload domain (``upload.<domain>``, STANZAD_UPLOAD_DOMAIN) is a local service
domain (shared/bus/destinations.py), so clients' IQs to it arrive on ``stanzad.upload.<p>``
like a room's reach the muc service; the one partition of the domain is held by one process
at a time (leases of role ``upload``), which answers disco#info (XEP-0363 §2: the identity,
the feature and max-file-size in the XEP-0128 form) and slot requests (§4): a local user's
request within the size limit (§5 `file-too-large` with the limit otherwise) and the
account's quota gets a slot, recorded in PostgreSQL (shared/store/uploads.py), with a PUT and
a GET URL signed for it (files.py).

HTTP side (aiohttp, every upload process; any of them verifies any URL with the cluster's
secret): PUT stores the body when its URL, size and type match the slot (filesystem storage),
GET serves it with a safe type and Content-Disposition (or, with S3 storage, redirects to a
presigned URL of the store, as the PUT URL of the slot already points at the store: bytes
never pass through the pods), OPTIONS answers CORS preflights.  The holder of the partition
removes expired files and unused slots every STANZAD_UPLOAD_CLEANUP_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Final
from xml.sax.saxutils import quoteattr

from aiohttp import web
from lxml import etree

from shared.bus import subjects
from shared.bus.envelope import Envelope, Kind, decoded
from shared.cluster.partitioned import PartitionedService
from shared.runtime.settings import ConfigError, UploadSettings
from shared.store import keys
from shared.store.pg.database import DatabaseUnavailable
from shared.store.uploads import UploadFile, UploadStore
from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StanzaErrorType, StreamError
from shared.xmpp.parser import parse_fragment
from shared.xmpp.stanza import error_reply, iq_result

from . import files, metrics
from .storage import FsStorage, S3Storage, Storage

log = logging.getLogger(__name__)

SERVICE: Final = "upload"
MAX_PAYLOAD_BYTES: Final = 16 * 1024
REDIRECT_TTL_S: Final = 300  # a presigned GET of the store, fresh for each GET of ours
CHUNK: Final = 64 * 1024


class UploadService(PartitionedService):
    name = SERVICE
    role = "upload"
    uses_database = True  # slots and quotas

    def __init__(self, settings: UploadSettings) -> None:
        super().__init__(
            settings,
            settings.upload_id or f"upload-{secrets.token_hex(4)}",
            lambda p: [subjects.upload(p)],
            metrics.PARTITIONS.set,
        )
        self.upload_settings = settings
        self.domains = {d for d, f in settings.service_domains.items() if f == "upload"}
        self.store = UploadStore(self.db, SERVICE)
        self.secret = b""
        self.origins = [o.strip() for o in settings.upload_cors_origins.split(",") if o.strip()]
        self.storage: Storage
        if settings.upload_storage == "s3":
            if not settings.upload_s3_bucket:
                raise ConfigError("STANZAD_UPLOAD_S3_BUCKET: needed with s3 storage")
            self.storage = S3Storage(
                settings.upload_s3_bucket, settings.upload_s3_endpoint,
                settings.upload_s3_region, settings.upload_s3_access_key.get_secret_value(),
                settings.upload_s3_secret_key.get_secret_value(), settings.upload_put_ttl_s,
                self.origins)
        else:
            self.storage = FsStorage(settings.upload_dir)
        self.base_url = (settings.upload_public_url.rstrip("/")
                         or f"http://{settings.upload_http_host}:{settings.upload_http_port}")
        self.http_port = 0
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.upload_settings
        self.secret = await self._secret()
        if isinstance(self.storage, S3Storage):
            await self.storage.setup()
        app = web.Application(client_max_size=s.upload_max_file_bytes + 1)
        app.add_routes([
            web.put("/upload/{id}/{name}", self.http_put),
            web.get("/upload/{id}/{name}", self.http_get),
            web.options("/upload/{id}/{name}", self.http_options),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.upload_http_host, s.upload_http_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else s.upload_http_port
        log.info("%s serving uploads on http://%s:%d (public %s, %s storage) for %s",
                 self.member_id, s.upload_http_host, self.http_port, self.base_url,
                 s.upload_storage, ", ".join(sorted(self.domains)) or "no domain")
        await super().start()
        self.tasks.append(asyncio.create_task(self._cleanup_loop()))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await super().stop()

    async def _secret(self) -> bytes:
        configured = self.upload_settings.upload_secret.get_secret_value()
        if configured:
            return configured.encode()
        await self.redis.set(keys.upload_secret(), secrets.token_hex(32), nx=True)
        return bytes(await self.redis.get(keys.upload_secret()))

    # ---- XMPP: disco and slot requests -----------------------------------------------------

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        for env in decoded(batch):
            if env.kind is not Kind.IQ or env.type not in ("get", "set"):
                continue  # messages, presence, answers: nothing to do (RFC 6120 §8.3.1)
            try:
                el = parse_fragment(env.payload, MAX_PAYLOAD_BYTES)
            except StreamError:
                continue
            try:
                await self._iq(env, el)
            except StanzaError as err:
                await self._answer_error(env, el, err)
            except DatabaseUnavailable as exc:
                log.warning("slot request failed: %s", exc)
                metrics.SLOTS.labels("error").inc()
                await self._answer_error(
                    env, el, StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT))
            except Exception:
                log.exception("upload request failed")
                await self._answer_error(
                    env, el, StanzaError(StanzaErrorCondition.INTERNAL_SERVER_ERROR))

    async def _iq(self, env: Envelope, el: etree._Element) -> None:
        child = el[0] if len(el) else None
        tag = child.tag if child is not None and isinstance(child.tag, str) else ""
        if env.to not in self.domains:  # no entities below the service
            raise StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)
        if env.type == "get" and tag == f"{{{ns.DISCO_INFO}}}query" and not child.get("node"):
            await self._result(env, self._disco_info())
        elif env.type == "get" and tag == f"{{{ns.DISCO_ITEMS}}}query":
            await self._result(env, f'<query xmlns="{ns.DISCO_ITEMS}"/>')
        elif env.type == "get" and tag == f"{{{ns.PING}}}ping":
            await self._result(env, "")
        elif env.type == "get" and tag == f"{{{ns.HTTP_UPLOAD}}}request":
            assert child is not None
            await self._result(env, await self._slot(env, child))
        else:
            raise StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)

    def _disco_info(self) -> str:
        """XEP-0363 §2: identity store/file, the feature, max-file-size (XEP-0128)."""
        limit = self.upload_settings.upload_max_file_bytes
        return (
            f'<query xmlns="{ns.DISCO_INFO}">'
            '<identity category="store" type="file" name="HTTP File Upload"/>'
            f'<feature var="{ns.HTTP_UPLOAD}"/><feature var="{ns.DISCO_INFO}"/>'
            f'<x xmlns="{ns.DATA}" type="result">'
            f'<field var="FORM_TYPE" type="hidden"><value>{ns.HTTP_UPLOAD}</value></field>'
            f'<field var="max-file-size"><value>{limit}</value></field></x></query>'
        )

    async def _slot(self, env: Envelope, request: etree._Element) -> str:
        """XEP-0363 §4, §5."""
        s = self.upload_settings
        if env.from_domain != self.settings.domain:  # our users' files only
            metrics.SLOTS.labels("not-allowed").inc()
            raise StanzaError(StanzaErrorCondition.NOT_ALLOWED,
                              "only local users may upload here")
        size_text = (request.get("size") or "").strip()
        name = files.clean_name(request.get("filename") or "")
        if not size_text.isdigit() or not request.get("filename"):
            metrics.SLOTS.labels("bad-request").inc()
            raise StanzaError(StanzaErrorCondition.BAD_REQUEST, "filename and size required")
        size = int(size_text)
        if size > s.upload_max_file_bytes:
            metrics.SLOTS.labels("file-too-large").inc()
            limit = s.upload_max_file_bytes
            raise StanzaError(
                StanzaErrorCondition.NOT_ACCEPTABLE,
                f"File too large. The maximum file size is {limit} bytes",
                StanzaErrorType.MODIFY,
                extra=f'<file-too-large xmlns="{ns.HTTP_UPLOAD}">'
                      f"<max-file-size>{limit}</max-file-size></file-too-large>")
        now = time.time()
        f = UploadFile(secrets.token_urlsafe(16), env.from_bare, name, size,
                       files.clean_type(request.get("content-type")),
                       now + s.upload_put_ttl_s, now + s.upload_retention_s, False)
        if not await self.store.reserve(f, s.upload_quota_bytes, now):
            metrics.SLOTS.labels("quota").inc()
            raise StanzaError(StanzaErrorCondition.RESOURCE_CONSTRAINT,
                              f"Quota of {s.upload_quota_bytes} bytes reached",
                              StanzaErrorType.WAIT)
        metrics.SLOTS.labels("granted").inc()
        put = (self.storage.put_url(f) if self.storage.direct else
               files.url(self.base_url, self.secret, "PUT", f.id, f.filename,
                         int(f.put_expires_at), f.size, f.content_type))
        get = files.url(self.base_url, self.secret, "GET", f.id, f.filename,
                        int(f.expires_at))
        return (f'<slot xmlns="{ns.HTTP_UPLOAD}"><put url={quoteattr(put)}/>'
                f"<get url={quoteattr(get)}/></slot>")

    async def _result(self, env: Envelope, child: str) -> None:
        await self.route(Envelope(Kind.IQ, to=env.from_, from_=env.to, type="result",
                                  id=env.id, origin=SERVICE,
                                  payload=iq_result(env.id, env.from_, env.to, child)))

    async def _answer_error(self, env: Envelope, el: etree._Element, err: StanzaError) -> None:
        payload = error_reply(el, err, to=env.from_, from_=env.to)
        await self.route(Envelope(Kind.IQ, to=env.from_, from_=env.to, type="error",
                                  id=env.id, origin=SERVICE, hops=env.hops + 1,
                                  payload=payload))

    # ---- HTTP ------------------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin", "")
        if "*" in self.origins:
            allowed = "*"
        elif origin in self.origins:
            allowed = origin
        else:
            return {}
        return {"Access-Control-Allow-Origin": allowed, "Vary": "Origin"}

    def _reply(self, request: web.Request, status: int, text: str = "",
               headers: dict[str, str] | None = None) -> web.Response:
        metrics.HTTP.labels(request.method, str(status)).inc()
        return web.Response(status=status, text=text or None,
                            headers={**self._cors(request), **(headers or {})})

    async def http_options(self, request: web.Request) -> web.Response:
        """CORS preflight of a browser's PUT (Content-Type is not a simple header)."""
        return self._reply(request, 204, headers={
            "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "86400",
        })

    async def _file(self, request: web.Request) -> UploadFile | None:
        try:
            return await self.store.get(request.match_info["id"])
        except DatabaseUnavailable:
            raise web.HTTPServiceUnavailable(headers=self._cors(request)) from None

    async def http_put(self, request: web.Request) -> web.Response:
        file_id, name = request.match_info["id"], request.match_info["name"]
        f = await self._file(request)
        q = request.query
        if f is None or f.filename != name or f.uploaded or not files.verify(
                self.secret, "PUT", file_id, name, q.get("expires", ""), q.get("sig", ""),
                time.time(), f.size, f.content_type):
            return self._reply(request, 403, "bad, used or expired upload URL")
        if self.storage.direct:
            return self._reply(request, 405, "upload to the object store")
        if request.content_length is None or request.content_length != f.size:
            status = 413 if (request.content_length or 0) > f.size else 400
            return self._reply(request, status, f"Content-Length must be {f.size}")
        if files.clean_type(request.headers.get("Content-Type")) != f.content_type:
            return self._reply(request, 400, f"Content-Type must be {f.content_type}")

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(CHUNK):
                yield chunk

        try:
            written = await self.storage.write(f, chunks())
        except ValueError:
            return self._reply(request, 413, "more bytes than the slot allows")
        if written != f.size:
            await self.storage.delete(f)
            return self._reply(request, 400, "fewer bytes than Content-Length")
        if not await self.store.mark_uploaded(f.id):
            return self._reply(request, 409, "already uploaded")
        metrics.BYTES.inc(written)
        return self._reply(request, 201)

    async def http_get(self, request: web.Request) -> web.StreamResponse:
        file_id, name = request.match_info["id"], request.match_info["name"]
        q = request.query
        if not files.verify(self.secret, "GET", file_id, name, q.get("expires", ""),
                            q.get("sig", ""), time.time()):
            return self._reply(request, 403, "bad or expired download URL")
        f = await self._file(request)
        if f is None or f.filename != name:
            return self._reply(request, 404)
        if self.storage.direct:  # the store serves the bytes
            location = self.storage.get_url(f, REDIRECT_TTL_S)
            return self._reply(request, 302, headers={"Location": location,
                                                      "Cache-Control": "no-store"})
        path = self.storage.local_path(f)
        if not f.uploaded or not path.exists():
            return self._reply(request, 404)
        served = files.served_type(f.content_type)
        metrics.HTTP.labels(request.method, "200").inc()
        return web.FileResponse(path, headers={
            **self._cors(request),
            "Content-Type": served,
            "Content-Disposition": files.disposition(served, f.filename),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=86400",
        })

    # ---- cleanup ---------------------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.upload_settings.upload_cleanup_interval_s)
            if not self.partitions.held:  # the holder of the domain's partition does it
                continue
            with contextlib.suppress(Exception):
                await self.cleanup(time.time())

    async def cleanup(self, now: float) -> int:
        """Remove expired files and slots whose PUT URL expired unused (an object store may
        hold bytes we did not see arrive: those are kept as uploaded); how many rows went."""
        removed = 0
        for f in await self.store.expired(now):
            if f.expires_at > now and not f.uploaded:  # an unused slot, or a direct upload
                if self.storage.direct and await self.storage.exists(f):
                    await self.store.mark_uploaded(f.id)
                    continue
                why = "unused"
            else:
                why = "expired"
            await self.storage.delete(f)
            await self.store.delete(f.id)
            metrics.DELETED.labels(why).inc()
            removed += 1
        return removed

