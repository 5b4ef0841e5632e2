"""The multi-user chat service: XEP-0045 rooms for the partitions it owns.

Input (``stanzad.muc.<p>``, p = partition of the room's bare JID): messages and IQs that
clients and remote servers send to the muc domain, and the directed presence clients send to
rooms, which the presence service passes on (it remembers it, so the occupant leaves with
unavailable presence when its session ends or its connection manager dies, RFC 6121 §4.6.3).

A room lives in the memory of the process that owns its partition, loaded on its first
stanza: configuration and affiliations from PostgreSQL, occupants (with the connection
manager of each) and history from Redis (shared/store/muc.py).  When the process dies, the
next owner of the partition loads the same room and goes on.  Soft-state writes of a bus batch
leave in one Redis pipeline; configuration and affiliation changes are written to PostgreSQL
before their answers leave.

Output: a groupchat message or an occupant's presence is one FANOUT envelope per connection
manager that hosts occupants (`Broadcast`), the occupants' view of one event at most three
variants (room.py); what one occupant gets alone (the room's presence at join, history, the
subject) is one BATCH envelope to its connection manager; remote occupants and everyone the
room does not know the connection manager of get their stanzas through the routers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import defaultdict
from typing import Final
from xml.sax.saxutils import quoteattr, unescape

from lxml import etree

from shared.bus import subjects
from shared.bus.envelope import STANZA_KINDS, Envelope, Kind, decoded
from shared.cluster.partitioned import PartitionedService
from shared.runtime.settings import MucSettings
from shared.store.archive import ArchiveStore, ArchiveWriter, UnknownId
from shared.store.muc import MucStore
from shared.store.pg.database import DatabaseUnavailable
from shared.xmpp import archive, ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StanzaErrorType, StreamError
from shared.xmpp.parser import parse_fragment
from shared.xmpp.stanza import error_reply, iq_result, with_to

from . import forms, metrics
from .room import MUC, Broadcast, Limits, Occupant, Out, Room, Send, enforce_nick

log = logging.getLogger(__name__)

SERVICE: Final = "muc"
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_BATCH_BYTES: Final = 512 * 1024  # a BATCH envelope stays well under NATS's 1 MiB
MAX_LISTED_ROOMS: Final = 500  # disco#items of the service
_FROM: Final = re.compile(rb""" from=(["'])(.*?)\1""")
_MAM_PREFIX: Final = f"{{{ns.MAM}}}"
_MAM_QUERY: Final = f"{{{ns.MAM}}}query"
_ID: Final = re.compile(rb"""^<[^>]* id=(["'])(.*?)\1""")
_KINDS: Final = {"message": Kind.MESSAGE, "presence": Kind.PRESENCE, "iq": Kind.IQ}


class MucService(PartitionedService):
    name = SERVICE
    role = "muc"
    uses_database = True  # rooms and affiliations

    def __init__(self, settings: MucSettings) -> None:
        super().__init__(
            settings,
            settings.muc_id or f"muc-{secrets.token_hex(4)}",
            lambda p: [subjects.muc(p)],
            metrics.PARTITIONS.set,
        )
        self.muc_settings = settings
        self.domains = {d for d, family in settings.service_domains.items() if family == "muc"}
        self.store = MucStore(self.db, self.redis)
        self.limits = Limits(settings.muc_max_occupants, settings.muc_max_history,
                             settings.muc_message_rate, settings.muc_message_burst,
                             archive=settings.mam_enabled)
        # XEP-0313 §5 room archives: rows written like the routers' (the room decides what
        # is archived, so no account preferences apply: the default is "always")
        self.archive_store = ArchiveStore(self.db, SERVICE)
        self.archive_writer: ArchiveWriter | None = (
            ArchiveWriter(self.db, "always", settings.mam_max_pending_rows,
                          settings.mam_write_linger_ms / 1000)
            if settings.mam_enabled else None)
        self.rooms: dict[str, Room] = {}
        # soft state to write at the end of the batch: room -> nick -> occupant or None
        self._occupants: dict[str, dict[str, dict[str, str] | None]] = {}
        self._history: dict[str, list[tuple[float, bytes]]] = defaultdict(list)

    async def stop(self) -> None:
        if self.archive_writer is not None:
            await self.archive_writer.close()  # the rows of the last moments
        await super().stop()

    async def start(self) -> None:
        await super().start()
        if self.muc_settings.muc_remote_idle_s:
            self.tasks.append(asyncio.create_task(self._sweep_loop()))

    async def _sweep_loop(self) -> None:
        """Remote occupants that went away without a word leave their rooms (Room.sweep)."""
        idle = self.muc_settings.muc_remote_idle_s
        timeout = self.muc_settings.muc_remote_timeout_s
        while True:
            await asyncio.sleep(max(0.5, min(idle, timeout) / 2))
            try:
                await self.sweep(time.time(), idle, timeout)
            except Exception:
                log.exception("checking remote occupants failed")

    async def sweep(self, now: float, idle: float, answer_within: float) -> None:
        for room in list(self.rooms.values()):
            outs = room.sweep(now, idle, answer_within)
            if outs:
                await self._persist(room)
                await self._emit(outs)
        await self._flush_soft_state()
        self._gauges()

    # ---- partitions: a room is reloaded by whoever owns its partition --------------------

    def _forget(self, p: int) -> None:
        for jid in [j for j in self.rooms
                    if subjects.partition(j, self.settings.partitions) == p]:
            del self.rooms[jid]
        self._gauges()

    async def _acquire(self, p: int, previous: str | None) -> None:
        self._forget(p)  # what we knew of it before it went away is stale
        await super()._acquire(p, previous)

    async def _release(self, p: int) -> None:
        await super()._release(p)
        self._forget(p)

    def _gauges(self) -> None:
        metrics.ROOMS.set(len(self.rooms))
        metrics.OCCUPANTS.set(sum(len(r.occupants) for r in self.rooms.values()))

    async def _room(self, jid: str) -> Room | None:
        room = self.rooms.get(jid)
        if room is not None:
            return room
        stored = await self.store.load(jid)
        if stored is None:
            return None
        room = Room(
            jid, forms.Config.from_json(stored.config), stored.secret,
            subject=stored.subject, subject_from=stored.subject_from, locked=stored.locked,
            affiliations=stored.affiliations, nicks=stored.nicks,
            occupants={n: Occupant.from_json(n, o) for n, o in stored.occupants.items()},
            history=stored.history[-self.limits.max_history:] if self.limits.max_history
            else [], limits=self.limits)
        if room.occupants:
            metrics.ROOM_MOVES.inc()
            log.info("took over room %s with %d occupants", jid, len(room.occupants))
        self.rooms[jid] = room
        return room

    # ---- input -----------------------------------------------------------------------------

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        for env in decoded(batch):
            if env.kind not in STANZA_KINDS:
                continue
            try:
                await self._handle(env)
            except DatabaseUnavailable as exc:  # an answer, never a hang
                log.warning("muc request failed: %s", exc)
                await self._bounce(env, StanzaErrorCondition.RESOURCE_CONSTRAINT)
            except Exception:
                log.exception("muc handling failed")
        await self._flush_soft_state()
        self._gauges()

    async def _handle(self, env: Envelope) -> None:
        room_jid, _, nick = env.to.partition("/")
        if "@" not in room_jid:
            if room_jid in self.domains:
                await self._service_stanza(env)
            return
        try:
            el = parse_fragment(env.payload, MAX_PAYLOAD_BYTES)
        except StreamError:
            return
        room = await self._room(room_jid)
        created = False
        if room is None:
            if env.kind is not Kind.PRESENCE or env.type != "" or not nick:
                if env.kind is not Kind.PRESENCE:  # §7.2.? / §6.4: no such room
                    await self._error(env, el, StanzaError(StanzaErrorCondition.ITEM_NOT_FOUND))
                return
            try:
                room = await self._create(room_jid, env, el)
            except StanzaError as err:
                await self._error(env, el, err)
                return
            created = True
        cm = env.origin.partition("/")[0] if "/" in env.origin else ""
        if env.kind is Kind.IQ and not nick and len(el) and isinstance(el[0].tag, str) \
                and el[0].tag.startswith(_MAM_PREFIX):
            await self._archive_iq(room, env, el)
            return
        outs = room.handle(env.kind.value, env.type, env.from_, nick or None, el, cm=cm,
                           created=created)
        await self._persist(room)
        await self._emit(outs)

    async def _create(self, jid: str, env: Envelope, el: etree._Element) -> Room:
        """§10.1: the first occupant creates the room and owns it.  With the MUC <x/> in its
        presence the room stays locked until the owner configures it or accepts the
        defaults (§10.1.2 instant, §10.1.3 reserved); without it (groupchat 1.0) it is an
        instant room at once."""
        local_only = self.muc_settings.muc_create_rooms == "local"
        if local_only and not self.destinations.is_account(env.from_domain):
            raise StanzaError(StanzaErrorCondition.NOT_ALLOWED, "only local users create rooms")
        enforce_nick(env.to.partition("/")[2])  # jid-malformed before anything is stored
        locked = el.find(f"{{{MUC}}}x") is not None
        config = forms.Config(archive=self.muc_settings.muc_archive_default)
        secret = secrets.token_bytes(32)
        owner = env.from_bare
        if not await self.store.create(jid, config.to_json(), secret, locked, owner,
                                       self.muc_settings.muc_max_rooms_per_user):
            raise StanzaError(StanzaErrorCondition.NOT_ALLOWED,
                              "you may not create more rooms", StanzaErrorType.CANCEL)
        room = Room(jid, config, secret, locked=locked, affiliations={owner: "owner"},
                    limits=self.limits)
        self.rooms[jid] = room
        return room

    async def _service_stanza(self, env: Envelope) -> None:
        """IQs to the muc domain itself (§6.1 disco#info, §6.3 disco#items of public rooms)."""
        if env.kind is not Kind.IQ or env.type not in ("get", "set"):
            return
        try:
            el = parse_fragment(env.payload, MAX_PAYLOAD_BYTES)
        except StreamError:
            return
        child = el[0] if len(el) else None
        tag = child.tag if child is not None and isinstance(child.tag, str) else ""
        result: str | None = None
        if env.type == "get" and tag == f"{{{ns.DISCO_INFO}}}query":
            feats = ["http://jabber.org/protocol/muc", ns.DISCO_INFO, ns.DISCO_ITEMS,
                     "urn:xmpp:occupant-id:0", ns.PING]
            result = (f'<query xmlns="{ns.DISCO_INFO}"><identity category="conference" '
                      f'type="text" name="Chatrooms"/>'
                      f'{"".join(f"<feature var={chr(34)}{f}{chr(34)}/>" for f in feats)}'
                      f"</query>")
        elif env.type == "get" and tag == f"{{{ns.DISCO_ITEMS}}}query":
            rooms = await self.store.public_rooms(env.to, MAX_LISTED_ROOMS)
            items = "".join(f"<item jid={quoteattr(j)} name={quoteattr(n or j)}/>"
                            for j, n in rooms)
            result = f'<query xmlns="{ns.DISCO_ITEMS}">{items}</query>'
        elif env.type == "get" and tag == f"{{{ns.PING}}}ping":
            result = ""
        if result is None:
            await self._error(env, el, StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE))
            return
        await self.route(Envelope(Kind.IQ, to=env.from_, from_=env.to, type="result",
                                  id=env.id, origin=SERVICE,
                                  payload=iq_result(env.id, env.from_, env.to, result)))

    async def _error(self, env: Envelope, el: etree._Element, err: StanzaError) -> None:
        if env.type in ("error", "result"):
            return
        metrics.ERRORS.labels(err.condition.value).inc()
        payload = error_reply(el, err, to=env.from_, from_=env.to)
        await self.route(Envelope(env.kind, to=env.from_, from_=env.to, type="error",
                                  id=env.id, origin=SERVICE, hops=env.hops + 1,
                                  payload=payload))

    async def _bounce(self, env: Envelope, condition: StanzaErrorCondition) -> None:
        metrics.ERRORS.labels(condition.value).inc()
        bounce = env.bounce(condition, origin=SERVICE, max_bytes=MAX_PAYLOAD_BYTES)
        if bounce is not None:
            await self.route(bounce)

    # ---- state -------------------------------------------------------------------------------

    async def _persist(self, room: Room) -> None:
        """Durable changes now (before the answers leave); soft state at the batch's end."""
        d = room.dirty
        if d.destroyed:
            await self.store.delete(room.jid)
            self.rooms.pop(room.jid, None)
            self._occupants.pop(room.jid, None)
            self._history.pop(room.jid, None)
            d.clear()
            return
        if d.room:
            await self.store.save_room(room.jid, room.config.to_json(), room.subject,
                                       room.subject_from, room.locked)
        if d.affiliations:
            await self.store.save_affiliations(room.jid, {
                j: (room.affiliations[j], room.nicks.get(j, "")) if j in room.affiliations
                else None for j in d.affiliations})
        if d.occupants:
            pending = self._occupants.setdefault(room.jid, {})
            for nick in d.occupants:
                occ = room.occupants.get(nick)
                pending[nick] = occ.to_json() if occ is not None else None
        if d.history:
            self._history[room.jid].extend(d.history)
        if d.archive and self.archive_writer is not None:
            for sid, sender, stored in d.archive:
                self.archive_writer.add(room.jid, sid, sender, room.jid, False, stored)
        d.clear()

    # ---- XEP-0313 §5: the room's archive -----------------------------------------------------

    async def _archive_iq(self, room: Room, env: Envelope, el: etree._Element) -> None:
        """A query of the room's archive (or its form), by whom `Room.may_read_archive`
        lets: the results from the room's bare JID, then the IQ result with <fin/>, in one
        BATCH to an occupant's connection manager (through the router otherwise)."""
        child = el[0]
        occ = room.occupant_of(env.from_)
        cm = occ.cm if occ is not None else ""
        outs: list[Out] = []
        try:
            if not room.archiving:
                raise StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE)
            if not room.may_read_archive(env.from_):
                raise StanzaError(StanzaErrorCondition.FORBIDDEN,
                                  "only members and occupants may read this archive")
            if child.tag != _MAM_QUERY or env.type not in ("get", "set"):
                raise StanzaError(StanzaErrorCondition.FEATURE_NOT_IMPLEMENTED)
            if env.type == "get":  # §4.1.1 the form
                result = archive.query_form()
            else:
                query = archive.parse_query(child)
                try:
                    page = await self.archive_store.query(room.jid, query)
                except UnknownId:
                    raise StanzaError(StanzaErrorCondition.ITEM_NOT_FOUND) from None
                rows = list(reversed(page.rows)) if query.flip else page.rows
                outs += [Send("message", env.from_, archive.result_message(
                    env.from_, room.jid, query.query_id, row), "", cm) for row in rows]
                result = archive.fin(page.rows, complete=page.complete, count=page.count,
                                     index=query.index)
                metrics.ARCHIVE_QUERIES.inc()
        except StanzaError as err:
            await self._error(env, el, err)
            return
        outs.append(Send("iq", env.from_, iq_result(env.id, env.from_, room.jid, result),
                         "result", cm))
        await self._emit(outs)

    async def _flush_soft_state(self) -> None:
        if not (self._occupants or self._history):
            return
        occupants, history = self._occupants, self._history
        self._occupants, self._history = {}, defaultdict(list)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room in occupants.keys() | history.keys():
                    MucStore.queue_soft_state(pipe, room, occupants.get(room, {}),
                                              history.get(room, []),
                                              max(1, self.limits.max_history))
                await pipe.execute()
        except Exception as exc:  # soft state: the rooms in memory stay right
            log.warning("writing room soft state failed: %s", exc)

    # ---- output ------------------------------------------------------------------------------

    async def _emit(self, outs: list[Out]) -> None:
        """Sends to one session in a row go as one BATCH; broadcasts as one FANOUT per
        connection manager, remote occupants one by one through the router."""
        run: list[Send] = []
        for out in outs:
            if isinstance(out, Send) and out.cm and (not run or (run[0].to == out.to
                                                                 and run[0].cm == out.cm)):
                run.append(out)
                continue
            await self._send_run(run)
            run = []
            if isinstance(out, Send):
                if out.cm:
                    run.append(out)
                else:
                    await self._send_one(out)
            else:
                await self._broadcast(out)
        await self._send_run(run)

    async def _send_one(self, out: Send) -> None:
        metrics.FANNED_OUT.labels(out.kind).inc()
        metrics.ENVELOPES.labels(out.kind).inc()
        found = _ID.search(out.payload) if out.kind == "iq" else None
        env = Envelope(_KINDS[out.kind], to=out.to, from_=self._from(out.payload),
                       type=out.type, id=found.group(2).decode() if found else "",
                       origin=SERVICE, payload=out.payload)
        if out.cm:
            await self.publish(subjects.connection_manager(out.cm), env)
        else:
            await self.route(env)

    async def _send_run(self, run: list[Send]) -> None:
        if len(run) == 1:
            await self._send_one(run[0])
            return
        chunk: list[bytes] = []
        size = 0
        for i, out in enumerate(run):
            metrics.FANNED_OUT.labels(out.kind).inc()
            chunk.append(out.payload)
            size += len(out.payload)
            if size >= MAX_BATCH_BYTES or i == len(run) - 1:
                metrics.ENVELOPES.labels("batch").inc()
                env = Envelope(Kind.BATCH, to=out.to, from_="", origin=SERVICE,
                               payload=b"".join(chunk))
                await self.publish(subjects.connection_manager(out.cm), env)
                chunk, size = [], 0

    async def _broadcast(self, out: Broadcast) -> None:
        by_cm: dict[str, list[str]] = defaultdict(list)
        remote: list[Occupant] = []
        for occ in out.recipients:
            if occ.cm:
                by_cm[occ.cm].append(occ.jid)
            else:
                remote.append(occ)
        metrics.FANOUT_SIZE.observe(len(out.recipients))
        metrics.FANNED_OUT.labels(out.kind).inc(len(out.recipients))
        frm = self._from(out.payload)
        for cm_id, recipients in by_cm.items():
            metrics.ENVELOPES.labels("fanout").inc()
            env = Envelope(Kind.FANOUT, to="\n".join(recipients), from_=frm, type=out.type,
                           origin=SERVICE, payload=out.payload)
            await self.publish(subjects.connection_manager(cm_id), env)
        for occ in remote:
            metrics.ENVELOPES.labels(out.kind).inc()
            await self.route(Envelope(_KINDS[out.kind], to=occ.jid, from_=frm, type=out.type,
                                      origin=SERVICE, payload=with_to(out.payload, occ.jid)))

    @staticmethod
    def _from(payload: bytes) -> str:
        """The 'from' of a stanza the room wrote (for the envelope's routing facts)."""
        found = _FROM.search(payload)
        if found is None:
            return ""
        return unescape(found.group(2).decode(), {"&quot;": '"', "&apos;": "'"})
