"""The admin API's routes: JSON over HTTP, every route behind ``Authorization: Bearer``.

    GET    /api/v1/status                    routers, partitions, connection managers
    GET    /api/v1/users                     accounts of the served domain
    POST   /api/v1/users                     {"jid", "password"} -> 201, 409 when it exists
    POST   /api/v1/users/import              {"accounts": [...]} -> 200 per-entry results;
                                             413 above MAX_IMPORT entries or IMPORT_MAX_BYTES
    POST   /api/v1/rosters/import            {"rosters": [...]} -> 200 per-roster results
                                             (pushed to online sessions); 413 above
                                             MAX_ROSTER_IMPORT rosters or IMPORT_MAX_BYTES
    PUT    /api/v1/users/{jid}/password      {"password"} -> 204, 404
    DELETE /api/v1/users/{jid}               -> 200 {"kicked": [...]}, 404
    GET    /api/v1/sessions[?limit=N]        bound resources (default limit 1000)
    GET    /api/v1/sessions/{full jid}       one session, 404
    DELETE /api/v1/sessions/{full jid}       kick: 202, 404 (percent-encode the '/')
    GET    /api/v1/domains                   every domain served: settings, source, users
    POST   /api/v1/domains                   {"name", "settings"?} -> 201, 409 when served
    PUT    /api/v1/domains/{name}            {"settings"} -> 200, 404 (run-time domains)
    DELETE /api/v1/domains/{name}            -> 200, 404; new streams get host-unknown

Errors are ``{"error": "..."}`` with 400, 401, 404, 409, 413 or 503.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.bus.client import BusUnavailable
from shared.cluster.admin import (
    AdminError,
    ClusterAdmin,
    count_results,
    import_entries,
    roster_entries,
)
from shared.store.accounts import AccountExists
from shared.store.domains import DomainError, DomainExists

from . import metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADMIN: Final = web.AppKey("admin", ClusterAdmin)
MAX_LIMIT: Final = 100_000
MAX_BODY_BYTES: Final = 64 * 1024  # every route but the import
MAX_IMPORT: Final = 1000  # accounts per import request
# ~330 bytes per account with SCRAM keys (docs/operations.md): 1 KiB each leaves room for
# long JIDs and passwords
IMPORT_MAX_BYTES: Final = MAX_IMPORT * 1024
MAX_ROSTER_IMPORT: Final = 1000  # rosters per import request (and IMPORT_MAX_BYTES)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, indent=1))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request, *fields: str) -> dict[str, str]:
    try:
        doc = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdminError("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise AdminError("the body is not a JSON object")
    out = {}
    for name in fields:
        value = doc.get(name)
        if not isinstance(value, str):
            raise AdminError(f"'{name}' is missing or not a string")
        out[name] = value
    return out


def _auth_middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        operation = route.name or "unknown"
        given = request.headers.get("Authorization", "").encode()
        if token and not hmac.compare_digest(given, expected):
            metrics.REQUESTS.labels(operation, "401").inc()
            return web.json_response(
                {"error": "missing or wrong bearer token"}, status=401,
                headers={"WWW-Authenticate": 'Bearer realm="stanzad-admin"'},
            )
        try:
            response = await handler(request)
        except DomainExists as exc:
            response = _error(409, str(exc))
        except (AdminError, DomainError) as exc:
            response = _error(400, str(exc))
        except BusUnavailable as exc:
            response = _error(503, f"NATS unavailable: {exc}")
        except web.HTTPException as exc:
            response = _error(exc.status, exc.reason)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("admin request failed: %s", exc)
            response = _error(503, "the store is unavailable")
        metrics.REQUESTS.labels(operation, str(response.status)).inc()
        return response

    return middleware


async def status(request: web.Request) -> web.Response:
    return _json(dataclasses.asdict(await request.app[ADMIN].status()))


async def list_users(request: web.Request) -> web.Response:
    return _json({"users": await request.app[ADMIN].list_users()})


async def create_user(request: web.Request) -> web.Response:
    body = await _body(request, "jid", "password")
    try:
        jid = await request.app[ADMIN].create_user(body["jid"], body["password"])
    except AccountExists:
        return _error(409, f"{body['jid']} already exists")
    log.info("admin API created %s", jid)
    return _json({"jid": jid}, 201)


async def _import_body(request: web.Request, too_big: str) -> Any:
    """The JSON body of an import, up to IMPORT_MAX_BYTES; HTTP 413 above."""
    if (request.content_length or 0) > IMPORT_MAX_BYTES:
        raise web.HTTPRequestEntityTooLarge(IMPORT_MAX_BYTES, request.content_length or 0,
                                            reason=too_big)
    try:
        return await request.clone(client_max_size=IMPORT_MAX_BYTES).json()
    except web.HTTPRequestEntityTooLarge:
        raise web.HTTPRequestEntityTooLarge(IMPORT_MAX_BYTES, 0, reason=too_big) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdminError("the body is not JSON") from None


async def import_users(request: web.Request) -> web.Response:
    too_big = (f"at most {MAX_IMPORT} accounts and {IMPORT_MAX_BYTES} bytes per request: "
               "split the list")
    entries = import_entries(await _import_body(request, too_big))
    if len(entries) > MAX_IMPORT:
        return _error(413, too_big)
    results = await request.app[ADMIN].import_accounts(entries)
    counts = count_results(results)
    for outcome, n in counts.items():
        if n:
            metrics.IMPORTED.labels(outcome).inc(n)
    log.info("admin API import: %s", ", ".join(f"{n} {k}" for k, n in counts.items()))
    return _json({**counts, "results": [
        {"jid": r.jid, "result": r.result, **({"reason": r.reason} if r.reason else {})}
        for r in results
    ]})


async def import_rosters(request: web.Request) -> web.Response:
    too_big = (f"at most {MAX_ROSTER_IMPORT} rosters and {IMPORT_MAX_BYTES} bytes per "
               "request: split the list")
    entries = roster_entries(await _import_body(request, too_big))
    if len(entries) > MAX_ROSTER_IMPORT:
        return _error(413, too_big)
    results = await request.app[ADMIN].import_rosters(entries)
    imported = sum(r.result == "imported" for r in results)
    log.info("admin API roster import: %d imported, %d invalid", imported,
             len(results) - imported)
    return _json({"imported": imported, "invalid": len(results) - imported, "results": [
        {"jid": r.jid, "result": r.result, "items": r.items, "pushed": r.pushed,
         **({"reason": r.reason} if r.reason else {})}
        for r in results
    ]})


async def set_password(request: web.Request) -> web.Response:
    body = await _body(request, "password")
    if not await request.app[ADMIN].set_password(request.match_info["jid"], body["password"]):
        return _error(404, "no such account")
    return web.Response(status=204)


async def delete_user(request: web.Request) -> web.Response:
    deleted, kicked = await request.app[ADMIN].delete_user(request.match_info["jid"])
    if not deleted:
        return _error(404, "no such account")
    return _json({"deleted": request.match_info["jid"], "kicked": kicked})


async def list_sessions(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        raise AdminError("limit is not an integer") from None
    sessions = await request.app[ADMIN].sessions(max(0, min(limit, MAX_LIMIT)))
    return _json({"sessions": [dataclasses.asdict(s) for s in sessions]})


async def get_session(request: web.Request) -> web.Response:
    info = await request.app[ADMIN].session(request.match_info["jid"])
    if info is None:
        return _error(404, "no such session")
    return _json(dataclasses.asdict(info))


async def kick_session(request: web.Request) -> web.Response:
    info = await request.app[ADMIN].kick(request.match_info["jid"])
    if info is None:
        return _error(404, "no such session")
    log.info("admin API kicked %s on %s", info.jid, info.cm_id)
    return _json({"kicked": dataclasses.asdict(info)}, 202)


async def _domain_body(request: web.Request) -> dict[str, Any]:
    try:
        doc = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdminError("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise AdminError("the body is not a JSON object")
    return doc


async def list_domains(request: web.Request) -> web.Response:
    return _json({"domains": await request.app[ADMIN].list_domains()})


async def add_domain(request: web.Request) -> web.Response:
    doc = await _domain_body(request)
    name = doc.get("name")
    if not isinstance(name, str):
        raise AdminError("'name' is missing or not a string")
    host = await request.app[ADMIN].add_domain(name, doc.get("settings"))
    log.info("admin API added the domain %s", host.name)
    return _json({"name": host.name, "settings": host.settings_json()}, 201)


async def update_domain(request: web.Request) -> web.Response:
    doc = await _domain_body(request)
    host = await request.app[ADMIN].update_domain(request.match_info["name"],
                                                  doc.get("settings"))
    if host is None:
        return _error(404, "no such domain (added at run time)")
    log.info("admin API changed the settings of %s", host.name)
    return _json({"name": host.name, "settings": host.settings_json()})


async def remove_domain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await request.app[ADMIN].remove_domain(name):
        return _error(404, "no such domain (added at run time)")
    log.info("admin API removed the domain %s", name)
    return _json({"removed": name})


async def list_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[ADMIN].tokens(request.match_info["jid"])
    return _json({"tokens": [dataclasses.asdict(t) for t in tokens]})


async def revoke_tokens(request: web.Request) -> web.Response:
    """All the account's FAST tokens, or one client's (``?client=ID``)."""
    client = request.query.get("client") or None
    revoked = await request.app[ADMIN].revoke_tokens(request.match_info["jid"], client)
    log.info("admin API revoked %d FAST token(s) of %s", revoked, request.match_info["jid"])
    return _json({"revoked": revoked})


def build_app(admin: ClusterAdmin, token: str) -> web.Application:
    """The admin application; an empty token switches authentication off (loopback only,
    see service.check_settings)."""
    app = web.Application(middlewares=[_auth_middleware(token)], client_max_size=MAX_BODY_BYTES)
    app[ADMIN] = admin
    app.add_routes([
        web.get("/api/v1/status", status, name="status"),
        web.get("/api/v1/users", list_users, name="list_users"),
        web.post("/api/v1/users", create_user, name="create_user"),
        web.post("/api/v1/users/import", import_users, name="import_users"),
        web.post("/api/v1/rosters/import", import_rosters, name="import_rosters"),
        web.put("/api/v1/users/{jid}/password", set_password, name="set_password"),
        web.delete("/api/v1/users/{jid}", delete_user, name="delete_user"),
        web.get("/api/v1/users/{jid}/tokens", list_tokens, name="list_tokens"),
        web.delete("/api/v1/users/{jid}/tokens", revoke_tokens, name="revoke_tokens"),
        web.get("/api/v1/sessions", list_sessions, name="list_sessions"),
        web.get("/api/v1/sessions/{jid:.+}", get_session, name="get_session"),
        web.delete("/api/v1/sessions/{jid:.+}", kick_session, name="kick_session"),
        web.get("/api/v1/domains", list_domains, name="list_domains"),
        web.post("/api/v1/domains", add_domain, name="add_domain"),
        web.put("/api/v1/domains/{name}", update_domain, name="update_domain"),
        web.delete("/api/v1/domains/{name}", remove_domain, name="remove_domain"),
    ])
    return app
