"""The private ejabberd target (loadtest/ejabberd.py): config, commands and Erlang terms
without a server, then one real start (skipped when the Debian package is not installed).

The real test starts ejabberd 23.01 (about 2 s here), registers 2 users through the control
node and logs one in with the load client (STARTTLS, SCRAM-SHA-1, bind)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
from scramp import ScramMechanism

from loadtest import client, ejabberd
from loadtest.users import PASSWORD, ring_contacts

S = ejabberd.Settings(work=Path("/tmp/w"), port=5299, dist_port=5300,
                      node="ejltabcd@localhost", scram_hash="sha")


def test_config_is_loopback_only_starttls_required_scram_stored_no_shaper() -> None:
    text = ejabberd.config(S)
    for line in ('hosts: ["localhost"]', "  - port: 5299", '    ip: "127.0.0.1"',
                 "    starttls_required: true", "    max_stanza_size: 262144",
                 "    shaper: none", "    backlog: 1024", "auth_password_format: scram",
                 "auth_scram_hash: sha", "  c2s_shaper: none",
                 'certfiles: ["/tmp/w/certs/localhost.crt", "/tmp/w/certs/localhost.key"]'):
        assert line in text.splitlines(), line
    for absent in ("mod_offline", "mod_mam", "mod_carboncopy", "mod_stream_mgmt",
                   "mod_register", "/etc/ejabberd"):
        assert absent not in text


def test_mechanism_picks_the_stored_hash() -> None:
    assert ejabberd.HASHES["SCRAM-SHA-1"] == "sha"
    assert ejabberd.HASHES["SCRAM-SHA-256"] == "sha256"


def test_server_command_has_its_own_node_spool_and_no_epmd() -> None:
    cmd = ejabberd.server_command(S)
    assert cmd[:3] == [ejabberd.ERL, "-sname", "ejltabcd@localhost"]
    i = cmd.index("-start_epmd")
    assert cmd[i:i + 4] == ["-start_epmd", "false", "-erl_epmd_port", "5300"]
    assert cmd[cmd.index("inet_dist_use_interface") + 1] == "{127,0,0,1}"
    assert cmd[cmd.index("-mnesia"):cmd.index("-mnesia") + 3] == ["-mnesia", "dir",
                                                                   '"/tmp/w/spool"']
    assert cmd[-2:] == ["-s", "ejabberd"]


def test_environment_points_into_the_temp_dir() -> None:
    env = ejabberd.environment(S)
    assert env["HOME"] == "/tmp/w/home"
    assert env["EJABBERD_CONFIG_PATH"] == "/tmp/w/ejabberd.yml"
    assert env["EJABBERD_LOG_PATH"].startswith("/tmp/w/logs/")
    assert "ERL_EPMD_ADDRESS" not in env


def test_ctl_command_is_a_hidden_node_that_does_not_listen() -> None:
    cmd = ejabberd.ctl_command(S, Path("/tmp/w/accounts.eterm"))
    assert "-hidden" in cmd and cmd[cmd.index("-dist_listen") + 1] == "false"
    assert cmd[cmd.index("-erl_epmd_port") + 1] == "5300"
    assert cmd[1] == "-sname" and cmd[2] != S.node
    assert cmd[-3:] == ["-extra", "ejltabcd@localhost", "/tmp/w/accounts.eterm"]


def test_scram_keys_are_rfc5802_keys() -> None:
    salt = b"0123456789abcdef"
    for name, mech in (("sha", "SCRAM-SHA-1"), ("sha256", "SCRAM-SHA-256")):
        _, stored, server, _ = ScramMechanism(mech).make_auth_info(
            "pw", iteration_count=4096, salt=salt)
        assert ejabberd.scram_keys("pw", salt, 4096, name) == (stored, server)


def test_scram_term_is_ejabberds_record_in_base64() -> None:
    term = ejabberd.scram_term("pw", 10_000, "sha", b"\0" * 16)
    assert term.startswith("{scram,<<\"") and term.endswith(",sha,10000}")
    assert '<<"AAAAAAAAAAAAAAAAAAAAAA==">>' in term


def test_terms_batches_users_and_mutual_roster_items() -> None:
    text = ejabberd.terms("localhost", "{scram}", ["a", "b", "c", "d"], ring_contacts(4, 2))
    lines = text.splitlines()
    assert lines[0] == '{domain,<<"localhost">>}.'
    assert lines[2] == '{users,[[<<"a">>,<<"b">>,<<"c">>,<<"d">>]]}.'
    assert lines[3].count("{roster,") == 8
    assert ('{roster,{<<"a">>,<<"localhost">>,{<<"b">>,<<"localhost">>,<<>>}},'
            '{<<"a">>,<<"localhost">>},{<<"b">>,<<"localhost">>,<<>>},<<>>,both,none,[],'
            '<<>>,[]}') in lines[3]
    assert ejabberd.terms("h", "{s}", ["a"]).splitlines()[3] == "{rosters,[]}."


def test_terms_refuse_quotes() -> None:
    with pytest.raises(ValueError):
        ejabberd.terms("h", "{s}", ['a"b'])


def test_parse_ctl_output() -> None:
    out = "registered 2\nroster_items 0\nerrors []\n"
    assert ejabberd.parse_ctl(out) == (2, 0, "[]")
    with pytest.raises(RuntimeError, match="control node failed"):
        ejabberd.parse_ctl("{badmatch,pang}")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not ejabberd.available(),
                    reason="ejabberd is not installed (Debian package `ejabberd`, 23.01)")
def test_private_ejabberd_registers_two_users_and_one_logs_in() -> None:
    server = ejabberd.start("SCRAM-SHA-1")
    try:
        made = server.create(["alice", "bob"], PASSWORD, 4096)
        assert (made.registered, made.errors) == (2, "[]"), server.log()
        assert set(server.pids()) == {"ejabberd", "erl_child_setup"}
        asyncio.run(_login(server.port, "alice@localhost"))
        features = asyncio.run(_features_before_tls(server.port))
        assert b"<required/>" in features and b"<mechanism>" not in features  # STARTTLS first
        with pytest.raises(client.LoginFailed):
            asyncio.run(_login(server.port, "carol@localhost"))  # not registered
    finally:
        server.stop()
    assert server.proc.poll() is not None
    assert server.children and server.leftovers() == []
    ejabberd.remove(server)


async def _login(port: int, jid: str) -> None:
    conn = client.XmppConnection()
    try:
        await client.login(conn, host="127.0.0.1", port=port, source="127.0.0.1",
                           domain="localhost", jid=jid, password=PASSWORD, resource="r",
                           mechanism="SCRAM-SHA-1", ctx=client.insecure_context(),
                           timeout=10)
        assert conn.live
        tls = conn.transport.get_extra_info("ssl_object")
        assert isinstance(tls, ssl.SSLObject) and tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()


async def _features_before_tls(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(client.header("localhost"))
        return await asyncio.wait_for(reader.readuntil(b"</stream:features>"), 10)
    finally:
        writer.close()


def test_runs_against_ejabberd_take_every_mechanism_and_presence_but_one_node() -> None:
    from loadtest.bounds import BoundsError
    from loadtest.runner import validate
    from loadtest.scenarios import Options

    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        validate(Options("chat", server="ejabberd", mechanism=mechanism, connections=4))
    validate(Options("presence", server="ejabberd", connections=4, contacts=2))
    with pytest.raises(BoundsError, match="one node"):
        validate(Options("chat", server="ejabberd", connections=4, cms=2))


def test_muc_module_only_when_asked() -> None:
    """loadtest/muc_bench.py: mod_muc with rooms as large as the benchmark's."""
    assert "mod_muc" not in ejabberd.config(S)
    text = ejabberd.config(replace(S, muc=True))
    assert "mod_muc:" in text and "max_users: 5000" in text
