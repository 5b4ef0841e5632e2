"""loadtest.conn_memory: each piece is built the way the benchmark says (no memory asserted)."""

from __future__ import annotations

import pytest

from loadtest import conn_memory
from shared.tls.session import TLSSession
from shared.xmpp.parser import StreamParser


@pytest.mark.parametrize("piece", list(conn_memory.PIECES))
def test_every_piece_is_measured(piece: str) -> None:
    per_instance = conn_memory.measure(piece, 5)
    assert isinstance(per_instance, float)


def test_the_pieces_are_what_they_claim() -> None:
    tls = conn_memory.PIECES["tls"]()()
    assert isinstance(tls, TLSSession) and tls.established and not tls.lean
    lean = conn_memory.PIECES["tls-lean"]()()
    assert isinstance(lean, TLSSession) and lean.established and lean.lean
    idle_tls, idle_parser = conn_memory.PIECES["idle"]()()  # type: ignore[misc]
    assert isinstance(idle_tls, TLSSession) and not idle_tls.lean and not idle_tls.lean_ready
    assert isinstance(idle_parser, StreamParser) and not idle_parser.hibernate()
    lean_tls, lean_parser = conn_memory.PIECES["idle-lean"]()()  # type: ignore[misc]
    assert isinstance(lean_tls, TLSSession) and lean_tls.lean
    assert lean_tls._records is not None and lean_tls._records._read.aead is None  # hibernated
    assert isinstance(lean_parser, StreamParser) and not lean_parser.hibernate()
    awake = conn_memory.PIECES["parser"]()()
    asleep = conn_memory.PIECES["parser-hibernated"]()()
    assert isinstance(awake, StreamParser) and isinstance(asleep, StreamParser)
    assert awake.hibernate()  # it was awake
    assert not asleep.hibernate()  # it was already asleep
