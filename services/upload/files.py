"""What the upload service decides about a file without I/O: its name, its type, how it is
served, and the signatures of its URLs.

URLs are ``<base>/upload/<id>/<name>?expires=<unix>&sig=<hmac>``: the HMAC-SHA256 (the
cluster's upload secret) covers the method, the id, the name and the expiry, and for a PUT
also the size and type the slot was granted for, so a URL cannot be stretched in time,
reused for another file or another size.  The id is 128 random bits.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from typing import Final
from urllib.parse import quote

MAX_NAME_CHARS: Final = 200
DEFAULT_TYPE: Final = "application/octet-stream"
_TOKEN: Final = re.compile(r"^[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}$")
# shown by a browser in place, and unable to run script in our origin
INLINE: Final = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/heic",
    "audio/mpeg", "audio/ogg", "audio/mp4", "audio/aac", "audio/webm", "audio/wav",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime", "text/plain",
})
# would run script if a browser rendered them from our origin: served as bytes
ACTIVE: Final = frozenset({
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/javascript", "application/javascript", "application/ecmascript", "text/css",
    "application/x-shockwave-flash", "application/pdf",
})


def clean_name(name: str) -> str:
    """The last path component, without control or format characters, NFC, at most
    MAX_NAME_CHARS characters; 'file' when nothing is left."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in unicodedata.normalize("NFC", name)
                   if unicodedata.category(c)[0] not in ("C", "Z") or c == " ")
    name = name.strip(" .")
    if len(name) > MAX_NAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot else ""
        name = (stem if dot else name)[: MAX_NAME_CHARS - len(ext) - 1] + (f".{ext}" if ext
                                                                            else "")
    return name or "file"


def clean_type(value: str | None) -> str:
    """A media type 'type/subtype' in lower case (parameters dropped); the default when the
    client gave none or something else."""
    base = (value or "").split(";", 1)[0].strip().lower()
    return base if _TOKEN.match(base) else DEFAULT_TYPE


def served_type(content_type: str) -> str:
    """The Content-Type a GET answers with: active types become plain bytes."""
    return DEFAULT_TYPE if content_type in ACTIVE else content_type


def disposition(content_type: str, name: str) -> str:
    """Content-Disposition (RFC 6266): inline only for passive media, the name as an ASCII
    fallback and as RFC 8187 UTF-8."""
    kind = "inline" if content_type in INLINE else "attachment"
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;%' else "_" for c in name)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def path(file_id: str, name: str) -> str:
    return f"/upload/{file_id}/{quote(name, safe='')}"


def sign(secret: bytes, method: str, file_id: str, name: str, expires: int, size: int = 0,
         content_type: str = "") -> str:
    text = "\n".join((method, file_id, name, str(expires), str(size), content_type))
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def url(base: str, secret: bytes, method: str, file_id: str, name: str, expires: int,
        size: int = 0, content_type: str = "") -> str:
    sig = sign(secret, method, file_id, name, expires, size, content_type)
    return f"{base.rstrip('/')}{path(file_id, name)}?expires={expires}&sig={sig}"


def verify(secret: bytes, method: str, file_id: str, name: str, expires: str, sig: str,
           now: float, size: int = 0, content_type: str = "") -> bool:
    """The signature is ours and the URL has not expired."""
    if not expires.isdigit() or int(expires) < now:
        return False
    expected = sign(secret, method, file_id, name, int(expires), size, content_type)
    return hmac.compare_digest(expected, sig)
