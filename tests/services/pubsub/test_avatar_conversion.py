"""XEP-0398 conversion between PEP avatars (XEP-0084) and vCard avatars (XEP-0054,
XEP-0153), with slixmpp clients: each way, and the hash in the account's presence."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from typing import Any

from tests.conftest import Users
from tests.services.pubsub.test_pep import (
    AVATAR_DATA,
    AVATAR_META,
    PepClient,
    befriend,
    caps_known,
    online,
)
from tests.support.cluster import Cluster
from tests.support.xmpp import eventually

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3  # not a picture; bytes are bytes
DIGEST = hashlib.sha1(IMAGE).hexdigest()
B64 = base64.b64encode(IMAGE).decode()
VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"


def photo_hashes(client: PepClient, from_bare: str) -> list[str | None]:
    """The x:update hashes of the presence ``client`` got from ``from_bare`` (None: none)."""
    return [h for f, h in getattr(client, "photos", []) if f == from_bare]


def record_photos(client: PepClient) -> None:
    client.photos = []  # type: ignore[attr-defined]

    def on_presence(pres: Any) -> None:
        photo = pres.xml.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
        client.photos.append(  # type: ignore[attr-defined]
            (str(pres["from"]).partition("/")[0], None if photo is None else photo.text or ""))

    client.add_event_handler("presence_available", on_presence)


async def iq(client: PepClient, type_: str, to: str | None, child: str) -> Any:
    stanza = client.make_iq_set(ito=to) if type_ == "set" else client.make_iq_get(ito=to)
    stanza.append(ET.fromstring(child))
    return await stanza.send(timeout=20)


async def test_xep0398_3_1_avatar_published_to_pep_becomes_the_vcard_photo(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await befriend(users, alice, bob)
    async with online(pubsub_cluster, bob, pw_b) as b, online(pubsub_cluster, alice, pw_a) as a:
        record_photos(b)
        await caps_known(users, alice)
        await a.publish(AVATAR_DATA, f"<data xmlns='{AVATAR_DATA}'>{B64}</data>", DIGEST)
        await a.publish(AVATAR_META, f"<metadata xmlns='{AVATAR_META}'><info bytes="
                        f"'{len(IMAGE)}' id='{DIGEST}' type='image/png'/></metadata>", DIGEST)

        async def vcard_has_photo() -> bool:
            got = await iq(b, "get", alice, f"<vCard xmlns='{VCARD}'/>")
            binval = got.xml.find(f"{{{VCARD}}}vCard/{{{VCARD}}}PHOTO/{{{VCARD}}}BINVAL")
            return binval is not None and base64.b64decode(binval.text or "") == IMAGE

        await eventually(vcard_has_photo, 20, "the PHOTO in alice's vCard")
        # §4: the server puts the hash in the presence she sends (she put none in)
        a.send_presence()
        await eventually(lambda: DIGEST in photo_hashes(b, alice), 20, "the hash in presence")
        # the other fields of the vCard stay; an empty metadata (XEP-0084 §4.5) removes it
        await iq(a, "set", None, f"<vCard xmlns='{VCARD}'><FN>Alice</FN><PHOTO><TYPE>image/png"
                 f"</TYPE><BINVAL>{B64}</BINVAL></PHOTO></vCard>")
        await a.publish(AVATAR_META, f"<metadata xmlns='{AVATAR_META}'/>", "off")

        async def photo_gone() -> bool:
            got = await iq(b, "get", alice, f"<vCard xmlns='{VCARD}'/>")
            card = got.xml.find(f"{{{VCARD}}}vCard")
            return (card.find(f"{{{VCARD}}}PHOTO") is None
                    and card.findtext(f"{{{VCARD}}}FN") == "Alice")

        await eventually(photo_gone, 20, "the PHOTO removed")
        a.send_presence()
        await eventually(lambda: "" in photo_hashes(b, alice), 20, "an empty photo in presence")


async def test_xep0398_3_2_vcard_photo_is_published_as_the_pep_avatar(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await befriend(users, alice, bob)
    async with online(pubsub_cluster, bob, pw_b) as b, online(pubsub_cluster, alice, pw_a) as a:
        record_photos(b)
        await caps_known(users, bob)
        # §2: advertised on the account
        info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=20)
        assert "urn:xmpp:pep-vcard-conversion:0" in info["disco_info"]["features"]
        # an old client's vCard with a photo, and a presence claiming another hash
        await iq(a, "set", None, f"<vCard xmlns='{VCARD}'><FN>Alice</FN><PHOTO><TYPE>image/png"
                 f"</TYPE><BINVAL>{B64}</BINVAL></PHOTO></vCard>")
        meta = await b.wait_event(alice, AVATAR_META)
        assert f'id="{DIGEST}"' in meta and f'bytes="{len(IMAGE)}"' in meta
        got = await b.plugin["xep_0060"].get_items(alice, AVATAR_DATA, timeout=20)
        item = got["pubsub"]["items"]["substanzas"][0]
        assert item["id"] == DIGEST and base64.b64decode(item["payload"].text) == IMAGE
        stale = a.make_presence()
        stale.append(ET.fromstring(f"<x xmlns='{UPDATE}'><photo>0000</photo></x>"))
        stale.send()
        await eventually(lambda: DIGEST in photo_hashes(b, alice), 20, "the hash in presence")
        assert "0000" not in photo_hashes(b, alice)
