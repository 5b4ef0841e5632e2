"""devtools.localservers.free_port: ports outside the kernel's ephemeral range."""

from __future__ import annotations

import socket

import pytest

from devtools import localservers


def _ephemeral() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    return range(low, high + 1)


def test_ports_are_free_and_not_ephemeral() -> None:
    ephemeral = _ephemeral()
    for _ in range(20):
        port = localservers.free_port()
        assert port in localservers._PORTS and port not in ephemeral
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free indeed


def test_a_held_port_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        monkeypatch.setattr(localservers, "_PORTS", range(taken, taken + 1))
        port = localservers.free_port()  # the one port of the range is taken: the fallback
        assert port != taken
