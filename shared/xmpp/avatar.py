"""XEP-0398 conversion between PEP avatars (XEP-0084) and the vCard's PHOTO (XEP-0054,
XEP-0153), sans-I/O: the hash is the SHA-1 of the image bytes in both (XEP-0084 §4.2,
XEP-0153 §3.1), so one value names the avatar everywhere."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import ns

_V: Final = f"{{{ns.VCARD}}}"
# the x:update element a client put in its presence (XEP-0153 §3.2), to be replaced
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True)
_X_UPDATE: Final = re.compile(
    rb"<x\s[^>]*xmlns=[\"']vcard-temp:x:update[\"'][^>]*?(?:/>|>.*?</x>)", re.S)


@dataclass(frozen=True, slots=True)
class Photo:
    type: str
    data: bytes

    @property
    def hash(self) -> str:
        return hashlib.sha1(self.data).hexdigest()  # the XEPs' choice


def vcard_photo(vcard: etree._Element) -> Photo | None:
    """The vCard's embedded PHOTO (TYPE + BINVAL), or None (none, or only an EXTVAL)."""
    photo = vcard.find(f"{_V}PHOTO")
    if photo is None:
        return None
    binval = photo.findtext(f"{_V}BINVAL") or ""
    try:
        data = base64.b64decode("".join(binval.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not data:
        return None
    return Photo((photo.findtext(f"{_V}TYPE") or "image/png").strip(), data)


def with_photo(vcard: bytes | None, photo: Photo | None) -> bytes:
    """The vCard (or an empty one) with its PHOTO replaced by ``photo`` (None: removed)."""
    root = (etree.fromstring(vcard, _PARSER)
            if vcard else etree.Element(f"{_V}vCard", nsmap={None: ns.VCARD}))
    for old in root.findall(f"{_V}PHOTO"):
        root.remove(old)
    if photo is not None:
        el = etree.SubElement(root, f"{_V}PHOTO")
        etree.SubElement(el, f"{_V}TYPE").text = photo.type
        etree.SubElement(el, f"{_V}BINVAL").text = base64.b64encode(photo.data).decode()
    return etree.tostring(root)


def pep_payloads(photo: Photo) -> tuple[str, str]:
    """The `urn:xmpp:avatar:data` and `:metadata` payloads for ``photo`` (XEP-0084 §4)."""
    data = f'<data xmlns="{ns.AVATAR_DATA}">{base64.b64encode(photo.data).decode()}</data>'
    metadata = (f'<metadata xmlns="{ns.AVATAR_METADATA}"><info bytes="{len(photo.data)}" '
                f"id={quoteattr(photo.hash)} type={quoteattr(photo.type)}/></metadata>")
    return data, metadata


def metadata_info(payload: bytes) -> tuple[str, str] | None:
    """(id, type) of the metadata's first `<info/>` without a `url` (the one whose bytes are
    in the data node, XEP-0084 §4.2.1); None: the avatar was disabled (§4.5) or lives
    elsewhere."""
    if not payload:
        return None
    metadata = etree.fromstring(payload, _PARSER)
    for info in metadata.iter(f"{{{ns.AVATAR_METADATA}}}info"):
        if info.get("id") and not info.get("url"):
            return info.get("id", ""), info.get("type", "image/png")
    return None


def data_bytes(payload: bytes) -> bytes | None:
    """The image bytes of a stored `urn:xmpp:avatar:data` payload."""
    try:
        el = etree.fromstring(payload, _PARSER)
        return base64.b64decode("".join((el.text or "").split()), validate=True)
    except (etree.XMLSyntaxError, binascii.Error, ValueError):
        return None


def with_update(presence: bytes, photo_hash: str) -> bytes:
    """Presence with the account's current hash in `vcard-temp:x:update` (XEP-0398 §4,
    XEP-0153 §4.1: an empty `<photo/>` means no avatar); a client's own element replaced."""
    stripped = _X_UPDATE.sub(b"", presence)
    photo = f"<photo>{escape(photo_hash)}</photo>" if photo_hash else "<photo/>"
    x = f'<x xmlns="{ns.VCARD_UPDATE}">{photo}</x>'.encode()
    if stripped.rstrip().endswith(b"/>") and stripped.rfind(b"</presence>") < 0:
        body = stripped.rstrip()
        return body[:-2] + b">" + x + b"</presence>"
    at = stripped.rfind(b"</")
    return stripped[:at] + x + stripped[at:]


# `origin` of the publishes the roster service makes from a vCard: no answer goes back, and
# the pubsub service does not convert them back to the vCard
CONVERSION_ORIGIN: Final = "xep0398"
