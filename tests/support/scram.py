"""A SCRAM client for tests (RFC 5802 §3, RFC 7677), for what scramp's client does not send:
any gs2-header (an authzid, "y"), and channel binding of any type (scramp knows no
``tls-exporter``, RFC 9266).  hashlib and hmac only; ASCII passwords (no SASLprep)."""

from __future__ import annotations

import base64
import hashlib
import hmac

HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ManualClient:
    """An RFC 5802 §3 client on hashlib alone.  ``binding_data`` goes into ``c=`` after a
    "p=" gs2-header (RFC 5802 §7 cbind-input)."""

    def __init__(
        self,
        mechanism: str,
        username: str = "user",
        password: str = "pencil",
        gs2_header: str = "n,,",
        nonce: str = "fyko+d2lbbFgONRv9qkxdawL",
        binding_data: bytes = b"",
    ) -> None:
        self.hash = HASHES[mechanism.removesuffix("-PLUS")]
        self.password = password
        self.gs2_header = gs2_header
        self.binding_data = binding_data if gs2_header.startswith("p=") else b""
        self.bare = f"n={username},r={nonce}"
        self.server_signature = b""
        self.server_first: dict[str, str] = {}  # the attributes of the server-first-message

    def first(self) -> bytes:
        return (self.gs2_header + self.bare).encode()

    def final(self, server_first: bytes, nonce: str | None = None) -> bytes:
        attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
        self.server_first = attrs
        salted = hashlib.pbkdf2_hmac(
            self.hash, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", self.hash)
        stored_key = hashlib.new(self.hash, client_key).digest()
        cbind = self.gs2_header.encode() + self.binding_data
        without_proof = f"c={_b64(cbind)},r={nonce or attrs['r']}"
        auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.hash)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.hash)
        self.server_signature = hmac.digest(server_key, auth_message, self.hash)
        return f"{without_proof},p={_b64(proof)}".encode()

    def check_final(self, server_final: bytes | None) -> None:
        assert server_final == f"v={_b64(self.server_signature)}".encode()
