"""Server Dialback keys (XEP-0185 §3, used by XEP-0220 §2).

    key = HEX( HMAC-SHA256( SHA256(secret), receiving + " " + originating + " " + stream_id ) )

The key is stateless: any gateway process that knows the cluster's secret can answer a
<db:verify/> for a stream another process opened, with no shared table of pending keys.
"""

from __future__ import annotations

import hashlib
import hmac


def dialback_key(secret: bytes, receiving: str, originating: str, stream_id: str) -> str:
    """The key the originating server sends in <db:result/> (XEP-0185 §3)."""
    hashed = hashlib.sha256(secret).digest()
    text = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(hashed, text, hashlib.sha256).hexdigest()


def check_key(secret: bytes, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """Whether ``key`` is the one we would have generated (constant time)."""
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode(), key.strip().lower().encode())
