"""The c2s TLS context (RFC 7525) and certificate checks at start."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shared.tls.context import CertificateProblem, check_certificate, server_context
from tests.support.tls import write_certificate


def test_rfc7525_tls12_or_newer_with_forward_secret_aead_suites_only(tmp_path: Path) -> None:
    write_certificate(tmp_path / "c.pem", tmp_path / "k.pem", "localhost")
    ctx = server_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    for suite in ctx.get_ciphers():
        name = suite["name"]
        assert suite["protocol"] == "TLSv1.3" or name.startswith("ECDHE-"), name
        assert "GCM" in name or "CHACHA20" in name, name
        assert "CBC" not in name and not name.endswith("-SHA"), name  # no SHA-1 MACs


def test_expired_certificate_is_a_clear_error_at_start(tmp_path: Path) -> None:
    write_certificate(tmp_path / "c.pem", tmp_path / "k.pem", "localhost",
                      days_from=-30, days_to=-1)
    with pytest.raises(CertificateProblem, match=r"c\.pem: the certificate expired on"):
        server_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))


def test_not_yet_valid_and_unreadable_certificates_are_refused(tmp_path: Path) -> None:
    write_certificate(tmp_path / "c.pem", tmp_path / "k.pem", "localhost", days_from=2)
    with pytest.raises(CertificateProblem, match="not valid before"):
        check_certificate(str(tmp_path / "c.pem"))
    with pytest.raises(CertificateProblem, match="cannot read"):
        check_certificate(str(tmp_path / "missing.pem"))
