"""devtools.localservers: free_port (ports outside the kernel's ephemeral range) and
port_holders (who listens on a port, from /proc)."""

from __future__ import annotations

import os
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


def test_port_holders_names_the_listening_process() -> None:
    """/proc/net/tcp's inode of the listener, found among /proc/<pid>/fd: this process."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        holders = localservers.port_holders(port)
        assert [h.pid for h in holders] == [os.getpid()]
        with open("/proc/self/cmdline", "rb") as f:  # this process (pytest, or an xdist worker)
            mine = f.read().replace(b"\0", b" ").decode().strip()
        assert holders[0].cmdline == mine
        assert f"pid {os.getpid()} (" in localservers.describe_holders(port)


def test_a_bound_but_not_listening_port_and_a_free_one_have_no_holder() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # a client socket's port: nothing to connect to
        port = bound.getsockname()[1]
        assert localservers.port_holders(port) == []
    assert localservers.port_holders(localservers.free_port()) == []
    assert "cannot see" in localservers.describe_holders(localservers.free_port())


def test_ipv6_listeners_are_found() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(socket.AF_INET6) as held:
        try:
            held.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        held.listen()
        port = held.getsockname()[1]
        assert [h.pid for h in localservers.port_holders(port)] == [os.getpid()]
