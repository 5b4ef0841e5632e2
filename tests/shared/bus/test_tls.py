"""NATS with TLS required, as the local and test clusters run it (devtools/localservers.py
``nats_auth`` with ``service_tls``): a plaintext client is refused, a client that does not
trust the development CA fails the handshake, and a service's Bus with the CA of its
settings (STANZAD_NATS_TLS_CA) gets through."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from devtools import localservers
from shared.bus import subjects
from shared.bus.client import Bus
from shared.runtime.settings import CommonSettings
from shared.tls.context import client_context, ensure_dev_ca, ensure_issued
from tests.shared.bus.test_client import _until

TIMEOUT_S = 10.0  # hang guard only


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, localservers.NatsAuth, Path]]:
    port = localservers.free_port()
    with tempfile.TemporaryDirectory(prefix="stanzad-nats-tls-") as name:
        workdir = Path(name)
        tls = localservers.service_tls(workdir / "ca")
        auth = localservers.nats_auth(workdir, tls)
        proc = localservers.start(localservers.nats_command(port, workdir, auth.config),
                                  workdir / "nats.log")
        try:
            localservers.wait_port("127.0.0.1", port, proc=proc)
            yield port, auth, workdir
        finally:
            localservers.stop(proc)


def plaintext_exchange(port: int, user: str, password: str) -> tuple[dict[str, object], bytes]:
    """The server's INFO, and everything it answers to a plaintext CONNECT with these
    credentials and a PING until it closes the connection (at most 4 KiB)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        f = sock.makefile("rb")
        info_line = f.readline()
        assert info_line.startswith(b"INFO ")
        info = json.loads(info_line[5:])
        connect = {"verbose": False, "user": user, "pass": password}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        try:
            return info, f.read1(4096)
        except (ConnectionResetError, TimeoutError) as exc:  # closed, or left hanging
            return info, repr(exc).encode()


def test_a_plaintext_client_is_refused(
    server: tuple[int, localservers.NatsAuth, Path],
) -> None:
    port, auth, _ = server
    info, reply = plaintext_exchange(port, "router", auth.passwords["router"])
    assert info["tls_required"] is True
    # valid credentials, but no TLS: the server takes the CONNECT for a broken TLS
    # handshake and closes the connection, without a PONG (and without +OK)
    assert reply in (b"", b"ConnectionResetError(104, 'Connection reset by peer')"), reply


async def test_a_client_that_does_not_trust_the_ca_fails_the_handshake(
    server: tuple[int, localservers.NatsAuth, Path], tmp_path: Path,
) -> None:
    port, auth, _ = server
    other_ca, other_key = tmp_path / "other-ca.pem", tmp_path / "other-ca-key.pem"
    ensure_dev_ca(str(other_ca), str(other_key), "another CA")
    for context in (client_context(), client_context(str(other_ca))):  # system roots, other
        with pytest.raises(ssl.SSLCertVerificationError):
            nc = await nats.connect(f"nats://127.0.0.1:{port}", tls=context,
                                    user="router", password=auth.passwords["router"],
                                    allow_reconnect=False, max_reconnect_attempts=0,
                                    connect_timeout=5)
            await nc.close()


def test_a_certificate_of_the_ca_for_another_name_is_not_accepted(tmp_path: Path) -> None:
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    ensure_dev_ca(str(ca), str(ca_key))
    cert, key = tmp_path / "s.pem", tmp_path / "s-key.pem"
    ensure_issued(str(cert), str(key), str(ca), str(ca_key), ["nats.example"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client = client_context(str(ca))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLCertVerificationError):  # signed by the CA, not for this name
        for _ in range(10):  # a handshake is a few round trips
            for end in (c, s):
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
            s_in.write(c_out.read())
            c_in.write(s_out.read())


async def test_a_service_with_the_ca_of_its_settings_connects_over_tls(
    server: tuple[int, localservers.NatsAuth, Path],
) -> None:
    port, auth, _ = server
    env = auth.env("connection_manager")
    settings = CommonSettings(nats_url=f"nats://127.0.0.1:{port}",
                              nats_user=env["STANZAD_NATS_USER"],
                              nats_password=env["STANZAD_NATS_PASSWORD"],
                              nats_tls_ca=env["STANZAD_NATS_TLS_CA"])
    got: list[tuple[str, bytes]] = []

    async def handler(batch: list[tuple[str, bytes]]) -> None:
        got.extend(batch)

    rx = Bus(settings.nats_url, "rx", handler, **settings.nats_options())
    await asyncio.wait_for(rx.connect(), TIMEOUT_S)
    tx = await nats.connect(f"nats://127.0.0.1:{port}", tls=client_context(str(auth.ca)),
                            user="router", password=auth.passwords["router"],
                            allow_reconnect=False, connect_timeout=5)
    try:
        # nats-py's TCP transport after its TLS upgrade: the stream of the TLS session
        transport = rx._nc._transport if rx._nc is not None else None
        writer = getattr(transport, "_io_writer", None)
        assert writer is not None
        tls_object = writer.get_extra_info("ssl_object")
        assert tls_object is not None and tls_object.version() in ("TLSv1.2", "TLSv1.3")
        await rx.subscribe(subjects.connection_manager("cm-tls"))
        await rx.flush()
        await tx.publish(subjects.connection_manager("cm-tls"), b"over tls")
        await tx.flush()
        await _until(lambda: bool(got), TIMEOUT_S)
        assert got == [("stanzad.cm.cm-tls", b"over tls")]
    finally:
        await tx.close()
        await rx.close()


def test_the_ca_and_certificate_are_kept_across_restarts_and_keys_are_private(
    tmp_path: Path,
) -> None:
    first = localservers.service_tls(tmp_path)
    pem = first.cert.read_bytes(), first.ca.read_bytes()
    again = localservers.service_tls(tmp_path)
    assert (again.cert.read_bytes(), again.ca.read_bytes()) == pem
    for name in (localservers.CA_KEY, localservers.SERVER_KEY):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    # a new CA (the old one deleted) gets a new server certificate signed by it
    (tmp_path / localservers.CA_CERT).unlink()
    third = localservers.service_tls(tmp_path)
    assert third.ca.read_bytes() != pem[1] and third.cert.read_bytes() != pem[0]
