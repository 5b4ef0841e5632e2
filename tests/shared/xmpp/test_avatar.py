"""XEP-0398 conversions, sans-I/O: vCard PHOTO <-> XEP-0084 payloads, presence x:update."""

from __future__ import annotations

import base64
import hashlib

from lxml import etree

from shared.xmpp import avatar

IMAGE = b"\x89PNG\r\n\x1a\nnot really"


def test_vcard_photo_round_trip_keeps_the_other_fields() -> None:
    card = avatar.with_photo(b'<vCard xmlns="vcard-temp"><FN>A</FN><PHOTO><EXTVAL>x</EXTVAL>'
                             b"</PHOTO></vCard>", avatar.Photo("image/png", IMAGE))
    root = etree.fromstring(card)
    photo = avatar.vcard_photo(root)
    assert photo == avatar.Photo("image/png", IMAGE)
    assert photo.hash == hashlib.sha1(IMAGE).hexdigest()
    assert root.findtext("{vcard-temp}FN") == "A" and len(root.findall("{vcard-temp}PHOTO")) == 1
    assert avatar.vcard_photo(etree.fromstring(avatar.with_photo(card, None))) is None


def test_pep_payloads_name_the_hash_and_carry_the_bytes() -> None:
    photo = avatar.Photo("image/png", IMAGE)
    data, metadata = avatar.pep_payloads(photo)
    assert avatar.data_bytes(data.encode()) == IMAGE
    assert avatar.metadata_info(metadata.encode()) == (photo.hash, "image/png")
    assert avatar.metadata_info(b'<metadata xmlns="urn:xmpp:avatar:metadata"/>') is None
    url_only = (b'<metadata xmlns="urn:xmpp:avatar:metadata"><info id="h" url="https://x/a"'
                b' type="image/png" bytes="1"/></metadata>')
    assert avatar.metadata_info(url_only) is None  # XEP-0084 §4.2.1: bytes not in PEP
    assert avatar.data_bytes(b'<data xmlns="urn:xmpp:avatar:data">%%%</data>') is None
    assert base64.b64encode(IMAGE).decode() in data


def test_presence_gets_the_hash_and_loses_the_clients_own() -> None:
    """XEP-0398 §4; XEP-0153 §4.1: an empty photo means no avatar."""
    assert avatar.with_update(b'<presence xmlns="jabber:client"/>', "ab") == (
        b'<presence xmlns="jabber:client"><x xmlns="vcard-temp:x:update"><photo>ab</photo>'
        b"</x></presence>")
    out = avatar.with_update(b"<presence><show>away</show><x xmlns='vcard-temp:x:update'>"
                             b"<photo>old</photo></x></presence>", "")
    assert out == (b'<presence><show>away</show><x xmlns="vcard-temp:x:update"><photo/></x>'
                   b"</presence>")
